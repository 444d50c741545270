/*
 * registry.c — the fault points: those of points.def (indexes
 * 0..BN_FP__N-1, fixed at build time) and those a loaded library registers
 * at run time (indexes from BN_FP__N on, in registration order; at most
 * BITNET_FAULT_MAX_DYNAMIC).  Listed, looked up by name, hashed.  Every
 * build has it (the engine, a guest, BN_NO_FAULTS): a compiled-out build
 * can still say which points its code would have.
 *
 * Registered points are only ever appended, never removed or changed (a
 * library that registered them may still be running code that places
 * them), so readers need no lock: an entry is written in full before the
 * count that makes it visible is published (release), and every reader
 * loads the count first (acquire).  Registration itself is serialised by
 * one mutex.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bn_fault.h"
#include "bn_lock.h"
#include "fault_internal.h"

const bitnet_fault_point_t bn_fault_registry[] = {
#define BN_FAULT_POINT(id, name, code, actions, desc) {name, desc, code, actions},
#include "points.def"
#undef BN_FAULT_POINT
};
_Static_assert(sizeof bn_fault_registry / sizeof bn_fault_registry[0] == BN_FP__N,
               "registry and point ids disagree");

/* The registered points.  Names and descriptions are copies in plain
 * malloc'd memory (the engine's rule: no counted allocation, no `alloc`
 * point), kept for the life of the process: the registering library may be
 * unloaded while its names are still listed. */
static struct {
    pthread_mutex_t lock;                           /* registration only */
    bitnet_fault_point_t points[BITNET_FAULT_MAX_DYNAMIC]; /* [0, n) valid */
    atomic_int n;                                   /* published count */
} dynamic = {.lock = PTHREAD_MUTEX_INITIALIZER};

int32_t bitnet_fault_point_count(void)
{
    return BN_FP__N + atomic_load_explicit(&dynamic.n, memory_order_acquire);
}

const bitnet_fault_point_t *bn_fault_point_def(int point)
{
    if (point >= 0 && point < BN_FP__N)
        return &bn_fault_registry[point];
    int k = point - BN_FP__N;
    if (k >= 0 && k < atomic_load_explicit(&dynamic.n, memory_order_acquire))
        return &dynamic.points[k];
    return NULL;
}

int bitnet_fault_point_info(int32_t index, bitnet_fault_point_t *out)
{
    if (!out)
        return bn_error(BITNET_E_INVALID_ARG, "bitnet_fault_point_info: out "
                                              "is NULL");
    const bitnet_fault_point_t *p = bn_fault_point_def(index);
    if (!p)
        return bn_error(BITNET_E_INVALID_ARG,
                        "fault point index %d is out of range 0..%d",
                        (int)index, (int)bitnet_fault_point_count() - 1);
    *out = *p;
    return BITNET_OK;
}

/* Index of name among the first `n_dynamic` registered points, or -1. */
static int32_t find(const char *name, int n_dynamic)
{
    for (int i = 0; i < BN_FP__N; i++)
        if (strcmp(bn_fault_registry[i].name, name) == 0)
            return i;
    for (int k = 0; k < n_dynamic; k++)
        if (strcmp(dynamic.points[k].name, name) == 0)
            return BN_FP__N + k;
    return -1;
}

int32_t bitnet_fault_point_index(const char *name)
{
    if (!name)
        return -1;
    return find(name, atomic_load_explicit(&dynamic.n, memory_order_acquire));
}

/* Checks one point a library asks to register (not yet against the
 * registry): its name fits a pattern, and what it declares is an action
 * set and an error code the engine knows. */
