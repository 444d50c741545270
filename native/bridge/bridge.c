/*
 * bridge.c — the socket ABI (bitnet.h) as the Python module sees it.
 *
 * Every handle given out is a bridge object wrapping a backend context.
 * The bridge owns what must hold whatever the backend: handle validation
 * (a freed or foreign pointer is BITNET_E_INVALID_HANDLE, never a crash),
 * the one-thread-at-a-time guard (BITNET_E_THREAD_SAFETY), the live
 * counters of contexts and sessions, and the error buffer contract.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "backend.h"
#include "bitnet_bridge.h"
#include "bn_alloc.h"
#include "bn_error.h"

typedef enum { KIND_CONTEXT = 1, KIND_SESSION = 2 } handle_kind;

struct bitnet_context_t {
    const bn_backend *be;
    void *impl;       /* the backend's context */
    atomic_int busy;  /* 1 while a call runs on this handle */
};

struct bitnet_session_t {
    bitnet_context_t *ctx; /* a session is a context plus its tokenizer */
};

/* ---- live handle registry ---------------------------------------------
 * A small set of live pointers under one mutex.  Lookups are linear: a
 * process holds few handles, and the lock is taken once per call, which is
 * noise next to tokenizing or evaluating. */
static struct {
    pthread_mutex_t lock;
    struct { const void *p; handle_kind kind; } *items;
    size_t n, cap;
} live = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

static int live_add(const void *p, handle_kind kind)
{
    pthread_mutex_lock(&live.lock);
    if (live.n == live.cap) {
        size_t cap = live.cap ? live.cap * 2 : 16;
        void *items = bn_realloc(live.items, cap * sizeof *live.items,
                                 "handle registry");
        if (!items) {
            pthread_mutex_unlock(&live.lock);
            return BITNET_E_OOM;
        }
        live.items = items;
        live.cap = cap;
    }
    live.items[live.n].p = p;
    live.items[live.n].kind = kind;
    live.n++;
    pthread_mutex_unlock(&live.lock);
    return BITNET_OK;
}

/* Index of p, or -1.  Caller holds the lock. */
static long live_find(const void *p, handle_kind kind)
{
    for (size_t i = 0; i < live.n; i++)
        if (live.items[i].p == p && live.items[i].kind == kind)
            return (long)i;
    return -1;
}

static void live_remove_at(long i)
{
    live.items[i] = live.items[--live.n];
    if (live.n == 0) { /* give the registry's memory back when idle */
        bn_free(live.items);
        live.items = NULL;
        live.cap = 0;
    }
}

static int bad_handle(const char *what)
{
    return bn_error(BITNET_E_INVALID_HANDLE,
                    "invalid %s handle: it is NULL, already freed, or was not "
                    "created by this library; create a new one",
                    what);
}

static int busy_error(void)
{
    return bn_error(BITNET_E_THREAD_SAFETY,
                    "the handle is in use by another thread: a context "
                    "serves one call at a time; give each thread its own "
                    "session, or serialize calls with a lock");
}

/* Validates ctx and marks it busy.  remove != 0 also unregisters it (free). */
static int enter(const bitnet_context_t *ctx, int remove)
{
    pthread_mutex_lock(&live.lock);
    long i = ctx ? live_find(ctx, KIND_CONTEXT) : -1;
    int rc = BITNET_OK;
    if (i < 0)
        rc = bad_handle("context");
    else {
        int expected = 0;
        if (!atomic_compare_exchange_strong(
                &((bitnet_context_t *)ctx)->busy, &expected, 1))
            rc = busy_error();
        else if (remove)
            live_remove_at(i);
    }
    pthread_mutex_unlock(&live.lock);
    return rc;
}

static void leave(const bitnet_context_t *ctx)
{
    atomic_store(&((bitnet_context_t *)ctx)->busy, 0);
}

static int done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK)
        bn_error_copy(err, err_len);
    return rc;
}

static const bn_backend *default_backend(void) { return &bn_reference_backend; }

/* ---- Socket 1 ---------------------------------------------------------- */

