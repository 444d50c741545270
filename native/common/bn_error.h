/*
 * bn_error.h — the thread-local last error shared by all native code.
 *
 * Internal functions return a BITNET_* code and, on failure, record a
 * message with bn_error(); the ABI layer copies it into the caller's err
 * buffer.  Messages follow the project rule: what happened, why, how to fix.
 */
#ifndef BN_ERROR_H
#define BN_ERROR_H

#include <stddef.h>
#include <stdint.h>

#include "bitnet.h"

#if defined(__GNUC__)
#define BN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define BN_LIKELY(x) __builtin_expect(!!(x), 1)
#define BN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define BN_PRINTF(a, b)
#define BN_LIKELY(x) (x)
#define BN_UNLIKELY(x) (x)
#endif

/* Records code and the formatted message as this thread's last error and
 * returns code, so callers can write `return bn_error(BITNET_E_..., ...)`. */
int bn_error(int code, const char *fmt, ...) BN_PRINTF(2, 3);

/* Prefixes the current last error with more context ("loading 'x': ").
 * Returns the current code. */
int bn_error_prefix(const char *fmt, ...) BN_PRINTF(1, 2);

/* Clears this thread's last error. */
void bn_error_clear(void);

/* This thread's last error (never NULL; "" when none) and its code. */
const char *bn_error_message(void);
int bn_error_code(void);

/* Copies the last error into a caller buffer (NUL-terminated, truncated).
 * NULL or non-positive len: does nothing. */
void bn_error_copy(char *err, int32_t err_len);

/* Where the calling thread is: the operation or component running
 * ("create", "tokenize", "loader", ...).  An error records it when it is
 * raised, so the log line of an error names what failed, not the layer
 * that reported it.  Entered for a block with BN_ERROR_WHERE("name"),
 * which restores the outer one when the block is left by any path (a
 * cleanup attribute: no exit can leave it set). */
const char *bn_error_where_enter(const char *where); /* returns the outer */
void bn_error_where_leave(const char **outer);
#define BN_ERROR_WHERE(where)                                                 \
    __attribute__((cleanup(bn_error_where_leave))) const char                 \
        *bn_error_where_outer_ = bn_error_where_enter(where)
/* Where this thread's last error was raised; "bridge" for one raised
 * outside every BN_ERROR_WHERE block. */
const char *bn_error_where(void);

/* A short name for a code: "BITNET_E_INVALID_ARG" etc. (bitnet_errors.def). */
const char *bn_error_name(int code);

#endif
