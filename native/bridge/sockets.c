/*
 * sockets.c — Sockets 1-6 of bitnet.h and the context helpers: each
 * validates its handle, routes the call to the tier that serves it, and
 * places the boundary fault points around it.
 */
/* every point here wraps a backend call: in a guest library (the bridge
 * layer compiled into libbitnet) they must stay silent, the loading
 * bridge's copies already counted the call (bn_fault.h) */
#define BN_FAULT_BOUNDARY 1
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bridge.h"
#include "loader.h"

/* ---- Socket 1 ---------------------------------------------------------- */

static void free_impls(bn_context *c)
{
    if (c->fb_impl)
        c->fb->free_context(c->fb_impl);
    if (c->impl)
        c->ops->free_context(c->impl);
}

/* The loads a context holds (a library view made under a dlsym fault is
 * freed with it, loader.h). */
static void release_backends(bn_context *c)
{
    bn_backend_release(c->fb);
    bn_backend_release(c->be);
}

/* The eval tier's vocabulary and context sizes, checked once: every eval
 * shape is then checked against n_vocab, every n_past against n_ctx.  A
 * tier without the helper leaves them unknown (0). */
static int learn_model_info(bn_context *c, char *err, int32_t err_len)
{
    const tier *t = &c->eval;
    if (!t->be->get_model_info)
        return BITNET_OK;
    int32_t v = 0, n = 0;
    int rc = t->be->get_model_info(t->impl, &v, &n);
    if (rc == BITNET_E_UNSUPPORTED) {
        bn_error_clear();
        return BITNET_OK;
    }
    if (rc)
        return bn_failed(t->be, rc, err, err_len);
    if ((rc = bn_check_model_info(t->be, v, n)))
        return bn_done(rc, err, err_len);
    c->n_vocab = v;
    c->n_ctx = n;
    return BITNET_OK;
}