BITNET_API int bitnet_cpp_init_context(bitnet_context_t **out_ctx,
                                       const char *model_path, int32_t n_ctx,
                                       int32_t n_gpu_layers, char *err,
                                       int32_t err_len)
{
    bn_error_clear();
    if (!out_ctx)
        return done(bn_error(BITNET_E_INVALID_ARG, "out_ctx is NULL"), err,
                    err_len);
    *out_ctx = NULL;
    const bn_backend *be = default_backend();
    bitnet_context_t *c = bn_calloc(1, sizeof *c, "context handle");
    if (!c)
        return done(BITNET_E_OOM, err, err_len);
    c->be = be;
    int rc = be->init_context(&c->impl, model_path, n_ctx, n_gpu_layers, err,
                              err_len);
    if (rc == BITNET_OK && (rc = live_add(c, KIND_CONTEXT))) {
        be->free_context(c->impl);
        done(rc, err, err_len);
    }
    if (rc) {
        bn_free(c);
        return rc;
    }
    bn_counter_add(BN_COUNTER_CONTEXTS, 1);
    *out_ctx = c;
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_free_context(bitnet_context_t *ctx)
{
    if (!ctx)
        return BITNET_OK;
    bn_error_clear();
    int rc = enter(ctx, 1);
    if (rc)
        return rc;
    rc = ctx->be->free_context(ctx->impl);
    if (rc) {
        /* the backend kept its context: keep the handle usable for a retry */
        live_add(ctx, KIND_CONTEXT);
        leave(ctx);
        return rc;
    }
    bn_free(ctx);
    bn_counter_add(BN_COUNTER_CONTEXTS, -1);
    return BITNET_OK;
}

/* ---- Sockets 2, 3, 5 ---------------------------------------------------- */

BITNET_API int bitnet_cpp_tokenize_with_context(
    const bitnet_context_t *ctx, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return done(rc, err, err_len);
    if (!ctx->be->tokenize_with_context)
        rc = done(bn_error(BITNET_E_UNSUPPORTED,
                           "backend '%s' does not provide tokenize",
                           ctx->be->name),
                  err, err_len);
    else
        rc = ctx->be->tokenize_with_context(ctx->impl, prompt, add_bos,
                                            parse_special, out_tokens,
                                            out_capacity, out_len, err,
                                            err_len);
    leave(ctx);
    return rc;
}

BITNET_API int bitnet_cpp_eval_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int32_t seq_id, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return done(rc, err, err_len);
    if (!ctx->be->eval_with_context)
        rc = done(bn_error(BITNET_E_UNSUPPORTED,
                           "backend '%s' does not provide eval",
                           ctx->be->name),
                  err, err_len);
    else
        rc = ctx->be->eval_with_context(ctx->impl, tokens, n_tokens, seq_id,
                                        out_logits, logits_capacity, out_rows,
                                        out_cols, err, err_len);
    leave(ctx);
    return rc;
}

BITNET_API int bitnet_cpp_eval_gpu(const bitnet_context_t *ctx,
                                   const int32_t *tokens, int32_t n_tokens,
                                   float *out_logits, int32_t logits_capacity,
                                   int32_t *out_rows, int32_t *out_cols,
                                   char *err, int32_t err_len)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return done(rc, err, err_len);
    if (!ctx->be->eval_gpu)
        rc = done(bn_error(BITNET_E_UNSUPPORTED,
                           "GPU evaluation is not available: backend '%s' "
                           "has no GPU support",
                           ctx->be->name),
                  err, err_len);
    else
        rc = ctx->be->eval_gpu(ctx->impl, tokens, n_tokens, out_logits,
                               logits_capacity, out_rows, out_cols, err,
                               err_len);
    leave(ctx);
    return rc;
}

/* ---- context helpers ---------------------------------------------------- */

BITNET_API int bitnet_cpp_get_n_past(const bitnet_context_t *ctx,
                                     int32_t seq_id, int32_t *out_n_past)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return rc;
    rc = ctx->be->get_n_past(ctx->impl, seq_id, out_n_past);
    leave(ctx);
    return rc;
}

BITNET_API int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return rc;
    rc = ctx->be->reset_context(ctx->impl, seq_id);
    leave(ctx);
    return rc;
}

BITNET_API int bitnet_cpp_get_model_info(const bitnet_context_t *ctx,
                                         int32_t *out_n_vocab,
                                         int32_t *out_n_ctx)
{
    bn_error_clear();
    int rc = enter(ctx, 0);
    if (rc)
        return rc;
    rc = ctx->be->get_model_info(ctx->impl, out_n_vocab, out_n_ctx);
    leave(ctx);
    return rc;
}

/* ---- Socket 4: sessions over contexts ----------------------------------- */

