/*
 * calls.c — what every entry point does around a backend call: the
 * calling thread's deadline scope, the one exit for errors (the caller's
 * buffer, the log, a library's own message), and the checks of every count
 * and shape a backend reports.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"

/* ---- the deadline of a call ---------------------------------------------- */

/* What the calling thread asked for its next calls: a timeout, measured
 * from the start of each call, or one absolute deadline shared by all of
 * them (a caller's operation of several calls -- the two passes of a
 * buffer-filling call -- has one budget, not a fresh one per call). */
static _Thread_local struct {
    int64_t ns;   /* 0: none */
    int absolute; /* ns is a bn_now_ns() time, not a duration */
} call_deadline;

BITNET_API void bitnet_bridge_set_call_timeout(int64_t timeout_ns)
{
    call_deadline.ns = timeout_ns > 0 ? timeout_ns : 0;
    call_deadline.absolute = 0;
}

BITNET_API void bitnet_bridge_set_call_deadline(int64_t deadline_ns)
{
    /* a time at or before the clock's epoch is in the past, not "none" */
    call_deadline.ns = deadline_ns == 0 ? 0 : deadline_ns < 0 ? 1 : deadline_ns;
    call_deadline.absolute = 1;
}

BITNET_API int64_t bitnet_bridge_now_ns(void) { return bn_now_ns(); }

void bn_scope_enter(call_scope *s, atomic_int *cancel, const char *op)
{
    int64_t ns = call_deadline.ns;
    if (ns && !call_deadline.absolute) {
        int64_t now = bn_now_ns();
        /* saturate: a timeout of centuries must not wrap into the past */
        ns = ns > INT64_MAX - now ? INT64_MAX : now + ns;
    }
    s->dl.at_ns = ns;
    s->dl.cancel = cancel;
    s->dl.operation = op;
    s->prev = bn_deadline_enter(&s->dl);
}

void bn_scope_leave(call_scope *s) { bn_deadline_leave(s->prev); }

/* ---- the way out --------------------------------------------------------- */

/* After a backend call failed: make the bridge's last error the backend's
 * whole message (a library keeps its own last error; err may hold only its
 * beginning), then copy it into the caller's buffer. */
int bn_failed(const bn_backend *be, int rc, char *err, int32_t err_len)
{
    if (rc == BITNET_OK)
        return rc;
    if (!be->embedded) {
        char buf[4096] = "";
        if (be->get_last_error)
            be->get_last_error(buf, sizeof buf);
        else if (err && err_len > 0)
            snprintf(buf, sizeof buf, "%s", err);
        bn_error(rc, "%s%s", buf[0] ? buf : "the library reported code ",
                 buf[0] ? "" : bn_error_name(rc));
        bn_error_prefix("%s: ", be->name);
    }
    return bn_done(rc, err, err_len);
}

/* Every error a socket returns leaves through here: copied to the caller's
 * buffer, and logged, so an application that only watches its logs sees
 * native failures too.  A guest library's own bridge layer stays quiet:
 * the bridge that loaded it logs what it returns, once. */
int bn_done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK) {
        bn_error_copy(err, err_len);
#ifndef BN_GUEST
        /* tagged with what failed ([create], [tokenize], [loader], ...) */
        BN_LOG(BN_LOG_ERROR, bn_error_where(), "%s: %s", bn_error_name(rc),
               bn_error_message());
#endif
    }
    return rc;
}

/* ---- what a backend reports ----------------------------------------------
 * A count or shape a backend returns sizes the caller's next buffer (the
 * query pass) or says how much of it is a result (the fill pass): a library
 * that misreports would have the caller allocate absurd amounts, read what
 * was never written, or trust a write past its buffer.  So every count is
 * checked here, against the inputs and the caller's capacity, before the
 * caller sees it; the bridge's own backends are held to the same rules
 * (they pass them by construction).  A violation is BITNET_E_INFERENCE
 * naming the library, the socket, the pass and both values. */

static int misreport(const bn_backend *be, const char *socket, int fill,
                     const char *fmt, ...) BN_PRINTF(4, 5);
static int misreport(const bn_backend *be, const char *socket, int fill,
                     const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return bn_error(BITNET_E_INFERENCE,
                    "%s misreports its output: %s (%s pass) %s; nothing it "
                    "returned is used; report it to the library's authors, "
                    "or use another backend",
                    be->name, socket, fill ? "fill" : "query", what);
}

