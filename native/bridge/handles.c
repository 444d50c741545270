/*
 * handles.c — every handle the bridge gives out, live or not: the registry
 * that makes a freed, stale or foreign handle BITNET_E_INVALID_HANDLE
 * instead of a crash or a call on someone else's context, the
 * one-call-at-a-time guard, and the extensions that look a context up
 * (backend name, served by, cancel).
 *
 * Handles are not pointers.  A handle used to be the address of its
 * bridge object, validated by looking the address up; but glibc hands a
 * freed block to the next allocation of its size, so a caller still
 * holding a freed handle (another thread, code run while a call was
 * starting) named the *next* context made, and its call ran there.  Two
 * ways out: never reuse an address while any caller may hold it (which
 * the bridge cannot know: it would have to keep every freed object's
 * memory for the process's life), or make the handle a value that is
 * never handed out twice.  A handle here is
 *
 *     serial << (SLOT_BITS + 1)  |  slot << 1  |  1
 *
 * where slot indexes the registry's table (O(1) lookup, the object's
 * pointer is kept there) and serial is a process-wide count of
 * registrations: a slot reused for a new object gets a new serial, so a
 * stale handle names a slot whose serial differs and is refused, even when
 * the new object sits at the old address.  The low bit keeps every handle
 * odd (never NULL, never an aligned pointer); nothing ever dereferences a
 * handle, so a forged value is just a lookup that fails.  Serials have 43
 * bits: a stale handle could only be confused after 2^43 registrations,
 * and then only if it also names the same slot.
 *
 * The lock.  Every call takes the registry's lock once (validation), so
 * nothing that may sleep runs under it: the table grows and shrinks with
 * allocations made and freed outside the lock, and the lock is a bn_lock
 * (bn_lock.h), so a fault point reached under it is refused by the engine
 * instead of stalling every call of the process.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bn_lock.h"
#include "bridge.h"

_Static_assert(sizeof(uintptr_t) >= 8,
               "handles pack a 43-bit serial and a 20-bit slot into a "
               "pointer-sized value: a 64-bit target is required");

#define SLOT_BITS 20
#define MAX_SLOTS (1u << SLOT_BITS) /* live handles at once */
#define SERIAL_BITS (64 - SLOT_BITS - 1)
#define NO_SLOT UINT32_MAX
#define FIRST_CAP 16

typedef struct {
    void *obj;          /* the bridge object; NULL: the slot is free */
    uint64_t serial;    /* of the handle that names obj */
    uint32_t next_free; /* free slots form a list: the next one, or NO_SLOT */
    handle_kind kind;
} slot;

static struct {
    pthread_mutex_t lock; /* guards every field below; taken with bn_lock */
    slot *slots;          /* cap entries; NULL while nothing is live */
    uint32_t cap;         /* entries in slots */
    uint32_t live;        /* entries in use */
    uint32_t free_head;   /* first free entry, NO_SLOT when all are used */
    uint64_t serial;      /* the last serial handed out */
} reg = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, NO_SLOT, 0};

static const void *encode(uint32_t i, uint64_t serial)
{
    return (const void *)(uintptr_t)((serial << (SLOT_BITS + 1)) |
                                     ((uint64_t)i << 1) | 1u);
}

/* The slot a handle names while its object lives, else NULL.  Caller holds
 * the lock. */
static slot *find(const void *handle, handle_kind kind)
{
    uintptr_t v = (uintptr_t)handle;
    if (!(v & 1u))
        return NULL; /* NULL, or a pointer: never one of ours */
    uint32_t i = (uint32_t)((v >> 1) & (MAX_SLOTS - 1));
    uint64_t serial = (uint64_t)v >> (SLOT_BITS + 1);
    if (i >= reg.cap)
        return NULL;
    slot *s = &reg.slots[i];
    return s->obj && s->serial == serial && s->kind == kind ? s : NULL;
}

/* Makes room for one more handle: a table of twice the size, allocated
 * and filled without holding the lock across the allocation (an `alloc`
 * delay there must not stall other calls).  Returns BITNET_OK when there
 * may be room now (the caller looks again), BITNET_E_OOM when not. */