BITNET_API int bitnet_cpp_session_create(bitnet_session_t **out_session,
                                         const char *model_path,
                                         const char *tokenizer_path,
                                         int32_t n_ctx, int32_t n_gpu_layers,
                                         char *err, int32_t err_len)
{
    bn_error_clear();
    if (!out_session)
        return done(bn_error(BITNET_E_INVALID_ARG, "out_session is NULL"),
                    err, err_len);
    *out_session = NULL;
    if (tokenizer_path)
        return done(bn_error(BITNET_E_UNSUPPORTED,
                             "a separate tokenizer file ('%s') is not "
                             "supported: the tokenizer is read from the "
                             "GGUF model; pass tokenizer_path=NULL",
                             tokenizer_path),
                    err, err_len);
    bitnet_session_t *s = bn_calloc(1, sizeof *s, "session handle");
    if (!s)
        return done(BITNET_E_OOM, err, err_len);
    int rc = bitnet_cpp_init_context(&s->ctx, model_path, n_ctx, n_gpu_layers,
                                     err, err_len);
    if (rc == BITNET_OK && (rc = live_add(s, KIND_SESSION))) {
        bitnet_cpp_free_context(s->ctx);
        done(rc, err, err_len);
    }
    if (rc) {
        bn_free(s);
        return rc;
    }
    bn_counter_add(BN_COUNTER_SESSIONS, 1);
    *out_session = s;
    return BITNET_OK;
}

/* The session's context, or NULL with an INVALID_HANDLE error. */
static bitnet_context_t *session_ctx(const bitnet_session_t *s, int remove)
{
    pthread_mutex_lock(&live.lock);
    long i = s ? live_find(s, KIND_SESSION) : -1;
    bitnet_context_t *ctx = i < 0 ? NULL : s->ctx;
    if (i >= 0 && remove)
        live_remove_at(i);
    pthread_mutex_unlock(&live.lock);
    if (!ctx)
        bad_handle("session");
    return ctx;
}

BITNET_API int bitnet_cpp_session_free(bitnet_session_t *session)
{
    if (!session)
        return BITNET_OK;
    bn_error_clear();
    bitnet_context_t *ctx = session_ctx(session, 1);
    if (!ctx)
        return BITNET_E_INVALID_HANDLE;
    int rc = bitnet_cpp_free_context(ctx);
    if (rc) {
        live_add(session, KIND_SESSION); /* still alive: allow a retry */
        return rc;
    }
    bn_free(session);
    bn_counter_add(BN_COUNTER_SESSIONS, -1);
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_session_tokenize(
    const bitnet_session_t *session, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len)
{
    bn_error_clear();
    bitnet_context_t *ctx = session_ctx(session, 0);
    if (!ctx)
        return done(BITNET_E_INVALID_HANDLE, err, err_len);
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
    bn_error_clear();
    bitnet_context_t *ctx = session_ctx(session, 0);
    if (!ctx)
        return done(BITNET_E_INVALID_HANDLE, err, err_len);
    return bitnet_cpp_eval_with_context(ctx, tokens, n_tokens, 0, out_logits,
                                        logits_capacity, out_rows, out_cols,
                                        err, err_len);
}

/* ---- Socket 6, per-call, version, errors, counters ----------------------- */

BITNET_API int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps)
{
    bn_error_clear();
    return default_backend()->get_capabilities(out_caps);
}

BITNET_API int crossval_bitnet_tokenize(const char *model_path,
                                        const char *prompt, int add_bos,
                                        int parse_special, int32_t *out_tokens,
                                        int32_t out_capacity, int32_t *out_len,
                                        char *err, int32_t err_len)
{
    bn_error_clear();
    return default_backend()->percall_tokenize(model_path, prompt, add_bos,
                                               parse_special, out_tokens,
                                               out_capacity, out_len, err,
                                               err_len);
}

BITNET_API int crossval_bitnet_eval_with_tokens(
    const char *model_path, const int32_t *tokens, int32_t n_tokens,
    int32_t n_ctx, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    bn_error_clear();
    return default_backend()->percall_eval(model_path, tokens, n_tokens, n_ctx,
                                           out_logits, logits_capacity,
                                           out_rows, out_cols, err, err_len);
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
    return BITNET_OK;
}

BITNET_API const char *bitnet_bridge_backend_name(const bitnet_context_t *ctx)
{
    pthread_mutex_lock(&live.lock);
    const char *name = (ctx && live_find(ctx, KIND_CONTEXT) >= 0) ? ctx->be->name : NULL;
    pthread_mutex_unlock(&live.lock);
    return name;
}