BITNET_API int bitnet_bridge_init_context(bitnet_context_t **out_ctx,
                                          const char *model_path,
                                          int32_t n_ctx, int32_t n_gpu_layers,
                                          const bitnet_bridge_options *opts,
                                          char *err, int32_t err_len)
{
    BN_ERROR_WHERE("create");
    bn_error_clear();
    if (!out_ctx)
        return bn_done(bn_error(BITNET_E_INVALID_ARG, "out_ctx is NULL"), err,
                       err_len);
    *out_ctx = NULL;
    call_scope scope;
    /* The deadline covers the whole call, finding and loading the library
     * included.  No cancel flag: the handle is given out only when create
     * returns, so no other thread can reach c->cancel before then
     * (bitnet_bridge_cancel looks handles up in the registry).  Counting it
     * would let a hang with no deadline wait for a cancel that can never
     * come; without it, such a hang is refused at once (bn_deadline_sleep). */
    bn_scope_enter(&scope, NULL, "create");
    resolved r;
    const bn_backend *be;
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = bn_select_backend(&r, &be);
    if (rc) {
        bn_scope_leave(&scope);
        return bn_done(rc, err, err_len);
    }
    bn_context *c = bn_calloc(1, sizeof *c, "context handle");
    if (!c) {
        bn_scope_leave(&scope);
        bn_backend_release(be);
        return bn_done(BITNET_E_OOM, err, err_len);
    }
    c->be = c->ops = be;
    rc = BN_FAULT(INIT_CONTEXT);
    if (rc)
        bn_done(rc, err, err_len);
    else if (!be->init_context) /* no Socket 1: the loader saw Socket 4 */
        rc = bn_session_tier_open(be, &c->impl, &c->ops, model_path, n_ctx,
                                  n_gpu_layers, err, err_len);
    else
        rc = bn_failed(be, be->init_context(&c->impl, model_path, n_ctx,
                                            n_gpu_layers, err, err_len),
                       err, err_len);
    if (!rc)
        rc = bn_route(c, &r, model_path, n_ctx, n_gpu_layers, err, err_len);
    if (!rc)
        rc = learn_model_info(c, err, err_len);
    const void *handle = NULL;
    if (!rc && (rc = bn_handle_add(c, KIND_CONTEXT, &handle)))
        bn_done(rc, err, err_len);
    bn_scope_leave(&scope);
    if (rc) {
        free_impls(c);
        release_backends(c);
        bn_free(c);
        return rc;
    }
    bn_counter_add(BN_COUNTER_CONTEXTS, 1);
    *out_ctx = (bitnet_context_t *)handle;
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_init_context(bitnet_context_t **out_ctx,
                                       const char *model_path, int32_t n_ctx,
                                       int32_t n_gpu_layers, char *err,
                                       int32_t err_len)
{
    return bitnet_bridge_init_context(out_ctx, model_path, n_ctx, n_gpu_layers,
                                      NULL, err, err_len);
}

/* The handle stays registered (and the context busy, so no other call
 * starts on it) until every backend context is gone: a failure anywhere
 * leaves it valid for the retry, with nothing to register again (which
 * could itself fail, and lose the context for good).
 *
 * The free runs under the caller's deadline (issue 15: close() has a
 * deadline too), up to where it can still be refused whole: the
 * free_context point, before anything is released (a `delay` or `hang`
 * there ends at the deadline, the context kept for a retry).  The
 * backends' frees then run to the end outside it: one stopped halfway
 * would leave a library's context half released, which no retry could
 * finish.  No cancel flag: most frees have nobody left who could cancel
 * them (a binding's finalizer, a retry of a dropped context), so a hang
 * without a deadline is refused at once instead of waiting for ever. */
BITNET_API int bitnet_cpp_free_context(bitnet_context_t *ctx)
{
    BN_ERROR_WHERE("free");
    if (!ctx)
        return BITNET_OK;
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 1, &rc);
    if (!c)
        return rc;
    call_scope scope;
    bn_scope_enter(&scope, NULL, "free_context");
    rc = BN_FAULT(FREE_CONTEXT);
    bn_scope_leave(&scope);
    if (rc)
        goto keep;
    if (c->fb_impl) {
        if ((rc = bn_failed(c->fb, c->fb->free_context(c->fb_impl), NULL, 0)))
            goto keep;
        c->fb_impl = NULL;
        /* a tier served by the fallback now names freed memory: until the
         * retry frees the rest, the context serves nothing */
        c->torn = 1;
    }
    if ((rc = bn_failed(c->ops, c->ops->free_context(c->impl), NULL, 0)))
        goto keep;
    bn_handle_remove(ctx, KIND_CONTEXT); /* cannot fail: it is live and ours */
    release_backends(c);
    bn_free(c);
    bn_counter_add(BN_COUNTER_CONTEXTS, -1);
    return BITNET_OK;
keep:
    bn_context_leave(c);
    return rc;
}

/* ---- the `grow` fault: a fill pass that needs more than its query said ----
 * A backend whose output changes between the two passes (a bug, or state
 * that moved) must be reported with both sizes, and nothing may be written
 * past the caller's capacity.  The bridge asks the real query, adds the
 * injected growth, and refuses before the backend writes anything. */

int bn_grow_tokens_error(int32_t n, int32_t cap, int32_t *out_len,
                         const bn_fault_special *fs)
{
    int64_t need = (int64_t)n + fs->arg;
    if (out_len)
        *out_len = need > INT32_MAX ? INT32_MAX : (int32_t)need;
    return bn_error(BITNET_E_INFERENCE,
                    "the fill pass needs %lld tokens but the query pass said "
                    "%d (buffer holds %d): the tokenizer's output changed "
                    "between the passes; nothing was written (%s)",
                    (long long)need, (int)n, (int)cap, bn_fault_note());
}

