/*
 * handles.c — every handle the bridge gives out, live or not: the registry
 * that makes a freed or foreign pointer BITNET_E_INVALID_HANDLE instead of
 * a crash, the one-call-at-a-time guard, and the extensions that look a
 * context up (backend name, served by, cancel).
 */
#include <pthread.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bridge.h"

/* ---- live handle registry ---------------------------------------------
 * A small set of live pointers under one mutex.  Lookups are linear: a
 * process holds few handles, and the lock is taken once per call, which is
 * noise next to tokenizing or evaluating. */
static struct {
    pthread_mutex_t lock;
    struct { const void *p; handle_kind kind; } *items;
    size_t n, cap;
} live = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

int bn_live_add(const void *p, handle_kind kind)
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

/* Validates ctx and marks it busy.  remove != 0 also unregisters it (free). */
int bn_handle_enter(const bitnet_context_t *ctx, int remove)
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

void bn_handle_leave(const bitnet_context_t *ctx)
{
    atomic_store(&((bitnet_context_t *)ctx)->busy, 0);
}

/* The session's context, or NULL with an INVALID_HANDLE error. */
bitnet_context_t *bn_session_ctx(const bitnet_session_t *s, int remove)
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

/* ---- extensions that look a context up ----------------------------------- */

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
