/* bn_alloc.c — counted allocator and live counters.  See bn_alloc.h. */
#include "bn_alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bn_error.h"
#include "bn_fault.h"

/* The header keeps the block's size; 64 bytes so that the payload of an
 * aligned block stays 64-byte aligned and plain blocks stay max-aligned. */
#define BN_HDR 64
/* Refuse sizes that cannot be real before asking the system: an absurd
 * request must be a clean OOM, never an overflow in size + header. */
#define BN_MAX_ALLOC ((size_t)1 << 46)

static struct {
    _Atomic int64_t objects[BN_COUNTER__N]; /* see bn_counter */
    _Atomic int64_t bytes;                  /* payload bytes held */
    _Atomic int64_t allocations;            /* blocks held */
    _Atomic int64_t peak_bytes;             /* high-water mark of bytes */
} counters;

static void account(int64_t bytes, int64_t blocks)
{
    int64_t now = atomic_fetch_add(&counters.bytes, bytes) + bytes;
    atomic_fetch_add(&counters.allocations, blocks);
    int64_t peak = atomic_load(&counters.peak_bytes);
    while (now > peak &&
           !atomic_compare_exchange_weak(&counters.peak_bytes, &peak, now))
        ;
}

static void *oom(size_t size, const char *what)
{
    bn_error(BITNET_E_OOM,
             "out of memory: could not allocate %zu bytes for %s; "
             "free memory, or use a smaller n_ctx or model",
             size, what ? what : "a buffer");
    return NULL;
}

/* The `alloc` fault point fired.  Callers can only report a NULL as out of
 * memory, so every action there (fail, oom, a delay cut by the deadline)
 * becomes an OOM naming the allocation and the injection; except the
 * engine's refusal of a point reached under a bridge lock, which is a bug
 * report, not an injection, and keeps its own words. */
static void *injected(int rc, size_t size, const char *what)
{
    if (rc == BITNET_E_INTERNAL) {
        bn_error_prefix("allocating %zu bytes for %s: ", size,
                        what ? what : "a buffer");
        return NULL;
    }
    bn_error(BITNET_E_OOM,
             "out of memory: could not allocate %zu bytes for %s (%s): the "
             "allocation was refused by a fault-injection spec; disarm the "
             "point to stop it",
             size, what ? what : "a buffer", bn_fault_note());
    return NULL;
}

void *bn_malloc(size_t size, const char *what)
{
    int frc = BN_FAULT(ALLOC);
    if (frc)
        return injected(frc, size, what);
    if (size > BN_MAX_ALLOC)
        return oom(size, what);
    unsigned char *raw = aligned_alloc(BN_HDR, BN_HDR + ((size + BN_HDR - 1) / BN_HDR) * BN_HDR);
    if (!raw)
        return oom(size, what);
    memcpy(raw, &size, sizeof size);
    account((int64_t)size, 1);
    return raw + BN_HDR;
}

void *bn_calloc(size_t n, size_t size, const char *what)
{
    if (size && n > BN_MAX_ALLOC / size)
        return oom(n * size, what); /* product overflows: report it as huge */
    void *p = bn_malloc(n * size, what);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void *bn_realloc(void *p, size_t size, const char *what)
{
    if (!p)
        return bn_malloc(size, what);
    size_t old;
    memcpy(&old, (unsigned char *)p - BN_HDR, sizeof old);
    void *q = bn_malloc(size, what);
    if (!q)
        return NULL;
    memcpy(q, p, old < size ? old : size);
    bn_free(p);
    return q;
}

void bn_free(void *p)
{
    if (!p)
        return;
    unsigned char *raw = (unsigned char *)p - BN_HDR;
    size_t size;
    memcpy(&size, raw, sizeof size);
    account(-(int64_t)size, -1);
    free(raw);
}

char *bn_strdup(const char *s, const char *what)
{
    size_t n = strlen(s) + 1;
    char *d = bn_malloc(n, what);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Every block is already 64-byte aligned. */
void *bn_aligned_alloc(size_t size, const char *what) { return bn_malloc(size, what); }
void bn_aligned_free(void *p) { bn_free(p); }

void bn_counter_add(bn_counter c, int64_t delta)
{
    atomic_fetch_add(&counters.objects[c], delta);
}

void bn_counters_read(bitnet_counters_t *out)
{
    out->contexts = atomic_load(&counters.objects[BN_COUNTER_CONTEXTS]);
    out->sessions = atomic_load(&counters.objects[BN_COUNTER_SESSIONS]);
    out->models = atomic_load(&counters.objects[BN_COUNTER_MODELS]);
    out->model_loads = atomic_load(&counters.objects[BN_COUNTER_MODEL_LOADS]);
    out->bytes = atomic_load(&counters.bytes);
    out->allocations = atomic_load(&counters.allocations);
    out->peak_bytes = atomic_load(&counters.peak_bytes);
}