int bn_grow_logits_error(int32_t rows, int32_t cols, int32_t cap,
                         int32_t *out_rows, int32_t *out_cols,
                         const bn_fault_special *fs)
{
    int64_t grown = (int64_t)rows + fs->arg;
    if (out_rows && out_cols) {
        *out_rows = grown > INT32_MAX ? INT32_MAX : (int32_t)grown;
        *out_cols = cols;
    }
    return bn_error(BITNET_E_INFERENCE,
                    "the fill pass needs %lld logits but the query pass said "
                    "%lld (%d x %d; buffer holds %d): the evaluation's shape "
                    "changed between the passes; nothing was written (%s)",
                    (long long)(grown * cols), (long long)rows * cols,
                    (int)rows, (int)cols, (int)cap, bn_fault_note());
}

static int grown_tokenize(bn_context *c, const char *prompt, int add_bos,
                          int parse_special, int32_t cap, int32_t *out_len,
                          const bn_fault_special *fs)
{
    int32_t n = 0;
    int rc = c->tok.be->tokenize_with_context(c->tok.impl, prompt, add_bos,
                                              parse_special, NULL, 0, &n,
                                              NULL, 0);
    return rc ? rc : bn_grow_tokens_error(n, cap, out_len, fs);
}

static int grown_eval(bn_context *c, const int32_t *tokens,
                      int32_t n_tokens, int32_t seq_id, int32_t cap,
                      int32_t *out_rows, int32_t *out_cols,
                      const bn_fault_special *fs)
{
    int32_t rows = 0, cols = 0;
    int rc = c->eval.be->eval_with_context(c->eval.impl, tokens, n_tokens,
                                           seq_id, NULL, 0, &rows, &cols,
                                           NULL, 0);
    return rc ? rc
              : bn_grow_logits_error(rows, cols, cap, out_rows, out_cols, fs);
}

/* ---- Sockets 2, 3, 5 ---------------------------------------------------- */

BITNET_API int bitnet_cpp_tokenize_with_context(
    const bitnet_context_t *ctx, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("tokenize");
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return bn_done(rc, err, err_len);
    call_scope scope;
    bn_scope_enter(&scope, &c->cancel, "tokenize");
    bn_fault_special fs;
    rc = out_tokens ? BN_FAULT_SPECIAL(TOKENIZE_FILL, &fs)
                    : BN_FAULT(TOKENIZE_QUERY);
    if (rc > 0) /* grow: the fill pass needs more than the query said */
        rc = grown_tokenize(c, prompt, add_bos, parse_special, out_capacity,
                            out_len, &fs);
    if (rc)
        bn_done(rc, err, err_len);
    else
        rc = bn_failed(c->tok.be,
                       c->tok.be->tokenize_with_context(
                           c->tok.impl, prompt, add_bos, parse_special,
                           out_tokens, out_capacity, out_len, err, err_len),
                       err, err_len);
    if (!rc && out_len &&
        (rc = bn_check_tokens(c->tok.be, "bitnet_cpp_tokenize_with_context",
                              out_tokens != NULL, *out_len, out_capacity,
                              prompt)))
        bn_done(rc, err, err_len);
    bn_scope_leave(&scope);
    bn_context_leave(c);
    return rc;
}

/* The `grow` fault of detokenize: as bn_grow_tokens_error, in bytes. */
static int grown_detokenize(bn_context *c, const int32_t *tokens,
                            int32_t n_tokens, int remove_special,
                            int unparse_special, int32_t cap,
                            int32_t *out_len, const bn_fault_special *fs)
{
    int32_t n = 0;
    int rc = c->detok.be->detokenize_with_context(
        c->detok.impl, tokens, n_tokens, remove_special, unparse_special,
        NULL, 0, &n, NULL, 0);
    if (rc)
        return rc;
    int64_t need = (int64_t)n + fs->arg;
    if (out_len)
        *out_len = need > INT32_MAX ? INT32_MAX : (int32_t)need;
    return bn_error(BITNET_E_INFERENCE,
                    "the fill pass needs %lld bytes but the query pass said "
                    "%d (buffer holds %d): the detokenizer's output changed "
                    "between the passes; nothing was written (%s)",
                    (long long)need, (int)n, (int)cap, bn_fault_note());
}

