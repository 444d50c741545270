/* bn_log.c — see bn_log.h. */
#include "bn_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>

#include "bn_host.h"

static const char *const NAMES[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

int bn_log_threshold = BN_LOG_WARN;
static bn_log_sink sink;

/* An invalid BITNET_CPP_LOG_LEVEL, read at load time when nobody can be
 * told yet: reported once at first use (bn_log.h), so a typo is never
 * silently the default. */
static char config_error[256];
static atomic_int config_error_pending;

static int initial_threshold(void)
{
    const char *env = getenv("BITNET_CPP_LOG_LEVEL");
    int level = bn_log_parse_level(env); /* unset: -1, the default */
    if (env && level < 0) {
        snprintf(config_error, sizeof config_error,
                 "BITNET_CPP_LOG_LEVEL='%.64s' is not a log level, so it is "
                 "ignored and the level is warn; set it to one of error, "
                 "warn, info, debug, trace (or 0-4)",
                 env);
        atomic_store(&config_error_pending, 1);
    }
    return level < 0 ? BN_LOG_WARN : level;
}

int32_t bn_log_take_config_error(char *buf, int32_t buf_len)
{
    if (!atomic_exchange(&config_error_pending, 0))
        return 0;
    if (buf && buf_len > 0)
        snprintf(buf, (size_t)buf_len, "%s", config_error);
    return (int32_t)strlen(config_error);
}

static void write_line(int level, const char *component, const char *msg);

/* The pending report, once, as a WARN line (whatever the threshold: the
 * threshold is what it is about). */
static void report_config_error(void)
{
    if (BN_LIKELY(!atomic_load_explicit(&config_error_pending,
                                        memory_order_relaxed)))
        return;
    if (!atomic_exchange(&config_error_pending, 0))
        return;
    /* an attached guest reads the same environment as the bridge that
     * loaded it, which reports it: one report, not one per library */
    if (!bn_host())
        write_line(BN_LOG_WARN, "log", config_error);
}

__attribute__((constructor)) static void log_init(void)
{
    bn_log_threshold = initial_threshold();
}

int bn_log_parse_level(const char *s)
{
    if (!s)
        return -1;
    for (int i = 0; i < 5; i++)
        if (strcasecmp(s, NAMES[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return BN_LOG_WARN;
    if (s[0] >= '0' && s[0] <= '4' && s[1] == '\0')
        return s[0] - '0';
    return -1;
}

const char *bn_log_level_name(int level)
{
    return level >= 0 && level < 5 ? NAMES[level] : "?";
}

void bn_log_set_sink(bn_log_sink s)
{
    __atomic_store_n(&sink, s, __ATOMIC_RELEASE);
    if (s)
        report_config_error(); /* where the lines go from now on */
}

#ifdef BN_GUEST
int bn_log_effective_threshold(void)
{
    const bitnet_host_t *h = bn_host();
    return h ? h->log_threshold() : bn_log_threshold;
}
#endif

void bn_log_emit(int level, const char *component, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bn_log_write(level, component, msg);
}

void bn_log_write(int level, const char *component, const char *msg)
{
    report_config_error();
    write_line(level, component, msg);
}

static void write_line(int level, const char *component, const char *msg)
{
    const bitnet_host_t *h = bn_host();
    if (h) { /* attached guest: one line, formatted by the bridge */
        h->log(level, component, msg);
        return;
    }
    char line[2300], stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(line, sizeof line, "[%s] [%s] [%s] %s", stamp,
             bn_log_level_name(level), component, msg);
    bn_log_sink s = __atomic_load_n(&sink, __ATOMIC_ACQUIRE);
    if (s)
        s(level, component, line);
    else
        fprintf(stderr, "%s\n", line);
}
