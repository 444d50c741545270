/*
 * stub_backend.c — the "stub" backend: no engine.  Every call fails with
 * BITNET_E_NOT_AVAILABLE and says how to get a real backend (seed 003's
 * STUB mode, as a run-time choice instead of a build flag).
 */
#include "backend.h"
#include "bn_error.h"

#define HOW_TO                                                               \
    "set BITNET_BACKEND=reference (the embedded engine) or "                 \
    "BITNET_BACKEND=dlopen with BITNET_CPP_LIBDIR pointing at a directory "  \
    "holding libbitnet.so"

static int unavailable(const char *what, char *err, int32_t err_len)
{
    bn_error(BITNET_E_NOT_AVAILABLE,
             "%s is not available: STUB mode has no BitNet backend; " HOW_TO,
             what);
    bn_error_copy(err, err_len);
    return BITNET_E_NOT_AVAILABLE;
}

static int stub_init(void **out, const char *p, int32_t n, int32_t g, char *err,
                     int32_t err_len)
{
    (void)p; (void)n; (void)g;
    if (out)
        *out = NULL;
    return unavailable("create", err, err_len);
}

static int stub_free(void *ctx) { (void)ctx; return BITNET_OK; }

static int stub_percall_tokenize(const char *p, const char *prompt, int a,
                                 int s, int32_t *o, int32_t c, int32_t *n,
                                 char *err, int32_t err_len)
{
    (void)p; (void)prompt; (void)a; (void)s; (void)o; (void)c; (void)n;
    return unavailable("tokenize", err, err_len);
}

static int stub_percall_eval(const char *p, const int32_t *t, int32_t n,
                             int32_t nc, float *o, int32_t c, int32_t *r,
                             int32_t *cols, char *err, int32_t err_len)
{
    (void)p; (void)t; (void)n; (void)nc; (void)o; (void)c; (void)r; (void)cols;
    return unavailable("evaluate", err, err_len);
}

/* Only create and the per-call functions can be reached: no context is
 * ever made, so the context sockets are never called. */
const bn_backend bn_stub_backend = {
    .name = "stub",
    .embedded = 1,
    .init_context = stub_init,
    .free_context = stub_free,
    .tokenize_with_context = NULL,
    .eval_with_context = NULL,
    .percall_tokenize = stub_percall_tokenize,
    .percall_eval = stub_percall_eval,
};
