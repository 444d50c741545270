/*
 * bridge.c — the socket ABI (bitnet.h) as the Python module sees it, and the
 * bridge extensions of bitnet_bridge.h.
 *
 * Every handle given out is a bridge object wrapping backend contexts.  The
 * bridge owns what must hold whatever the backend: handle validation (a
 * freed or foreign pointer is BITNET_E_INVALID_HANDLE, never a crash), the
 * one-call-at-a-time guard (BITNET_E_THREAD_SAFETY), the fallback chain,
 * deadlines and cancellation, the live counters of contexts and sessions,
 * and the error buffer contract.
 */
/* every point here wraps a backend call: in a guest library (the bridge
 * layer compiled into libbitnet) they must stay silent, the loading
 * bridge's copies already counted the call (bn_fault.h) */
#define BN_FAULT_BOUNDARY 1
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <limits.h>

#include "backend.h"
#include "bitnet_bridge.h"
#include "bn_alloc.h"
#include "bn_deadline.h"
#include "bn_fault.h"
#include "bn_error.h"
#include "bn_log.h"
#include "loader.h"

typedef enum { KIND_CONTEXT = 1, KIND_SESSION = 2 } handle_kind;

/* Which tier serves an operation of a context. */
typedef struct {
    const bn_backend *be;
    void *impl;
    char label[PATH_MAX + 200]; /* what bitnet_bridge_served_by reports */
} tier;

struct bitnet_context_t {
    const bn_backend *be;   /* the selected backend */
    void *impl;             /* its context */
    const bn_backend *fb;   /* fallback tier (llama.cpp or reference), or NULL */
    void *fb_impl;          /* its context: the model stays loaded */
    tier tok, eval;         /* who serves tokenize / eval (and n_past...) */
    atomic_int busy;        /* 1 while a call runs on this handle */
    atomic_int cancel;      /* set by bitnet_bridge_cancel */
};

struct bitnet_session_t {
    bitnet_context_t *ctx; /* a session is a context plus its tokenizer */
};

/* ---- options ------------------------------------------------------------- */

/* The backends of bitnet_backends.def, by index. */
typedef enum {
#define BITNET_BACKEND(ID, NAME, DESCRIPTION) BN_BACKEND_##ID,
#include "bitnet_backends.def"
#undef BITNET_BACKEND
    BN_BACKEND__N
} bn_backend_kind;

static const char *const backend_names[BN_BACKEND__N] = {
#define BITNET_BACKEND(ID, NAME, DESCRIPTION) [BN_BACKEND_##ID] = NAME,
#include "bitnet_backends.def"
#undef BITNET_BACKEND
};

typedef struct {
    bn_backend_kind kind;
    const char *backend; /* its name, static */
    const char *library_path;
    int force_fallback;
    int fallback_allowed;
    const char *fallback; /* "auto" | "llama" | "reference" | "none" */
} resolved;

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0 &&
           strcasecmp(v, "no") != 0;
}

/* "reference, dlopen, llama, stub": the valid names, for messages. */
static const char *backend_list(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < BN_BACKEND__N && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s",
                                 i ? ", " : "", backend_names[i]);
    return buf;
}

