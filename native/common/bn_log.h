/*
 * bn_log.h — leveled native logging.
 *
 * Lines read "[YYYY-MM-DD HH:MM:SS] [LEVEL] [component] message".  The
 * threshold comes from BITNET_CPP_LOG_LEVEL (error, warn, info, debug,
 * trace; default warn) and can be changed at run time; a disabled level
 * costs one comparison, its arguments are not evaluated.  Lines go to the
 * sink set with bn_log_set_sink (a binding routes them into its own
 * logging), else to stderr.
 */
#ifndef BN_LOG_H
#define BN_LOG_H

#include "bn_error.h"

typedef enum {
    BN_LOG_ERROR = 0,
    BN_LOG_WARN = 1,
    BN_LOG_INFO = 2,
    BN_LOG_DEBUG = 3,
    BN_LOG_TRACE = 4
} bn_log_level;

/* level: one of bn_log_level; line: the whole formatted line. */
typedef void (*bn_log_sink)(int level, const char *component,
                            const char *line);

extern int bn_log_threshold; /* lines above it are dropped */

/* A guest library (BN_GUEST) logs through the bridge that loaded it, so
 * the bridge's threshold decides (one call: logging is off hot paths). */
#ifdef BN_GUEST
int bn_log_effective_threshold(void);
#define BN_LOG_THRESHOLD() bn_log_effective_threshold()
#else
#define BN_LOG_THRESHOLD() bn_log_threshold
#endif

#define BN_LOG(level, component, ...)                                      \
    do {                                                                   \
        if (BN_UNLIKELY((level) <= BN_LOG_THRESHOLD()))                    \
            bn_log_emit((level), (component), __VA_ARGS__);                \
    } while (0)

void bn_log_emit(int level, const char *component, const char *fmt, ...)
    BN_PRINTF(3, 4);
/* Emits an already formatted message: adds the "[time] [LEVEL]
 * [component]" prefix and hands the line to the sink (or, in an attached
 * guest, hands the message to the bridge, which does that).  No threshold
 * check: callers have made it. */
void bn_log_write(int level, const char *component, const char *message);
void bn_log_set_sink(bn_log_sink sink);
/* The report of an invalid BITNET_CPP_LOG_LEVEL, taken (it is then not
 * logged): see bitnet_bridge_take_log_config_error. */
int32_t bn_log_take_config_error(char *buf, int32_t buf_len);
/* Parses "error".."trace" or "0".."4"; -1 when not recognised. */
int bn_log_parse_level(const char *s);
const char *bn_log_level_name(int level);

#endif