static int grow(void)
{
    bn_lock(&reg.lock);
    uint32_t cap = reg.cap;
    int full = reg.free_head == NO_SLOT;
    bn_unlock(&reg.lock);
    if (!full)
        return BITNET_OK;
    if (cap >= MAX_SLOTS)
        return bn_error(BITNET_E_OOM,
                        "too many live handles: the bridge holds at most %u "
                        "contexts and sessions at once; free the ones no "
                        "longer needed",
                        MAX_SLOTS);
    uint32_t new_cap = cap ? cap * 2 : FIRST_CAP;
    slot *fresh = bn_malloc(new_cap * sizeof *fresh, "handle registry");
    if (!fresh)
        return BITNET_E_OOM;
    slot *old = NULL;
    bn_lock(&reg.lock);
    if (reg.cap == cap && reg.free_head == NO_SLOT) {
        /* nobody resized meanwhile: move the entries, chain the new ones */
        if (cap)
            memcpy(fresh, reg.slots, cap * sizeof *fresh);
        for (uint32_t i = cap; i < new_cap; i++) {
            fresh[i] = (slot){NULL, 0, i + 1 < new_cap ? i + 1 : NO_SLOT, 0};
        }
        reg.free_head = cap;
        old = reg.slots;
        reg.slots = fresh;
        reg.cap = new_cap;
        fresh = NULL;
    }
    bn_unlock(&reg.lock);
    bn_free(old); /* whichever table lost: freed outside the lock too */
    bn_free(fresh);
    return BITNET_OK;
}

int bn_handle_add(void *obj, handle_kind kind, const void **out)
{
    for (;;) {
        bn_lock(&reg.lock);
        uint32_t i = reg.free_head;
        if (i != NO_SLOT) {
            slot *s = &reg.slots[i];
            reg.free_head = s->next_free;
            /* 0 is never a serial: wrap from the top back to 1 */
            reg.serial = reg.serial + 1 >= (1ull << SERIAL_BITS)
                             ? 1
                             : reg.serial + 1;
            s->obj = obj;
            s->serial = reg.serial;
            s->kind = kind;
            s->next_free = NO_SLOT;
            reg.live++;
            *out = encode(i, reg.serial);
            bn_unlock(&reg.lock);
            return BITNET_OK;
        }
        bn_unlock(&reg.lock);
        int rc = grow();
        if (rc)
            return rc;
    }
}

void *bn_handle_remove(const void *handle, handle_kind kind)
{
    slot *idle = NULL;
    bn_lock(&reg.lock);
    slot *s = find(handle, kind);
    void *obj = s ? s->obj : NULL;
    if (s) {
        s->obj = NULL;
        s->next_free = reg.free_head;
        reg.free_head = (uint32_t)(s - reg.slots);
        if (--reg.live == 0) {
            /* give the registry's memory back when idle, so the live
             * counters return to their baseline; serials are global, so a
             * new table's slots still never repeat a handle */
            idle = reg.slots;
            reg.slots = NULL;
            reg.cap = 0;
            reg.free_head = NO_SLOT;
        }
    }
    bn_unlock(&reg.lock);
    bn_free(idle);
    return obj;
}

/* ---- contexts: validation and the one-call-at-a-time guard --------------- */

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

static int torn_error(void)
{
    return bn_error(BITNET_E_CLEANUP,
                    "this context is half freed: an earlier free_context "
                    "released one of its backend contexts and failed on the "
                    "other, so it can serve no call; retry free_context");
}

bn_context *bn_context_enter(const bitnet_context_t *handle, int freeing,
                             int *rc)
{
    enum { OK, INVALID, BUSY, TORN } why = OK;
    bn_lock(&reg.lock);
    slot *s = find(handle, KIND_CONTEXT);
    bn_context *c = s ? s->obj : NULL;
    if (!c)
        why = INVALID;
    else {
        int expected = 0;
        if (!atomic_compare_exchange_strong(&c->busy, &expected, 1))
            why = BUSY;
        else if (c->torn && !freeing) {
            atomic_store(&c->busy, 0);
            why = TORN;
        }
        else
            atomic_store(&c->cancel, 0); /* cancel is for the call in flight */
    }
    bn_unlock(&reg.lock);
    /* messages are written after the lock is dropped: nothing but the
     * lookup runs under it */
    switch (why) {
    case INVALID: *rc = bad_handle("context"); return NULL;
    case BUSY: *rc = busy_error(); return NULL;
    case TORN: *rc = torn_error(); return NULL;
    default: *rc = BITNET_OK; return c;
    }
}