int bn_check_tokens(const bn_backend *be, const char *socket, int fill,
                    int32_t n, int32_t cap, const char *prompt)
{
    /* At most one token per byte of the text a tokenizer works on: a space
     * may become U+2581 (3 bytes), a leading one is added, each such byte
     * may be a token of its own (no byte tokens: one unknown each), plus BOS
     * and EOS.  Loose on purpose: the point is the absurd count that would
     * have the caller allocate gigabytes, not the exact one. */
    int64_t len = prompt ? (int64_t)strlen(prompt) : 0;
    int64_t most = prompt ? 3 * len + 5 : INT32_MAX;
    if (n < 0 || n > most)
        return misreport(be, socket, fill,
                         "reported %d tokens for a prompt of %lld bytes "
                         "(expected 0..%lld)",
                         (int)n, (long long)len, (long long)most);
    if (fill && n > cap)
        return misreport(be, socket, fill,
                         "reported %d tokens, more than the buffer of %d it "
                         "was given (expected at most %d)",
                         (int)n, (int)cap, (int)cap);
    return BITNET_OK;
}

int bn_check_bytes(const bn_backend *be, const char *socket, int fill,
                   int32_t n, int32_t cap)
{
    /* No upper bound from the input: a vocabulary's pieces may be long, so
     * only what is provably wrong is refused. */
    if (n < 0)
        return misreport(be, socket, fill, "reported %d bytes (expected >= 0)",
                         (int)n);
    if (fill && n > cap)
        return misreport(be, socket, fill,
                         "reported %d bytes, more than the buffer of %d it "
                         "was given (expected at most %d)",
                         (int)n, (int)cap, (int)cap);
    return BITNET_OK;
}

int bn_check_logits(const bn_backend *be, const char *socket, int fill,
                    int32_t rows, int32_t cols, int32_t n_tokens,
                    int32_t n_vocab, int32_t cap)
{
    if (rows != n_tokens || cols < 1 || (n_vocab > 0 && cols != n_vocab)) {
        char want[64];
        if (n_vocab > 0)
            snprintf(want, sizeof want, "%d x %d", (int)n_tokens, (int)n_vocab);
        else
            snprintf(want, sizeof want, "%d x n_vocab (n_vocab >= 1)",
                     (int)n_tokens);
        return misreport(be, socket, fill,
                         "reported %d x %d logits for %d tokens (expected "
                         "%s: one row per token, one column per vocabulary "
                         "entry)",
                         (int)rows, (int)cols, (int)n_tokens, want);
    }
    if (fill && (int64_t)rows * cols > cap)
        return misreport(be, socket, fill,
                         "reported %d x %d logits, more than the buffer of "
                         "%d floats it was given (expected at most %d)",
                         (int)rows, (int)cols, (int)cap, (int)cap);
    return BITNET_OK;
}

int bn_check_model_info(const bn_backend *be, int32_t n_vocab, int32_t n_ctx)
{
    if (n_vocab < 1 || n_ctx < 1)
        return bn_error(BITNET_E_INFERENCE,
                        "%s misreports its model: bitnet_cpp_get_model_info "
                        "reported n_vocab=%d and n_ctx=%d (expected both >= "
                        "1); report it to the library's authors, or use "
                        "another backend",
                        be->name, (int)n_vocab, (int)n_ctx);
    return BITNET_OK;
}

int bn_check_n_past(const bn_backend *be, int32_t seq_id, int32_t n_past,
                    int32_t n_ctx)
{
    if (n_past < 0 || (n_ctx > 0 && n_past > n_ctx))
        return bn_error(BITNET_E_INFERENCE,
                        "%s misreports its state: bitnet_cpp_get_n_past "
                        "reported n_past=%d for seq_id %d (expected 0..%d, "
                        "the context's n_ctx); report it to the library's "
                        "authors, or use another backend",
                        be->name, (int)n_past, (int)seq_id,
                        n_ctx > 0 ? (int)n_ctx : INT32_MAX);
    return BITNET_OK;
}

int bn_check_capabilities(const bn_backend *be, const bitnet_capabilities_t *c)
{
    const struct { const char *name; int v; } f[] = {
        {"has_avx2", c->has_avx2},   {"has_avx512", c->has_avx512},
        {"has_neon", c->has_neon},   {"has_cuda", c->has_cuda},
        {"has_metal", c->has_metal}, {"has_hip", c->has_hip},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v != 0 && f[i].v != 1)
            return bn_error(BITNET_E_INFERENCE,
                            "%s misreports its capabilities: "
                            "bitnet_cpp_get_capabilities reported %s=%d "
                            "(expected 0 or 1); report it to the library's "
                            "authors, or use another backend",
                            be->name, f[i].name, f[i].v);
    return BITNET_OK;
}
