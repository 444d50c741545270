/*
 * routing.c — the fallback chain (seed 003 section 2): which backend is the
 * fallback tier, and which tier serves tokenize and eval for a context.
 */
#include <stdio.h>
#include <string.h>

#include "bn_error.h"
#include "bn_log.h"
#include "bridge.h"
#include "loader.h"

/* The fallback tier (seed 003 section 2), in this order: llama.cpp when
 * its adapter is configured (BITNET_FALLBACK=auto, the default, or
 * =llama, which insists on it), else the embedded reference engine
 * (=reference forces it).  `serving` is the tier that needs a fallback:
 * llama.cpp never falls back to itself.  The caller releases *out
 * (bn_backend_release) when done with it. */
int bn_fallback_backend(const resolved *r, const bn_backend *serving,
                        const bn_backend **out)
{
    *out = &bn_reference_backend;
    if (!strcmp(r->fallback, "reference"))
        return BITNET_OK;
    int want_llama = !strcmp(r->fallback, "llama");
    if (!want_llama && !bn_llama_configured())
        return BITNET_OK;
    bn_discovery d;
    bn_library *lib;
    int rc = bn_llama_open(BN_LOAD_FALLBACK, &d, &lib);
    /* the same library, whether either load saw it through a fault */
    if (!rc && !bn_backend_same_library(bn_library_backend(lib), serving)) {
        *out = bn_library_backend(lib); /* the caller's to release */
        return BITNET_OK;
    }
    if (!rc)
        bn_backend_release(bn_library_backend(lib));
    if (want_llama)
        return rc ? rc
                  : bn_error(BITNET_E_NOT_AVAILABLE,
                             "BITNET_FALLBACK=llama, but llama.cpp is the "
                             "backend itself: it cannot be its own fallback");
    if (rc)
        BN_LOG(BN_LOG_WARN, "fallback",
               "llama.cpp cannot serve the fallback tier (%s); the "
               "reference engine serves it",
               bn_error_message());
    bn_error_clear();
    return BITNET_OK;
}

/* The tier's name for messages: "llama.cpp" or "reference engine". */
const char *bn_tier_name(const bn_backend *be)
{
    return be == &bn_reference_backend ? "reference engine" : "llama.cpp";
}

void bn_tier_label(char *buf, size_t cap, const bn_backend *be,
                   const char *why)
{
    if (why)
        snprintf(buf, cap, "fallback:%s (%s)", be->name, why);
    else
        snprintf(buf, cap, "%s", be->name);
}

static void set_tier(tier *t, const bn_backend *be, void *impl,
                     const char *why)
{
    t->be = be;
    t->impl = impl;
    bn_tier_label(t->label, sizeof t->label, be, why);
}

/* Decides who serves tokenize and eval, creating the fallback context when
 * one is needed.  The fallback loads the model once, for the context's
 * whole life (seed 003: no reload per call). */
int bn_route(bn_context *c, const resolved *r, const char *path,
             int32_t n_ctx, int32_t n_gpu_layers, char *err,
             int32_t err_len)
{
    const char *tok_why = NULL, *eval_why = NULL, *detok_why = NULL;
    if (r->force_fallback)
        tok_why = eval_why = detok_why = "BITNET_FORCE_LLAMA_FALLBACK=1";
    /* c->ops: a library served through its Socket 4 tokenizes and
     * evaluates through it (session_tier.c).  Detokenize, an extension of
     * Socket 2 newer than the others, is the one a library built before it
     * lacks: without a fallback tier it fails when called, not at create
     * (a library that serves everything else stays usable under
     * BITNET_FALLBACK=none) */
    if (!detok_why && !c->ops->detokenize_with_context)
        detok_why = "bitnet_cpp_detokenize_with_context missing";
    if (!tok_why && !c->ops->tokenize_with_context)
        tok_why = "bitnet_cpp_tokenize_with_context missing";
    if (!eval_why && !c->ops->eval_with_context)
        eval_why = "bitnet_cpp_eval_with_context missing";
    const char *op = tok_why ? "tokenize" : "evaluate";
    const char *sym = tok_why ? "bitnet_cpp_tokenize_with_context"
                              : "bitnet_cpp_eval_with_context";
    /* why the native tier does not serve op, for the messages below */
    char native_why[512];
    if (r->force_fallback)
        snprintf(native_why, sizeof native_why,
                 "the native tier (%s) is bypassed (BITNET_FORCE_LLAMA_FALLBACK=1)",
                 c->be->name);
    else
        snprintf(native_why, sizeof native_why, "the native tier (%s) lacks %s",
                 c->be->name, sym);
    if ((tok_why || eval_why) && !r->fallback_allowed)
        return bn_done(bn_error(BITNET_E_NOT_AVAILABLE,
                                "no tier can serve %s: %s and the fallback "
                                "tier is disabled (BITNET_FALLBACK=none); "
                                "rebuild the library with the optional "
                                "sockets or enable the fallback",
                                op, native_why),
                       err, err_len);
    if (tok_why || eval_why || (detok_why && r->fallback_allowed)) {
        int rc = bn_fallback_backend(r, c->be, &c->fb);
        if (rc)
            return bn_done(rc, err, err_len);
        /* A fallback library may lack the socket too (built without it;
         * a dlsym.<symbol> fault never removes it, loader.h). */
        if ((tok_why && !c->fb->tokenize_with_context) ||
            (eval_why && !c->fb->eval_with_context))
            return bn_done(bn_error(BITNET_E_NOT_AVAILABLE,
                                    "no tier can serve %s: %s and the "
                                    "fallback tier (%s) lacks it too; "
                                    "install a library that exports %s, or "
                                    "choose another fallback with "
                                    "BITNET_FALLBACK=reference",
                                    op, native_why, bn_tier_name(c->fb), sym),
                           err, err_len);
        rc = bn_failed(c->fb, c->fb->init_context(&c->fb_impl, path, n_ctx,
                                                  n_gpu_layers, err, err_len),
                       err, err_len);
        if (rc)
            return rc;
        if (tok_why)
            BN_LOG(BN_LOG_WARN, "fallback",
                   "%s: %s; tokenize is served by the fallback tier (%s)",
                   c->be->name, tok_why, bn_tier_name(c->fb));
        if (eval_why)
            BN_LOG(BN_LOG_WARN, "fallback",
                   "%s: %s; evaluate is served by the fallback tier (%s)",
                   c->be->name, eval_why, bn_tier_name(c->fb));
        if (detok_why && c->fb->detokenize_with_context)
            BN_LOG(BN_LOG_WARN, "fallback",
                   "%s: %s; detokenize is served by the fallback tier (%s)",
                   c->be->name, detok_why, bn_tier_name(c->fb));
    }
    set_tier(&c->tok, tok_why ? c->fb : c->ops,
             tok_why ? c->fb_impl : c->impl, tok_why);
    set_tier(&c->eval, eval_why ? c->fb : c->ops,
             eval_why ? c->fb_impl : c->impl, eval_why);
    if (!detok_why)
        set_tier(&c->detok, c->ops, c->impl, NULL);
    else if (c->fb && c->fb->detokenize_with_context)
        set_tier(&c->detok, c->fb, c->fb_impl, detok_why);
    else /* no tier: the call says why (sockets.c) */
        snprintf(c->detok.label, sizeof c->detok.label, "none (%s%s)",
                 detok_why,
                 c->fb ? "; the fallback tier lacks it too"
                       : "; the fallback tier is disabled");
    return BITNET_OK;
}
