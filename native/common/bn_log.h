/*
 * bn_log.h — leveled native logging.
 *
 * Lines read "[YYYY-MM-DD HH:MM:SS] [LEVEL] [component] message".  The
 * threshold comes from BITNET_CPP_LOG_LEVEL (error, warn, info, debug,
 * trace; default warn) and can be changed at run time; a disabled level
 * costs one comparison, its arguments are not evaluated.  Lines go to the
 * sink set with bn_log_set_sink (the Python bridge routes them into the
 * `logging` module), else to stderr.
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

#define BN_LOG(level, component, ...)                                      \
    do {                                                                   \
        if (BN_UNLIKELY((level) <= bn_log_threshold))                      \
            bn_log_emit((level), (component), __VA_ARGS__);                \
    } while (0)

void bn_log_emit(int level, const char *component, const char *fmt, ...)
    BN_PRINTF(3, 4);
void bn_log_set_sink(bn_log_sink sink);
/* Parses "error".."trace" or "0".."4"; -1 when not recognised. */
int bn_log_parse_level(const char *s);
const char *bn_log_level_name(int level);

#endif