static int bn_bridge_resolve(const bitnet_bridge_options *o, resolved *r)
{
#ifdef BN_STANDALONE_LIBRARY
    /* Built as libbitnet: the library serves its own engine.  Backend
     * choice and the fallback chain belong to the bridge that loads it, so
     * the environment that steers that bridge must not steer this too. */
    (void)o;
    r->kind = BN_BACKEND_REFERENCE;
    r->backend = backend_names[r->kind];
    r->library_path = NULL;
    r->force_fallback = 0;
    r->fallback_allowed = 1;
    r->fallback = "reference";
    return BITNET_OK;
#endif
    const char *want = o && o->backend ? o->backend : getenv("BITNET_BACKEND");
    if (!want || !*want)
        want = backend_names[BN_BACKEND_REFERENCE];
    r->library_path = o ? o->library_path : NULL;
    r->force_fallback = o && o->force_fallback >= 0
                            ? o->force_fallback
                            : env_flag("BITNET_FORCE_LLAMA_FALLBACK");
    const char *fb = o && o->fallback ? o->fallback : getenv("BITNET_FALLBACK");
    if (!fb || !*fb)
        fb = "auto";
    if (strcmp(fb, "auto") && strcmp(fb, "llama") && strcmp(fb, "reference") &&
        strcmp(fb, "none"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "unknown fallback '%s' (valid: auto, llama, reference, "
                        "none); check BITNET_FALLBACK",
                        fb);
    r->fallback = fb;
    r->fallback_allowed = strcmp(fb, "none") != 0;
    for (int i = 0; i < BN_BACKEND__N; i++)
        if (strcmp(want, backend_names[i]) == 0) {
            r->kind = (bn_backend_kind)i;
            r->backend = backend_names[i];
            return BITNET_OK;
        }
    char valid[128];
    return bn_error(BITNET_E_INVALID_ARG,
                    "unknown backend '%s' (valid: %s); check the backend "
                    "option (bitnet_bridge_options.backend) or BITNET_BACKEND",
                    want, backend_list(valid, sizeof valid));
}

/* The backend for resolved options (loading a library for dlopen). */
static int select_backend(const resolved *r, const bn_backend **out)
{
    bn_discovery d;
    bn_library *lib;
    int rc;
    switch (r->kind) {
    case BN_BACKEND_REFERENCE:
        *out = &bn_reference_backend;
        return BITNET_OK;
    case BN_BACKEND_STUB:
        *out = &bn_stub_backend;
        return BITNET_OK;
    case BN_BACKEND_LLAMA:
        rc = bn_llama_open(&d, &lib);
        break;
    case BN_BACKEND_DLOPEN:
    default:
        rc = bn_library_open(r->library_path, &d, &lib);
        break;
    }
    if (rc)
        return rc;
    *out = bn_library_backend(lib);
    return BITNET_OK;
}

/* The fallback tier (seed 003 section 2), in this order: llama.cpp when
 * its adapter is configured (BITNET_FALLBACK=auto, the default, or
 * =llama, which insists on it), else the embedded reference engine
 * (=reference forces it).  `serving` is the tier that needs a fallback:
 * llama.cpp never falls back to itself. */
static int fallback_backend(const resolved *r, const bn_backend *serving,
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
    int rc = bn_llama_open(&d, &lib);
    if (!rc && bn_library_backend(lib) != serving) {
        *out = bn_library_backend(lib);
        return BITNET_OK;
    }
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
static const char *tier_name(const bn_backend *be)
{
    return be == &bn_reference_backend ? "reference engine" : "llama.cpp";
}

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
                    "the session is in use by another thread: a context "
                    "serves one call at a time; give each thread its own "
                    "session, or serialize calls with a lock");
}

/* ---- per-call state: guard, deadline ------------------------------------ */

static _Thread_local int64_t call_timeout_ns;

BITNET_API void bitnet_bridge_set_call_timeout(int64_t timeout_ns)
{
    call_timeout_ns = timeout_ns > 0 ? timeout_ns : 0;
}

typedef struct {
    bn_deadline dl;
    const bn_deadline *prev;
} call_scope;

static void scope_enter(call_scope *s, atomic_int *cancel, const char *op)
{
    int64_t now = bn_now_ns();
    /* saturate: a timeout of centuries must not wrap into the past */
    s->dl.at_ns = !call_timeout_ns ? 0
                  : call_timeout_ns > INT64_MAX - now ? INT64_MAX
                                                      : now + call_timeout_ns;
    s->dl.cancel = cancel;
    s->dl.operation = op;
    s->prev = bn_deadline_enter(&s->dl);
}

static void scope_leave(call_scope *s) { bn_deadline_leave(s->prev); }

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
        bitnet_context_t *c = (bitnet_context_t *)ctx;
        if (!atomic_compare_exchange_strong(&c->busy, &expected, 1))
            rc = busy_error();
        else {
            atomic_store(&c->cancel, 0); /* cancel is for the call in flight */
            if (remove)
                live_remove_at(i);
        }
    }
    pthread_mutex_unlock(&live.lock);
    return rc;
}

