/*
 * session_tier.c — a library's own Socket 4 serving a context.
 *
 * Seed 003 offers Socket 4 (bitnet_cpp_session_*) as the alternative to
 * Socket 1 for a library with a complete session API instead of
 * low-level contexts.  The choice here: a library that exports Socket 1 is
 * served through Sockets 1-3 and 5 (they take a context, so sequences,
 * n_past, reset, model info and GPU evaluation all work), and its Socket 4
 * symbols are not called; a library without Socket 1 but with the whole of
 * Socket 4 is served through it.  Such a context has one sequence (the
 * session API has no seq_id), and none of the context helpers or Socket 5
 * (they take a context the library never gives out): those calls are
 * refused with BITNET_E_UNSUPPORTED saying so, the bridge's handles, guard,
 * counters, deadlines and count checks apply unchanged.  The fallback
 * tier serves neither: the library's Socket 4 is its tokenize and eval.
 *
 * The context's impl is a shim: the library's session plus a backend table
 * whose entries call the session functions (the bridge calls every tier
 * through a table, with the tier's impl as first argument).
 */
#include <stdio.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bridge.h"

typedef struct {
    bn_backend ops;          /* the table the context's tiers call: first,
                                so an impl is its own table's owner */
    const bn_backend *lib;   /* the library's own table */
    bitnet_session_t *session;
} session_tier;

/* The tier's errors are the library's, except the shim's own refusals:
 * the bridge reads a non-embedded tier's message back through its
 * get_last_error (calls.c), which must then give the shim's words, not
 * whatever the library said last.  Per thread, like every last error. */
static _Thread_local struct {
    const bn_backend *lib; /* the library of the thread's last shim call */
    int own;               /* that call's error is the shim's */
} last;

static int32_t st_last_error(char *buf, int32_t buf_len)
{
    if (last.own) {
        bn_error_copy(buf, buf_len);
        return (int32_t)strlen(bn_error_message());
    }
    if (last.lib && last.lib->get_last_error)
        return last.lib->get_last_error(buf, buf_len);
    if (buf && buf_len > 0)
        buf[0] = '\0';
    return 0;
}

static void enter(const session_tier *t)
{
    last.lib = t->lib;
    last.own = 0;
}

int bn_has_session_api(const bn_backend *be)
{
    return be->session_create && be->session_free && be->session_tokenize &&
           be->session_eval;
}

static int st_free(void *impl)
{
    session_tier *t = impl;
    enter(t);
    int rc = t->lib->session_free(t->session);
    if (rc)
        return rc; /* still the library's: the free may be retried */
    bn_free(t);
    return BITNET_OK;
}

static int st_tokenize(void *impl, const char *prompt, int add_bos,
                       int parse_special, int32_t *out_tokens,
                       int32_t out_capacity, int32_t *out_len, char *err,
                       int32_t err_len)
{
    session_tier *t = impl;
    enter(t);
    return t->lib->session_tokenize(t->session, prompt, add_bos,
                                    parse_special, out_tokens, out_capacity,
                                    out_len, err, err_len);
}

static int st_eval(void *impl, const int32_t *tokens, int32_t n_tokens,
                   int32_t seq_id, float *out_logits, int32_t logits_capacity,
                   int32_t *out_rows, int32_t *out_cols, char *err,
                   int32_t err_len)
{
    session_tier *t = impl;
    enter(t);
    if (seq_id != 0) {
        last.own = 1;
        return bn_error(BITNET_E_UNSUPPORTED,
                        "seq_id %d: %s serves this context through its "
                        "session API (Socket 4, bitnet_cpp_session_eval), "
                        "which has one sequence; use seq_id 0, or a library "
                        "that exports Socket 1",
                        (int)seq_id, t->lib->name);
    }
    return t->lib->session_eval(t->session, tokens, n_tokens, out_logits,
                                logits_capacity, out_rows, out_cols, err,
                                err_len);
}

int bn_session_tier_open(const bn_backend *be, void **impl,
                         const bn_backend **ops, const char *model_path,
                         int32_t n_ctx, int32_t n_gpu_layers, char *err,
                         int32_t err_len)
{
    *impl = NULL;
    session_tier *t = bn_calloc(1, sizeof *t, "session tier");
    if (!t)
        return bn_done(bn_error(BITNET_E_OOM,
                                "out of memory for a session tier"),
                       err, err_len);
    t->lib = be;
    t->ops = (bn_backend){
        .name = be->name,
        .embedded = 0,
        .unbounded = be->unbounded,
        .free_context = st_free,
        .tokenize_with_context = st_tokenize,
        .eval_with_context = st_eval,
        .get_capabilities = be->get_capabilities,
        .get_last_error = st_last_error,
    };
    /* the tokenizer is read from the GGUF model (tokenizer_path NULL:
     * auto-discover, as the seed allows) */
    int rc = bn_failed(be, be->session_create(&t->session, model_path, NULL,
                                              n_ctx, n_gpu_layers, err,
                                              err_len),
                       err, err_len);
    if (rc == BITNET_OK && !t->session)
        rc = bn_done(bn_error(BITNET_E_INTERNAL,
                              "%s: bitnet_cpp_session_create succeeded but "
                              "returned no session; report it to the "
                              "library's authors",
                              be->name),
                     err, err_len);
    if (rc) {
        bn_free(t);
        return rc;
    }
    *impl = t;
    *ops = &t->ops;
    return BITNET_OK;
}