BITNET_API int bitnet_cpp_detokenize_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int remove_special, int unparse_special, char *out_text,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("detokenize");
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return bn_done(rc, err, err_len);
    call_scope scope;
    bn_scope_enter(&scope, &c->cancel, "detokenize");
    bn_fault_special fs;
    rc = out_text ? BN_FAULT_SPECIAL(DETOKENIZE_FILL, &fs)
                  : BN_FAULT(DETOKENIZE_QUERY);
    if (rc >= 0 && !c->detok.be) /* a grow has nothing to grow either */
        rc = bn_error(BITNET_E_NOT_AVAILABLE,
                      "no tier can serve detokenize: %s; load a library "
                      "that exports bitnet_cpp_detokenize_with_context, or "
                      "enable the fallback tier (BITNET_FALLBACK=auto)",
                      c->detok.label);
    else if (rc > 0) /* grow: the fill pass needs more than the query said */
        rc = grown_detokenize(c, tokens, n_tokens, remove_special,
                              unparse_special, out_capacity, out_len, &fs);
    if (rc)
        bn_done(rc, err, err_len);
    else
        rc = bn_failed(c->detok.be,
                       c->detok.be->detokenize_with_context(
                           c->detok.impl, tokens, n_tokens, remove_special,
                           unparse_special, out_text, out_capacity, out_len,
                           err, err_len),
                       err, err_len);
    if (!rc && out_len &&
        (rc = bn_check_bytes(c->detok.be,
                             "bitnet_cpp_detokenize_with_context",
                             out_text != NULL, *out_len, out_capacity)))
        bn_done(rc, err, err_len);
    bn_scope_leave(&scope);
    bn_context_leave(c);
    return rc;
}

BITNET_API int bitnet_cpp_eval_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int32_t seq_id, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("evaluate");
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return bn_done(rc, err, err_len);
    call_scope scope;
    bn_scope_enter(&scope, &c->cancel, "evaluate");
    bn_fault_special fs;
    rc = out_logits ? BN_FAULT_SPECIAL(EVAL_FILL, &fs) : BN_FAULT(EVAL_QUERY);
    if (rc > 0) /* grow: the fill pass needs more than the query said */
        rc = grown_eval(c, tokens, n_tokens, seq_id, logits_capacity,
                        out_rows, out_cols, &fs);
    if (rc)
        bn_done(rc, err, err_len);
    else
        rc = bn_failed(c->eval.be,
                       c->eval.be->eval_with_context(
                           c->eval.impl, tokens, n_tokens, seq_id, out_logits,
                           logits_capacity, out_rows, out_cols, err, err_len),
                       err, err_len);
    if (!rc && out_rows && out_cols &&
        (rc = bn_check_logits(c->eval.be, "bitnet_cpp_eval_with_context",
                              out_logits != NULL, *out_rows, *out_cols,
                              n_tokens, c->n_vocab, logits_capacity)))
        bn_done(rc, err, err_len);
    bn_scope_leave(&scope);
    bn_context_leave(c);
    return rc;
}

/* Socket 5 is the native tier's own (no fallback evaluates on a GPU for
 * it).  A backend without it is refused with what it reports it can use. */
static int no_gpu_socket(const bn_backend *be)
{
    bitnet_capabilities_t caps;
    char what[160] = "it does not export bitnet_cpp_get_capabilities either";
    if (be->get_capabilities && be->get_capabilities(&caps) == BITNET_OK)
        snprintf(what, sizeof what,
                 "it reports has_cuda=%d, has_metal=%d, has_hip=%d",
                 caps.has_cuda, caps.has_metal, caps.has_hip);
    return bn_error(BITNET_E_UNSUPPORTED,
                    "GPU evaluation is not available: backend '%s' does not "
                    "export bitnet_cpp_eval_gpu (Socket 5); %s; evaluate on "
                    "the CPU (bitnet_cpp_eval_with_context), or load a "
                    "library built with GPU support",
                    be->name, what);
}