static void leave(const bitnet_context_t *ctx)
{
    atomic_store(&((bitnet_context_t *)ctx)->busy, 0);
}

/* After a backend call failed: make the bridge's last error the backend's
 * whole message (a library keeps its own last error; err may hold only its
 * beginning), then copy it into the caller's buffer. */
static int done(int rc, char *err, int32_t err_len);

static int failed(const bn_backend *be, int rc, char *err, int32_t err_len)
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
    return done(rc, err, err_len);
}

/* Every error a socket returns leaves through here: copied to the caller's
 * buffer, and logged, so an application that only watches its logs sees
 * native failures too.  A guest library's own bridge layer stays quiet:
 * the bridge that loaded it logs what it returns, once. */
static int done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK) {
        bn_error_copy(err, err_len);
#ifndef BN_GUEST
        BN_LOG(BN_LOG_ERROR, "bridge", "%s: %s", bn_error_name(rc), bn_error_message());
#endif
    }
    return rc;
}

/* ---- Socket 1 ---------------------------------------------------------- */

static void set_tier(tier *t, const bn_backend *be, void *impl,
                     const char *why)
{
    t->be = be;
    t->impl = impl;
    if (why)
        snprintf(t->label, sizeof t->label, "fallback:%s (%s)", be->name, why);
    else
        snprintf(t->label, sizeof t->label, "%s", be->name);
}

/* Decides who serves tokenize and eval, creating the fallback context when
 * one is needed.  The fallback loads the model once, for the context's
 * whole life (seed 003: no reload per call). */
static int route(bitnet_context_t *c, const resolved *r, const char *path,
                 int32_t n_ctx, int32_t n_gpu_layers, char *err,
                 int32_t err_len)
{
    const char *tok_why = NULL, *eval_why = NULL;
    if (r->force_fallback)
        tok_why = eval_why = "BITNET_FORCE_LLAMA_FALLBACK=1";
    if (!tok_why && !c->be->tokenize_with_context)
        tok_why = "bitnet_cpp_tokenize_with_context missing";
    if (!eval_why && !c->be->eval_with_context)
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
        return done(bn_error(BITNET_E_NOT_AVAILABLE,
                             "no tier can serve %s: %s and the fallback tier "
                             "is disabled (BITNET_FALLBACK=none); rebuild the "
                             "library with the optional sockets or enable the "
                             "fallback",
                             op, native_why),
                    err, err_len);
    if (tok_why || eval_why) {
        int rc = fallback_backend(r, c->be, &c->fb);
        if (rc)
            return done(rc, err, err_len);
        /* A fallback library may lack the socket too (built without it, or
         * a dlsym.<symbol> fault armed for every library loaded). */
        if ((tok_why && !c->fb->tokenize_with_context) ||
            (eval_why && !c->fb->eval_with_context))
            return done(bn_error(BITNET_E_NOT_AVAILABLE,
                                 "no tier can serve %s: %s and the fallback "
                                 "tier (%s) lacks it too; install a library "
                                 "that exports %s, or choose another fallback "
                                 "with BITNET_FALLBACK=reference",
                                 op, native_why, tier_name(c->fb), sym),
                        err, err_len);
        rc = failed(c->fb, c->fb->init_context(&c->fb_impl, path, n_ctx,
                                               n_gpu_layers, err, err_len),
                    err, err_len);
        if (rc)
            return rc;
        if (tok_why)
            BN_LOG(BN_LOG_WARN, "fallback",
                   "%s: %s; tokenize is served by the fallback tier (%s)",
                   c->be->name, tok_why, tier_name(c->fb));
        if (eval_why)
            BN_LOG(BN_LOG_WARN, "fallback",
                   "%s: %s; evaluate is served by the fallback tier (%s)",
                   c->be->name, eval_why, tier_name(c->fb));
    }
    set_tier(&c->tok, tok_why ? c->fb : c->be, tok_why ? c->fb_impl : c->impl,
             tok_why);
    set_tier(&c->eval, eval_why ? c->fb : c->be,
             eval_why ? c->fb_impl : c->impl, eval_why);
    return BITNET_OK;
}