static int check_new(const bitnet_fault_point_t *p, int i)
{
    if (!p->name || !*p->name)
        return bn_error(BITNET_E_INVALID_ARG,
                        "registering fault points: point %d has %s name", i,
                        p->name ? "an empty" : "a NULL");
    size_t len = strlen(p->name);
    if (len >= BITNET_FAULT_MAX_NAME || strchr(p->name, '*') ||
        strpbrk(p->name, "=;() \t\n"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "registering fault point '%.*s': a name is shorter "
                        "than %d bytes and has no '*', '=', ';', '(', ')' or "
                        "white space (the spec grammar could not name it)",
                        (int)(len < 200 ? len : 200), p->name,
                        BITNET_FAULT_MAX_NAME);
    if (p->actions & ~((1u << BITNET_FAULT_N_ACTIONS) - 1))
        return bn_error(BITNET_E_INVALID_ARG,
                        "registering fault point '%s': actions 0x%x name "
                        "unknown actions (bits 0..%d: 1 << BITNET_FAULT_*)",
                        p->name, (unsigned)p->actions,
                        BITNET_FAULT_N_ACTIONS - 1);
    if (p->default_code < BITNET_E_MIN || p->default_code > -1)
        return bn_error(BITNET_E_INVALID_ARG,
                        "registering fault point '%s': default code %d is "
                        "not an error code (expected %d..-1, a BITNET_E_*)",
                        p->name, (int)p->default_code, BITNET_E_MIN);
    return BITNET_OK;
}

static char *copy(const char *s)
{
    size_t n = strlen(s) + 1;
    char *c = malloc(n);
    if (c)
        memcpy(c, s, n);
    return c;
}

#ifdef BN_GUEST
int32_t bitnet_fault_register_points(const bitnet_fault_point_t *pts,
                                     int32_t n, int32_t *first_id)
{
    (void)pts; (void)n;
    if (first_id)
        *first_id = -1;
    /* a guest's point indexes are the host engine's: ids made here would
     * name other points there */
    return bn_error(BITNET_E_UNSUPPORTED,
                    "this library does not keep a fault registry of its "
                    "own: register points with the register_points of the "
                    "host table it was attached with (bitnet_host.h)");
}
#else
int32_t bitnet_fault_register_points(const bitnet_fault_point_t *pts,
                                     int32_t n, int32_t *first_id)
{
    if (first_id)
        *first_id = -1;
    if (!pts || !first_id || n < 1 || n > BITNET_FAULT_MAX_DYNAMIC)
        return bn_error(BITNET_E_INVALID_ARG,
                        "bitnet_fault_register_points: %s",
                        !pts ? "pts is NULL" : !first_id ? "first_id is NULL"
                        : "n is out of range 1..BITNET_FAULT_MAX_DYNAMIC");
    int rc;
    for (int i = 0; i < n; i++) {
        if ((rc = check_new(&pts[i], i)))
            return rc;
        for (int j = 0; j < i; j++)
            if (strcmp(pts[j].name, pts[i].name) == 0)
                return bn_error(BITNET_E_INVALID_ARG,
                                "registering fault points: '%s' is listed "
                                "twice (points %d and %d)",
                                pts[i].name, j, i);
    }
    pthread_mutex_lock(&dynamic.lock);
    int have = atomic_load_explicit(&dynamic.n, memory_order_relaxed);
    int32_t at = find(pts[0].name, have);
    if (at >= 0 && at < BN_FP__N) {
        rc = bn_error(BITNET_E_INVALID_ARG,
                      "registering fault point '%s': the bridge's own point "
                      "(points.def) has that name; a registered point needs "
                      "a name of its own",
                      pts[0].name);
        goto out;
    }
    if (at >= 0) {
        /* Idempotent: the same names in the same order (a library attached
         * again, or a second copy of it) get the ids they got before. */
        for (int i = 0; i < n; i++)
            if (at + i >= BN_FP__N + have ||
                strcmp(dynamic.points[at - BN_FP__N + i].name, pts[i].name)) {
                rc = bn_error(BITNET_E_INVALID_ARG,
                              "registering fault points: '%s' is already "
                              "registered, but not followed by the same "
                              "%d names as before (point %d, '%s', differs): "
                              "a set of points is registered once, whole",
                              pts[0].name, (int)n, i, pts[i].name);
                goto out;
            }
        *first_id = at;
        rc = BITNET_OK;
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int32_t other = find(pts[i].name, have);
        if (other >= 0) {
            rc = bn_error(BITNET_E_INVALID_ARG,
                          "registering fault point '%s': %s has that name "
                          "already; a registered point needs a name of its "
                          "own",
                          pts[i].name,
                          other < BN_FP__N ? "the bridge's own point "
                                             "(points.def)"
                                           : "a point registered before");
            goto out;
        }
    }
    if (n > BITNET_FAULT_MAX_DYNAMIC - have) {
        rc = bn_error(BITNET_E_INVALID_ARG,
                      "registering %d fault points ('%s', ...): %d of the "
                      "%d registered points are taken (the registry's limit, "
                      "BITNET_FAULT_MAX_DYNAMIC)",
                      (int)n, pts[0].name, have, BITNET_FAULT_MAX_DYNAMIC);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        bitnet_fault_point_t *d = &dynamic.points[have + i];
        char *name = copy(pts[i].name);
        char *desc = copy(pts[i].description ? pts[i].description : "");
        if (!name || !desc) {
            free(name);
            free(desc);
            for (int j = 0; j < i; j++) {
                free((char *)dynamic.points[have + j].name);
                free((char *)dynamic.points[have + j].description);
            }
            rc = bn_error(BITNET_E_OOM, "registering fault points: out of "
                                        "memory");
            goto out;
        }
        d->name = name;
        d->description = desc;
        d->default_code = pts[i].default_code;
        /* every point counts hits: off is always accepted */
        d->actions = pts[i].actions | (1u << BITNET_FAULT_OFF);
    }
    atomic_store_explicit(&dynamic.n, have + n, memory_order_release);
    *first_id = BN_FP__N + have;
    rc = BITNET_OK;
out:
    pthread_mutex_unlock(&dynamic.lock);
    return rc;
}
#endif

uint64_t bn_fault_registry_hash(void)
{
    /* FNV-1a over points.def only; the names alone decide, since index ->
     * name is all a guest and a host must agree on (actions and codes are
     * checked by the engine that arms, against its own registry).
     * Registered points are not in it: their ids come from the host's
     * register_points, so they agree by construction. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < BN_FP__N; i++)
        for (const char *c = bn_fault_registry[i].name;; c++) {
            /* the terminator becomes the '\n' joining this name to the next */
            h = (h ^ (unsigned char)(*c ? *c : '\n')) * 0x100000001b3ull;
            if (!*c)
                break;
        }
    return h;
}

static const char *point_name(int point)
{
    const bitnet_fault_point_t *p = bn_fault_point_def(point);
    return p ? p->name : "?";
}

int bn_fault_refuse_locked(int point)
{
    return bn_error(BITNET_E_INTERNAL,
                    "fault point '%s' reached while this thread holds a "
                    "bridge lock: its action is refused (a delay or hang "
                    "there would stall every call waiting for the lock, a "
                    "firing callback would run under it); a point inside a "
                    "locked region is a bug in the bridge, please report it",
                    point_name(point));
}

#ifdef BN_LOCK_CHECKS
void bn_fault_check_unlocked(int point)
{
    if (BN_LIKELY(!bn_locks_held()))
        return;
    fprintf(stderr,
            "bitnet: fault point '%s' reached while this thread holds a "
            "bridge lock (BN_LOCK_CHECKS): a point inside a locked region "
            "is a bug in the bridge; aborting\n",
            point_name(point));
    fflush(stderr);
    abort();
}
#endif

int bn_fault_done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK)
        bn_error_copy(err, err_len);
    return rc;
}