BITNET_API int bitnet_cpp_eval_gpu(const bitnet_context_t *ctx,
                                   const int32_t *tokens, int32_t n_tokens,
                                   float *out_logits, int32_t logits_capacity,
                                   int32_t *out_rows, int32_t *out_cols,
                                   char *err, int32_t err_len)
{
    BN_ERROR_WHERE("eval_gpu");
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return bn_done(rc, err, err_len);
    call_scope scope;
    bn_scope_enter(&scope, &c->cancel, "evaluate");
    const bn_backend *be = c->ops;
    if ((rc = BN_FAULT(EVAL_GPU)))
        bn_done(rc, err, err_len);
    else if (!be->eval_gpu)
        rc = bn_done(no_gpu_socket(be), err, err_len);
    else
        rc = bn_failed(be, be->eval_gpu(c->impl, tokens, n_tokens,
                                        out_logits, logits_capacity, out_rows,
                                        out_cols, err, err_len),
                       err, err_len);
    if (!rc && out_rows && out_cols &&
        (rc = bn_check_logits(be, "bitnet_cpp_eval_gpu", out_logits != NULL,
                              *out_rows, *out_cols, n_tokens, c->n_vocab,
                              logits_capacity)))
        bn_done(rc, err, err_len);
    bn_scope_leave(&scope);
    bn_context_leave(c);
    return rc;
}

/* ---- context helpers ---------------------------------------------------- */

/* n_past and the model info are checked like the sockets' counts
 * (calls.c): a caller sizes its next call from them. */
BITNET_API int bitnet_cpp_get_n_past(const bitnet_context_t *ctx,
                                     int32_t seq_id, int32_t *out_n_past)
{
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return rc;
    const tier *t = &c->eval;
    int32_t n = 0;
    if (!t->be->get_n_past)
        rc = bn_error(BITNET_E_UNSUPPORTED,
                      "backend '%s' does not export bitnet_cpp_get_n_past",
                      t->be->name);
    else if (!out_n_past)
        rc = bn_error(BITNET_E_INVALID_ARG, "out_n_past is NULL");
    else if (!(rc = bn_failed(t->be, t->be->get_n_past(t->impl, seq_id, &n),
                              NULL, 0)) &&
             !(rc = bn_check_n_past(t->be, seq_id, n, c->n_ctx)))
        *out_n_past = n;
    bn_context_leave(c);
    return rc;
}

BITNET_API int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id)
{
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return rc;
    const tier *t = &c->eval;
    if (!t->be->reset_context)
        rc = bn_error(BITNET_E_UNSUPPORTED,
                      "backend '%s' does not export bitnet_cpp_reset_context",
                      t->be->name);
    else
        rc = bn_failed(t->be, t->be->reset_context(t->impl, seq_id), NULL, 0);
    bn_context_leave(c);
    return rc;
}

BITNET_API int bitnet_cpp_get_model_info(const bitnet_context_t *ctx,
                                         int32_t *out_n_vocab,
                                         int32_t *out_n_ctx)
{
    bn_error_clear();
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return rc;
    const tier *t = &c->eval;
    int32_t v = 0, n = 0;
    if (!t->be->get_model_info)
        rc = bn_error(BITNET_E_UNSUPPORTED,
                      "backend '%s' does not export bitnet_cpp_get_model_info",
                      t->be->name);
    else if (!(rc = bn_failed(t->be, t->be->get_model_info(t->impl, &v, &n),
                              NULL, 0)) &&
             !(rc = bn_check_model_info(t->be, v, n))) {
        if (out_n_vocab)
            *out_n_vocab = v;
        if (out_n_ctx)
            *out_n_ctx = n;
    }
    bn_context_leave(c);
    return rc;
}