static void free_impls(bitnet_context_t *c)
{
    if (c->fb_impl)
        c->fb->free_context(c->fb_impl);
    if (c->impl)
        c->be->free_context(c->impl);
}

BITNET_API int bitnet_bridge_init_context(bitnet_context_t **out_ctx,
                                          const char *model_path,
                                          int32_t n_ctx, int32_t n_gpu_layers,
                                          const bitnet_bridge_options *opts,
                                          char *err, int32_t err_len)
{
    bn_error_clear();
    if (!out_ctx)
        return done(bn_error(BITNET_E_INVALID_ARG, "out_ctx is NULL"), err,
                    err_len);
    *out_ctx = NULL;
    resolved r;
    const bn_backend *be;
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = select_backend(&r, &be);
    if (rc)
        return done(rc, err, err_len);
    bitnet_context_t *c = bn_calloc(1, sizeof *c, "context handle");
    if (!c)
        return done(BITNET_E_OOM, err, err_len);
    c->be = be;
    call_scope scope;
    scope_enter(&scope, &c->cancel, "create");
    rc = BN_FAULT(INIT_CONTEXT);
    if (rc)
        done(rc, err, err_len);
    else
        rc = failed(be, be->init_context(&c->impl, model_path, n_ctx,
                                         n_gpu_layers, err, err_len),
                    err, err_len);
    if (!rc)
        rc = route(c, &r, model_path, n_ctx, n_gpu_layers, err, err_len);
    if (!rc && (rc = live_add(c, KIND_CONTEXT)))
        done(rc, err, err_len);
    scope_leave(&scope);
    if (rc) {
        free_impls(c);
        bn_free(c);
        return rc;
    }
    bn_counter_add(BN_COUNTER_CONTEXTS, 1);
    *out_ctx = c;
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

BITNET_API int bitnet_cpp_free_context(bitnet_context_t *ctx)
{
    if (!ctx)
        return BITNET_OK;
    bn_error_clear();
    int rc = enter(ctx, 1);
    if (rc)
        return rc;
    if ((rc = BN_FAULT(FREE_CONTEXT)))
        goto keep;
    if (ctx->fb_impl) {
        if ((rc = failed(ctx->fb, ctx->fb->free_context(ctx->fb_impl), NULL, 0)))
            goto keep;
        ctx->fb_impl = NULL;
    }
    if ((rc = failed(ctx->be, ctx->be->free_context(ctx->impl), NULL, 0)))
        goto keep;
    bn_free(ctx);
    bn_counter_add(BN_COUNTER_CONTEXTS, -1);
    return BITNET_OK;
keep:
    /* the backend kept its context: keep the handle usable for a retry */
    live_add(ctx, KIND_CONTEXT);
    leave(ctx);
    return rc;
}

/* ---- the `grow` fault: a fill pass that needs more than its query said ----
 * A backend whose output changes between the two passes (a bug, or state
 * that moved) must be reported with both sizes, and nothing may be written
 * past the caller's capacity.  The bridge asks the real query, adds the
 * injected growth, and refuses before the backend writes anything. */

static int grow_tokens_error(int32_t n, int32_t cap, int32_t *out_len,
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

static int grow_logits_error(int32_t rows, int32_t cols, int32_t cap,
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

static int grown_tokenize(bitnet_context_t *c, const char *prompt, int add_bos,
                          int parse_special, int32_t cap, int32_t *out_len,
                          const bn_fault_special *fs)
{
    int32_t n = 0;
    int rc = c->tok.be->tokenize_with_context(c->tok.impl, prompt, add_bos,
                                              parse_special, NULL, 0, &n,
                                              NULL, 0);
    return rc ? rc : grow_tokens_error(n, cap, out_len, fs);
}

static int grown_eval(bitnet_context_t *c, const int32_t *tokens,
                      int32_t n_tokens, int32_t seq_id, int32_t cap,
                      int32_t *out_rows, int32_t *out_cols,
                      const bn_fault_special *fs)
{
    int32_t rows = 0, cols = 0;
    int rc = c->eval.be->eval_with_context(c->eval.impl, tokens, n_tokens,
                                           seq_id, NULL, 0, &rows, &cols,
                                           NULL, 0);
    return rc ? rc : grow_logits_error(rows, cols, cap, out_rows, out_cols, fs);
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
    bitnet_context_t *c = (bitnet_context_t *)ctx;
    call_scope scope;
    scope_enter(&scope, &c->cancel, "tokenize");
    bn_fault_special fs;
    rc = out_tokens ? BN_FAULT_SPECIAL(TOKENIZE_FILL, &fs)
                    : BN_FAULT(TOKENIZE_QUERY);
    if (rc > 0) /* grow: the fill pass needs more than the query said */
        rc = grown_tokenize(c, prompt, add_bos, parse_special, out_capacity,
                            out_len, &fs);
    if (rc)
        done(rc, err, err_len);
    else
        rc = failed(c->tok.be,
                    c->tok.be->tokenize_with_context(
                        c->tok.impl, prompt, add_bos, parse_special,
                        out_tokens, out_capacity, out_len, err, err_len),
                    err, err_len);
    scope_leave(&scope);
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
    bitnet_context_t *c = (bitnet_context_t *)ctx;
    call_scope scope;
    scope_enter(&scope, &c->cancel, "evaluate");
    bn_fault_special fs;
    rc = out_logits ? BN_FAULT_SPECIAL(EVAL_FILL, &fs) : BN_FAULT(EVAL_QUERY);
    if (rc > 0) /* grow: the fill pass needs more than the query said */
        rc = grown_eval(c, tokens, n_tokens, seq_id, logits_capacity,
                        out_rows, out_cols, &fs);
    if (rc)
        done(rc, err, err_len);
    else
        rc = failed(c->eval.be,
                    c->eval.be->eval_with_context(
                        c->eval.impl, tokens, n_tokens, seq_id, out_logits,
                        logits_capacity, out_rows, out_cols, err, err_len),
                    err, err_len);
    scope_leave(&scope);
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
    const bn_backend *be = ctx->be;
    if ((rc = BN_FAULT(EVAL_GPU)))
        done(rc, err, err_len);
    else if (!be->eval_gpu)
        rc = done(bn_error(BITNET_E_UNSUPPORTED,
                           "GPU evaluation is not available: backend '%s' "
                           "does not export bitnet_cpp_eval_gpu (has_cuda=0, "
                           "has_metal=0, has_hip=0); evaluate on the CPU "
                           "(bitnet_cpp_eval_with_context)",
                           be->name),
                  err, err_len);
    else
        rc = failed(be, be->eval_gpu(ctx->impl, tokens, n_tokens, out_logits,
                                     logits_capacity, out_rows, out_cols, err,
                                     err_len),
                    err, err_len);
    leave(ctx);
    return rc;
}

/* ---- context helpers ---------------------------------------------------- */

/* The eval tier's optional helper, or an UNSUPPORTED error. */
#define EVAL_HELPER(ctx, field, ...)                                          \
    do {                                                                      \
        int rc_ = enter(ctx, 0);                                              \
        if (rc_)                                                              \
            return rc_;                                                       \
        const tier *t_ = &(ctx)->eval;                                        \
        rc_ = t_->be->field ? failed(t_->be, t_->be->field(t_->impl, __VA_ARGS__), NULL, 0) \
                            : bn_error(BITNET_E_UNSUPPORTED,                  \
                                       "backend '%s' does not export the "     \
                                       "helper behind " #field,                \
                                       t_->be->name);                         \
        leave(ctx);                                                           \
        return rc_;                                                           \
    } while (0)

BITNET_API int bitnet_cpp_get_n_past(const bitnet_context_t *ctx,
                                     int32_t seq_id, int32_t *out_n_past)
{
    bn_error_clear();
    EVAL_HELPER(ctx, get_n_past, seq_id, out_n_past);
}

BITNET_API int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id)
{
    bn_error_clear();
    EVAL_HELPER(ctx, reset_context, seq_id);
}

BITNET_API int bitnet_cpp_get_model_info(const bitnet_context_t *ctx,
                                         int32_t *out_n_vocab,
                                         int32_t *out_n_ctx)
{
    bn_error_clear();
    EVAL_HELPER(ctx, get_model_info, out_n_vocab, out_n_ctx);
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
    int rc = BN_FAULT(SESSION_CREATE);
    if (rc)
        return done(rc, err, err_len);
    bitnet_session_t *s = bn_calloc(1, sizeof *s, "session handle");
    if (!s)
        return done(BITNET_E_OOM, err, err_len);
    rc = bitnet_cpp_init_context(&s->ctx, model_path, n_ctx, n_gpu_layers,
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
    int rc = BN_FAULT(SESSION_FREE);
    if (rc)
        return rc; /* the session stays alive for a retry */
    bitnet_context_t *ctx = session_ctx(session, 1);
    if (!ctx)
        return BITNET_E_INVALID_HANDLE;
    rc = bitnet_cpp_free_context(ctx);
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
    int rc = BN_FAULT(SESSION_TOKENIZE);
    if (rc)
        return done(rc, err, err_len);
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
    int rc = BN_FAULT(SESSION_EVAL);
    if (rc)
        return done(rc, err, err_len);
    return bitnet_cpp_eval_with_context(ctx, tokens, n_tokens, 0, out_logits,
                                        logits_capacity, out_rows, out_cols,
                                        err, err_len);
}

/* ---- per-call functions: the same chain, one call long ------------------- */

/* The backend serving a per-call function: the selected one when it exports
 * the function (has() says), else the fallback tier. */
static int percall_backend(const bitnet_bridge_options *opts,
                           int (*has)(const bn_backend *),
                           const bn_backend **out)
{
    resolved r;
    const bn_backend *be;
    int rc = bn_bridge_resolve(opts, &r);
    if (!rc)
        rc = select_backend(&r, &be);
    if (rc)
        return rc;
    *out = be;
    if (be == &bn_stub_backend || (!r.force_fallback && has(be)))
        return BITNET_OK;
    if (!r.fallback_allowed)
        return bn_error(BITNET_E_NOT_AVAILABLE,
                        "no tier can serve the per-call function: %s lacks "
                        "it and the fallback tier is disabled "
                        "(BITNET_FALLBACK=none)",
                        be->name);
    const bn_backend *fb;
    if ((rc = fallback_backend(&r, be, &fb)))
        return rc;
    BN_LOG(BN_LOG_WARN, "fallback",
           "%s: per-call function %s; served by the fallback tier (%s)",
           be->name, r.force_fallback ? "forced to fallback" : "missing",
           tier_name(fb));
    *out = fb;
    return BITNET_OK;
}

static int has_percall_tok(const bn_backend *be) { return be->percall_tokenize != NULL; }
static int has_percall_eval(const bn_backend *be) { return be->percall_eval != NULL; }

BITNET_API int bitnet_bridge_percall_tokenize(
    const bitnet_bridge_options *opts, const char *model_path,
    const char *prompt, int add_bos, int parse_special, int32_t *out_tokens,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    bn_error_clear();
    const bn_backend *be;
    int rc = percall_backend(opts, has_percall_tok, &be);
    if (rc)
        return done(rc, err, err_len);
    call_scope scope;
    scope_enter(&scope, NULL, "tokenize");
    bn_fault_special fs;
    rc = out_tokens ? BN_FAULT_SPECIAL(TOKENIZE_FILL, &fs)
                    : BN_FAULT(TOKENIZE_QUERY);
    if (rc > 0) { /* grow */
        int32_t n = 0;
        rc = be->percall_tokenize(model_path, prompt, add_bos, parse_special,
                                  NULL, 0, &n, NULL, 0);
        if (!rc)
            rc = grow_tokens_error(n, out_capacity, out_len, &fs);
    }
    if (rc)
        done(rc, err, err_len);
    else
        rc = failed(be, be->percall_tokenize(model_path, prompt, add_bos,
                                             parse_special, out_tokens,
                                             out_capacity, out_len, err,
                                             err_len),
                    err, err_len);
    scope_leave(&scope);
    return rc;
}

BITNET_API int bitnet_bridge_percall_eval(
    const bitnet_bridge_options *opts, const char *model_path,
    const int32_t *tokens, int32_t n_tokens, int32_t n_ctx,
    float *out_logits, int32_t logits_capacity, int32_t *out_rows,
    int32_t *out_cols, char *err, int32_t err_len)
{
    bn_error_clear();
    const bn_backend *be;
    int rc = percall_backend(opts, has_percall_eval, &be);
    if (rc)
        return done(rc, err, err_len);
    call_scope scope;
    scope_enter(&scope, NULL, "evaluate");
    bn_fault_special fs;
    rc = out_logits ? BN_FAULT_SPECIAL(EVAL_FILL, &fs) : BN_FAULT(EVAL_QUERY);
    if (rc > 0) { /* grow */
        int32_t rows = 0, cols = 0;
        rc = be->percall_eval(model_path, tokens, n_tokens, n_ctx, NULL, 0,
                              &rows, &cols, NULL, 0);
        if (!rc)
            rc = grow_logits_error(rows, cols, logits_capacity, out_rows,
                                   out_cols, &fs);
    }
    if (rc)
        done(rc, err, err_len);
    else
        rc = failed(be, be->percall_eval(model_path, tokens, n_tokens, n_ctx,
                                         out_logits, logits_capacity,
                                         out_rows, out_cols, err, err_len),
                    err, err_len);
    scope_leave(&scope);
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

/* ---- Socket 6, version, errors, counters --------------------------------- */

BITNET_API int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps)
{
    bn_error_clear();
    return bn_reference_backend.get_capabilities(out_caps);
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

/* ---- bridge extensions -------------------------------------------------- */

BITNET_API const char *bitnet_bridge_backend_name(const bitnet_context_t *ctx)
{
    pthread_mutex_lock(&live.lock);
    const char *name = (ctx && live_find(ctx, KIND_CONTEXT) >= 0) ? ctx->be->name : NULL;
    pthread_mutex_unlock(&live.lock);
    return name;
}

BITNET_API const char *bitnet_bridge_served_by(const bitnet_context_t *ctx,
                                               const char *operation)
{
    const char *label = NULL;
    pthread_mutex_lock(&live.lock);
    if (ctx && operation && live_find(ctx, KIND_CONTEXT) >= 0) {
        if (strcmp(operation, "tokenize") == 0)
            label = ctx->tok.label;
        else if (strcmp(operation, "evaluate") == 0)
            label = ctx->eval.label;
    }
    pthread_mutex_unlock(&live.lock);
    return label;
}

BITNET_API int bitnet_bridge_cancel(const bitnet_context_t *ctx)
{
    pthread_mutex_lock(&live.lock);
    int ok = ctx && live_find(ctx, KIND_CONTEXT) >= 0;
    if (ok)
        atomic_store(&((bitnet_context_t *)ctx)->cancel, 1);
    pthread_mutex_unlock(&live.lock);
    return ok ? BITNET_OK : bad_handle("context");
}

BITNET_API void bitnet_bridge_set_log_sink(void (*sink)(int, const char *,
                                                        const char *))
{
    bn_log_set_sink(sink);
}

BITNET_API void bitnet_bridge_set_log_level(int level)
{
    bn_log_threshold = level < 0 ? -1 : level > 4 ? 4 : level;
}

BITNET_API int bitnet_bridge_get_log_level(void) { return bn_log_threshold; }

BITNET_API void bitnet_bridge_set_bundled_library(const char *path)
{
    bn_loader_set_bundled(path);
}

BITNET_API void bitnet_bridge_set_llama_library(const char *adapter_path,
                                                const char *libllama_path,
                                                const char *unavailable)
{
    bn_loader_set_llama(adapter_path, libllama_path, unavailable);
}

/* ---- discovery report ---------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap, len; /* len counts what would have been written */
} report;

static void put(report *r, const char *fmt, ...) BN_PRINTF(2, 3);
static void put(report *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *dst = r->buf && r->len < r->cap ? r->buf + r->len : NULL;
    size_t room = dst ? r->cap - r->len : 0;
    int n = vsnprintf(dst, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->len += (size_t)n;
}

/* An error line: the report is one record per line, so newlines in the
 * message become "; ". */
static void put_error(report *r, const char *msg)
{
    put(r, "error\t");
    for (const char *p = msg; *p; p++) {
        if (*p == '\n') {
            put(r, "; ");
            while (p[1] == ' ')
                p++;
        } else {
            put(r, "%c", *p);
        }
    }
    put(r, "\n");
}

/* The fallback tier's name as the report shows it, without loading it. */
static const char *fallback_label(const resolved *r)
{
    if (r->kind == BN_BACKEND_LLAMA) /* never its own fallback */
        return "reference";
    if (!strcmp(r->fallback, "llama") ||
        (!strcmp(r->fallback, "auto") && bn_llama_configured()))
        return "llama.cpp";
    return "reference";
}

/* What serves a socket symbol of a library: itself, or the fallback. */
static const char *serves(bn_symbol sym, int found, const resolved *r)
{
    static _Thread_local char forced[64], plain[64];
    snprintf(forced, sizeof forced, "fallback:%s (forced)", fallback_label(r));
    snprintf(plain, sizeof plain, "fallback:%s", fallback_label(r));
    int need = bn_socket_symbols[sym].need;
    if (need == BITNET_SYMBOL_FALLBACK && r->force_fallback)
        return r->fallback_allowed ? forced : "none";
    if (found)
        return "library";
    if (sym == BN_SYM_bitnet_cpp_get_counters)
        return "bridge counters only";
    if (need == BITNET_SYMBOL_FALLBACK)
        return r->fallback_allowed ? plain : "none";
    return need == BITNET_SYMBOL_REQUIRED ? "none (required)" : "not used";
}

BITNET_API int32_t bitnet_bridge_describe(const bitnet_bridge_options *opts,
                                          char *buf, int32_t buf_len)
{
    report rep = {buf, buf && buf_len > 0 ? (size_t)buf_len : 0, 0};
    resolved r;
    int rc = bn_bridge_resolve(opts, &r);
    if (rc) {
        put_error(&rep, bn_error_message());
    } else {
        put(&rep, "mode\t%s\n", r.backend);
        put(&rep, "fallback\t%s\n", r.fallback_allowed ? fallback_label(&r) : "none");
        put(&rep, "force_fallback\t%d\n", r.force_fallback);
        if (r.kind == BN_BACKEND_DLOPEN || r.kind == BN_BACKEND_LLAMA) {
            bn_discovery d;
            bn_library *lib = NULL;
            rc = r.kind == BN_BACKEND_LLAMA
                     ? bn_llama_open(&d, &lib)
                     : bn_library_open(r.library_path, &d, &lib);
            for (int i = 0; i < d.n_tried; i++)
                put(&rep, "tried\t%s\t%s\n", d.tried[i].path, d.tried[i].result);
            if (rc)
                put_error(&rep, bn_error_message());
            if (lib) {
                put(&rep, "library\t%s\n", bn_library_path(lib));
                put(&rep, "abi\t%d\t%d\n", (int)bn_library_abi(lib), BITNET_ABI_VERSION);
                put(&rep, "version\t%s\n", bn_library_version(lib));
            }
            for (int i = 0; i < BN_SYM__N; i++) {
                const bn_symbol_info *s = &bn_socket_symbols[i];
                int found = lib && bn_library_symbol(lib, (bn_symbol)i);
                put(&rep, "symbol\t%s\t%s\t%s\t%s\n", s->name,
                    s->need == BITNET_SYMBOL_REQUIRED ? "required"
                                                      : "optional",
                    lib ? (found ? "found" : "missing") : "unknown",
                    serves((bn_symbol)i, found, &r));
            }
        } else {
            put(&rep, "library\t(embedded %s)\n", r.backend);
            put(&rep, "abi\t%d\t%d\n", BITNET_ABI_VERSION, BITNET_ABI_VERSION);
            put(&rep, "version\t%s\n", bitnet_cpp_version());
            if (r.kind == BN_BACKEND_STUB)
                put(&rep, "error\tSTUB mode: no backend serves any call\n");
        }
    }
    if (rep.len > INT32_MAX - 1)
        return BITNET_E_INTERNAL;
    return (int32_t)rep.len; /* without the NUL: query with buf NULL */
}