void bn_context_leave(bn_context *c) { atomic_store(&c->busy, 0); }

bitnet_context_t *bn_session_context(const bitnet_session_t *handle)
{
    bn_lock(&reg.lock);
    slot *s = find(handle, KIND_SESSION);
    bitnet_context_t *ctx = s ? ((bn_session *)s->obj)->ctx : NULL;
    bn_unlock(&reg.lock);
    if (!ctx)
        bad_handle("session");
    return ctx;
}

/* ---- extensions that look a context up ------------------------------------
 * What they read lives in the context, which a free on another thread may
 * release as soon as the registry's lock is dropped: so the text is copied
 * into the caller's buffer while the lock is held (a pointer into the
 * context, returned and read after the lock, was a use-after-free). */

/* Two-pass copy of text into buf; the full length without the NUL. */
static int32_t copy_out(const char *text, char *buf, int32_t buf_len)
{
    size_t n = strlen(text);
    if (buf && buf_len > 0) {
        size_t c = n < (size_t)buf_len - 1 ? n : (size_t)buf_len - 1;
        memcpy(buf, text, c);
        buf[c] = '\0';
    }
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

BITNET_API int32_t bitnet_bridge_backend_name(const bitnet_context_t *ctx,
                                              char *buf, int32_t buf_len)
{
    int32_t n = -1;
    bn_lock(&reg.lock);
    slot *s = find(ctx, KIND_CONTEXT);
    if (s)
        n = copy_out(((bn_context *)s->obj)->be->name, buf, buf_len);
    bn_unlock(&reg.lock);
    return n >= 0 ? n : bad_handle("context");
}

BITNET_API int32_t bitnet_bridge_served_by(const bitnet_context_t *ctx,
                                           const char *operation, char *buf,
                                           int32_t buf_len)
{
    int tok = operation && strcmp(operation, "tokenize") == 0;
    int detok = operation && strcmp(operation, "detokenize") == 0;
    if (!tok && !detok && !(operation && strcmp(operation, "evaluate") == 0))
        return bn_error(BITNET_E_INVALID_ARG,
                        "served_by: unknown operation '%s' (known: tokenize, "
                        "detokenize, evaluate)",
                        operation ? operation : "(null)");
    int32_t n = -1;
    bn_lock(&reg.lock);
    slot *s = find(ctx, KIND_CONTEXT);
    if (s) {
        const bn_context *c = s->obj;
        n = copy_out(tok ? c->tok.label
                     : detok ? c->detok.label
                             : c->eval.label,
                     buf, buf_len);
    }
    bn_unlock(&reg.lock);
    return n >= 0 ? n : bad_handle("context");
}

BITNET_API int32_t bitnet_bridge_deadlines(const bitnet_context_t *ctx,
                                           char *buf, int32_t buf_len)
{
    int32_t n = -1;
    bn_lock(&reg.lock);
    slot *s = find(ctx, KIND_CONTEXT);
    if (s) {
        const bn_context *c = s->obj;
        /* the library serves create and free whatever the routing, so it
         * decides first; a fallback tier serving the rest decides next */
        const char *why = c->be->unbounded;
        if (!why && c->fb)
            why = c->fb->unbounded;
        n = copy_out(why ? why : "", buf, buf_len);
    }
    bn_unlock(&reg.lock);
    return n >= 0 ? n : bad_handle("context");
}

BITNET_API int bitnet_bridge_cancel(const bitnet_context_t *ctx)
{
    /* under the lock: the context cannot be freed while the flag is set,
     * and a stale handle cannot reach the context that took its memory */
    bn_lock(&reg.lock);
    slot *s = find(ctx, KIND_CONTEXT);
    if (s)
        atomic_store(&((bn_context *)s->obj)->cancel, 1);
    bn_unlock(&reg.lock);
    return s ? BITNET_OK : bad_handle("context");
}