/* ---- Socket 4: sessions over contexts ----------------------------------- */

BITNET_API int bitnet_cpp_session_create(bitnet_session_t **out_session,
                                         const char *model_path,
                                         const char *tokenizer_path,
                                         int32_t n_ctx, int32_t n_gpu_layers,
                                         char *err, int32_t err_len)
{
    BN_ERROR_WHERE("session.create");
    bn_error_clear();
    if (!out_session)
        return bn_done(bn_error(BITNET_E_INVALID_ARG, "out_session is NULL"),
                       err, err_len);
    *out_session = NULL;
    if (tokenizer_path)
        return bn_done(bn_error(BITNET_E_UNSUPPORTED,
                                "a separate tokenizer file ('%s') is not "
                                "supported: the tokenizer is read from the "
                                "GGUF model; pass tokenizer_path=NULL",
                                tokenizer_path),
                       err, err_len);
    int rc = BN_FAULT(SESSION_CREATE);
    if (rc)
        return bn_done(rc, err, err_len);
    bn_session *s = bn_calloc(1, sizeof *s, "session handle");
    if (!s)
        return bn_done(BITNET_E_OOM, err, err_len);
    rc = bitnet_cpp_init_context(&s->ctx, model_path, n_ctx, n_gpu_layers,
                                     err, err_len);
    const void *handle = NULL;
    if (rc == BITNET_OK && (rc = bn_handle_add(s, KIND_SESSION, &handle))) {
        bitnet_cpp_free_context(s->ctx);
        bn_done(rc, err, err_len);
    }
    if (rc) {
        bn_free(s);
        return rc;
    }
    bn_counter_add(BN_COUNTER_SESSIONS, 1);
    *out_session = (bitnet_session_t *)handle;
    return BITNET_OK;
}

/* Like a context, the session stays registered until its context is
 * freed: a failure leaves it whole for the retry. */
