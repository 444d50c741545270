/* bn_error.c — thread-local last error.  See bn_error.h. */
#include "bn_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Long enough for a message listing every library path tried.  Longer
 * messages are cut at a UTF-8 boundary and end with "...". */
#define BN_ERROR_CAP 4096

static _Thread_local struct {
    int code;
    const char *where; /* static text: where it was raised (bn_error.h) */
    char msg[BN_ERROR_CAP];
} last;

/* the innermost BN_ERROR_WHERE block of this thread; NULL: none */
static _Thread_local const char *where_now;

const char *bn_error_where_enter(const char *where)
{
    const char *outer = where_now;
    where_now = where;
    return outer;
}

void bn_error_where_leave(const char **outer) { where_now = *outer; }

const char *bn_error_where(void) { return last.where ? last.where : "bridge"; }

static void cut_utf8(char *s, size_t cap)
{
    size_t n = strlen(s);
    if (n < cap - 1)
        return;
    /* vsnprintf filled the buffer: mark the cut, never split a character */
    size_t end = cap - 4;
    while (end > 0 && ((unsigned char)s[end] & 0xC0) == 0x80)
        end--;
    memcpy(s + end, "...", 4);
}

int bn_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last.msg, sizeof last.msg, fmt, ap);
    va_end(ap);
    cut_utf8(last.msg, sizeof last.msg);
    last.code = code;
    last.where = where_now;
    return code;
}

int bn_error_prefix(const char *fmt, ...)
{
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* shift the message right by the prefix, keeping the NUL in bounds */
    size_t np = strlen(prefix), nm = strlen(last.msg);
    if (np >= sizeof last.msg)
        np = sizeof last.msg - 1;
    if (np + nm >= sizeof last.msg)
        nm = sizeof last.msg - 1 - np;
    memmove(last.msg + np, last.msg, nm);
    memcpy(last.msg, prefix, np);
    last.msg[np + nm] = '\0';
    if (np + nm == sizeof last.msg - 1)
        cut_utf8(last.msg, sizeof last.msg);
    return last.code;
}

void bn_error_clear(void)
{
    last.code = BITNET_OK;
    last.where = NULL;
    last.msg[0] = '\0';
}

const char *bn_error_message(void) { return last.msg; }
int bn_error_code(void) { return last.code; }

void bn_error_copy(char *err, int32_t err_len)
{
    if (!err || err_len <= 0)
        return;
    size_t n = strlen(last.msg);
    if (n >= (size_t)err_len) {
        n = (size_t)err_len - 1;
        while (n > 0 && ((unsigned char)last.msg[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(err, last.msg, n);
    err[n] = '\0';
}

/* Codes run -1, -2, ... in table order without a gap: BITNET_E_MIN (bitnet.h)
 * and every range check "BITNET_E_MIN..-1" rely on it. */
enum {
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE) SLOT_##ID,
#include "bitnet_errors.def"
#undef BITNET_ERROR
};
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE)                          \
    _Static_assert(CODE == -1 - SLOT_##ID,                                   \
                   #ID " breaks bitnet_errors.def's order: codes run -1, "    \
                   "-2, ... in table order");
#include "bitnet_errors.def"
#undef BITNET_ERROR

const char *bn_error_name(int code)
{
    switch (code) {
    case BITNET_OK: return "BITNET_OK";
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE) case ID: return #ID;
#include "bitnet_errors.def"
#undef BITNET_ERROR
    default: return "BITNET_E_UNKNOWN";
    }
}
