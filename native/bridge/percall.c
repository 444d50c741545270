/*
 * percall.c — the per-call functions (crossval_*, bitnet_bridge_percall_*):
 * load, work and free in one call, through the same fallback chain as a
 * context.
 */
/* every point here wraps a backend call: in a guest library (the bridge
 * layer compiled into libbitnet) they must stay silent, the loading
 * bridge's copies already counted the call (bn_fault.h) */
#define BN_FAULT_BOUNDARY 1
#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"
#include "loader.h"

/* ---- per-call functions: the same chain, one call long ------------------- */

/* The tiers serving a per-call function: the selected backend, and the
 * fallback tier when the selected one lacks the function (has() says) or
 * the fallback is forced.  *serving is the one to call; the caller
 * releases both (bn_backend_release) when the call is over. */
static int percall_backend(const bitnet_bridge_options *opts,
                           int (*has)(const bn_backend *),
                           const bn_backend **selected,
                           const bn_backend **fallback,
                           const bn_backend **serving)
{
    resolved r;
    const bn_backend *be;
    *selected = *fallback = *serving = NULL;
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = bn_select_backend(&r, &be);
    if (rc)
        return rc;
    *selected = *serving = be;
    if (be == &bn_stub_backend || (!r.force_fallback && has(be)))
        return BITNET_OK;
    if (!r.fallback_allowed)
        return bn_error(BITNET_E_NOT_AVAILABLE,
                        "no tier can serve the per-call function: %s lacks "
                        "it and the fallback tier is disabled "
                        "(BITNET_FALLBACK=none)",
                        be->name);
    const bn_backend *fb;
    if ((rc = bn_fallback_backend(&r, be, &fb)))
        return rc;
    BN_LOG(BN_LOG_WARN, "fallback",
           "%s: per-call function %s; served by the fallback tier (%s)",
           be->name, r.force_fallback ? "forced to fallback" : "missing",
           bn_tier_name(fb));
    *fallback = *serving = fb;
    return BITNET_OK;
}

static void percall_release(const bn_backend *selected,
                            const bn_backend *fallback)
{
    bn_backend_release(fallback);
    bn_backend_release(selected);
}

static int has_percall_tok(const bn_backend *be) { return be->percall_tokenize != NULL; }
static int has_percall_eval(const bn_backend *be) { return be->percall_eval != NULL; }

BITNET_API int bitnet_bridge_percall_tokenize(
    const bitnet_bridge_options *opts, const char *model_path,
    const char *prompt, int add_bos, int parse_special, int32_t *out_tokens,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    bn_error_clear();
    const bn_backend *sel, *fb, *be;
    int rc = percall_backend(opts, has_percall_tok, &sel, &fb, &be);
    if (rc) {
        percall_release(sel, fb);
        return bn_done(rc, err, err_len);
    }
    call_scope scope;
    bn_scope_enter(&scope, NULL, "tokenize");
    bn_fault_special fs;
    rc = out_tokens ? BN_FAULT_SPECIAL(TOKENIZE_FILL, &fs)
                    : BN_FAULT(TOKENIZE_QUERY);
    if (rc > 0) { /* grow */
        int32_t n = 0;
        rc = be->percall_tokenize(model_path, prompt, add_bos, parse_special,
                                  NULL, 0, &n, NULL, 0);
        if (!rc)
            rc = bn_grow_tokens_error(n, out_capacity, out_len, &fs);
    }
    if (rc)
        bn_done(rc, err, err_len);
    else
        rc = bn_failed(be, be->percall_tokenize(model_path, prompt, add_bos,
                                                parse_special, out_tokens,
                                                out_capacity, out_len, err,
                                                err_len),
                       err, err_len);
    bn_scope_leave(&scope);
    percall_release(sel, fb);
    return rc;
}

BITNET_API int bitnet_bridge_percall_eval(
    const bitnet_bridge_options *opts, const char *model_path,
    const int32_t *tokens, int32_t n_tokens, int32_t n_ctx,
    float *out_logits, int32_t logits_capacity, int32_t *out_rows,
    int32_t *out_cols, char *err, int32_t err_len)
{
    bn_error_clear();
    const bn_backend *sel, *fb, *be;
    int rc = percall_backend(opts, has_percall_eval, &sel, &fb, &be);
    if (rc) {
        percall_release(sel, fb);
        return bn_done(rc, err, err_len);
    }
    call_scope scope;
    bn_scope_enter(&scope, NULL, "evaluate");
    bn_fault_special fs;
    rc = out_logits ? BN_FAULT_SPECIAL(EVAL_FILL, &fs) : BN_FAULT(EVAL_QUERY);
    if (rc > 0) { /* grow */
        int32_t rows = 0, cols = 0;
        rc = be->percall_eval(model_path, tokens, n_tokens, n_ctx, NULL, 0,
                              &rows, &cols, NULL, 0);
        if (!rc)
            rc = bn_grow_logits_error(rows, cols, logits_capacity, out_rows,
                                      out_cols, &fs);
    }
    if (rc)
        bn_done(rc, err, err_len);
    else
        rc = bn_failed(be, be->percall_eval(model_path, tokens, n_tokens, n_ctx,
                                            out_logits, logits_capacity,
                                            out_rows, out_cols, err, err_len),
                       err, err_len);
    bn_scope_leave(&scope);
    percall_release(sel, fb);
    return rc;
}

BITNET_API int crossval_bitnet_tokenize(const char *model_path,
                                        const char *prompt, int add_bos,
                                        int parse_special, int32_t *out_tokens,
                                        int32_t out_capacity, int32_t *out_len,
                                        char *err, int32_t err_len)
{
    return bitnet_bridge_percall_tokenize(NULL, model_path, prompt, add_bos,
                                          parse_special, out_tokens,
                                          out_capacity, out_len, err, err_len);
}

BITNET_API int crossval_bitnet_eval_with_tokens(
    const char *model_path, const int32_t *tokens, int32_t n_tokens,
    int32_t n_ctx, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    return bitnet_bridge_percall_eval(NULL, model_path, tokens, n_tokens,
                                      n_ctx, out_logits, logits_capacity,
                                      out_rows, out_cols, err, err_len);
}