BITNET_API int bitnet_cpp_session_free(bitnet_session_t *session)
{
    BN_ERROR_WHERE("session.free");
    if (!session)
        return BITNET_OK;
    bn_error_clear();
    int rc = BN_FAULT(SESSION_FREE);
    if (rc)
        return rc; /* the session stays alive for a retry */
    bitnet_context_t *ctx = bn_session_context(session);
    if (!ctx)
        return BITNET_E_INVALID_HANDLE;
    rc = bitnet_cpp_free_context(ctx);
    if (rc)
        return rc;
    /* only the caller whose free of ctx succeeded gets here, once */
    bn_free(bn_handle_remove(session, KIND_SESSION));
    bn_counter_add(BN_COUNTER_SESSIONS, -1);
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_session_tokenize(
    const bitnet_session_t *session, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len)
{
    BN_ERROR_WHERE("tokenize");
    bn_error_clear();
    bitnet_context_t *ctx = bn_session_context(session);
    if (!ctx)
        return bn_done(BITNET_E_INVALID_HANDLE, err, err_len);
    int rc = BN_FAULT(SESSION_TOKENIZE);
    if (rc)
        return bn_done(rc, err, err_len);
    return bitnet_cpp_tokenize_with_context(ctx, prompt, add_bos,
                                            parse_special, out_tokens,
                                            out_capacity, out_len, err,
                                            err_len);
}

BITNET_API int bitnet_cpp_session_eval(const bitnet_session_t *session,
                                       const int32_t *tokens, int32_t n_tokens,
                                       float *out_logits,
                                       int32_t logits_capacity,
                                       int32_t *out_rows, int32_t *out_cols,
                                       char *err, int32_t err_len)
{
    BN_ERROR_WHERE("evaluate");
    bn_error_clear();
    bitnet_context_t *ctx = bn_session_context(session);
    if (!ctx)
        return bn_done(BITNET_E_INVALID_HANDLE, err, err_len);
    int rc = BN_FAULT(SESSION_EVAL);
    if (rc)
        return bn_done(rc, err, err_len);
    return bitnet_cpp_eval_with_context(ctx, tokens, n_tokens, 0, out_logits,
                                        logits_capacity, out_rows, out_cols,
                                        err, err_len);
}

/* ---- Socket 6, version, errors, counters --------------------------------- */

/* Socket 6 answers for a backend, never for the bridge: what the library
 * that serves the calls can use (a library built with CUDA says so; the
 * reference engine reports the CPU it runs on).  Its answer is checked
 * (calls.c).  A library without Socket 6 leaves them unknown: an error,
 * not a guess. */
static int backend_capabilities(const bn_backend *be,
                                bitnet_capabilities_t *out)
{
    if (be == &bn_stub_backend)
        return bn_error(BITNET_E_NOT_AVAILABLE,
                        "STUB mode: no backend is loaded, so none can report "
                        "capabilities; choose one with BITNET_BACKEND "
                        "(reference, dlopen, llama)");
    if (!be->get_capabilities)
        return bn_error(BITNET_E_UNSUPPORTED,
                        "%s does not export bitnet_cpp_get_capabilities "
                        "(Socket 6): what it can use is unknown; rebuild it "
                        "with Socket 6 to report it",
                        be->name);
    bitnet_capabilities_t caps;
    memset(&caps, 0, sizeof caps);
    int rc = bn_failed(be, be->get_capabilities(&caps), NULL, 0);
    if (!rc)
        rc = bn_check_capabilities(be, &caps);
    if (!rc)
        *out = caps;
    return rc;
}

BITNET_API int bitnet_bridge_get_capabilities(const bitnet_bridge_options *opts,
                                              bitnet_capabilities_t *out_caps)
{
    bn_error_clear();
    if (!out_caps)
        return bn_done(bn_error(BITNET_E_INVALID_ARG, "out_caps is NULL"),
                       NULL, 0);
    resolved r;
    const bn_backend *be;
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = bn_select_backend(&r, &be);
    if (rc)
        return bn_done(rc, NULL, 0);
    rc = backend_capabilities(be, out_caps);
    bn_backend_release(be);
    return bn_done(rc, NULL, 0);
}

BITNET_API int bitnet_bridge_context_capabilities(
    const bitnet_context_t *ctx, bitnet_capabilities_t *out_caps)
{
    bn_error_clear();
    if (!out_caps)
        return bn_done(bn_error(BITNET_E_INVALID_ARG, "out_caps is NULL"),
                       NULL, 0);
    int rc;
    bn_context *c = bn_context_enter(ctx, 0, &rc);
    if (!c)
        return rc;
    rc = backend_capabilities(c->be, out_caps);
    bn_context_leave(c);
    return bn_done(rc, NULL, 0);
}

/* The default options' backend: BITNET_BACKEND, else the reference engine
 * (a standalone library: always its own engine, options.c). */
BITNET_API int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps)
{
    return bitnet_bridge_get_capabilities(NULL, out_caps);
}

BITNET_API int32_t bitnet_cpp_abi_version(void) { return BITNET_ABI_VERSION; }

BITNET_API const char *bitnet_cpp_version(void) { return "pytest-bitnet reference 0.1.0"; }

BITNET_API int32_t bitnet_cpp_get_last_error(char *buf, int32_t buf_len)
{
    const char *msg = bn_error_message();
    bn_error_copy(buf, buf_len);
    size_t n = strlen(msg);
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

BITNET_API int32_t bitnet_cpp_get_last_error_code(void) { return bn_error_code(); }

BITNET_API int bitnet_cpp_get_counters(bitnet_counters_t *out)
{
    if (!out)
        return BITNET_E_INVALID_ARG;
    bn_counters_read(out);
    bn_libraries_add_counters(out); /* objects living in loaded libraries */
    return BITNET_OK;
}
