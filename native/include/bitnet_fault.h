/*
 * bitnet_fault.h — the fault-injection control ABI: what tests (through a
 * harness over it) use to arm, observe and disarm the fault points compiled
 * into the bridge.  Code under test includes native/fault/bn_fault.h
 * instead; the points themselves are listed in native/include/points.def.
 *
 * Model.  A point is a named place in the native code.  Arming a point
 * gives it a chain of terms (the compiled form of one `point=term->term`
 * entry of the spec grammar of the harness).  Each time an
 * in-scope thread reaches an armed point is a *hit*; the hit walks the
 * chain and takes the first term that applies:
 *
 *   - a term with a count applies while it has been taken fewer than
 *     `count` times;
 *   - a term with probability p < 1 applies when the hit's draw succeeds;
 *     the draw is a hash of (seed, point name, hit number, term index), so
 *     a seed reproduces a run whatever the thread interleaving;
 *   - a hit that takes no term, or takes an `off` term, does nothing.
 *
 * A hit that performs anything but `off` is a *firing*.  Hits and firings
 * are counted per point from the moment it is armed; they stay readable
 * after disarming, until the point is armed again.
 *
 * Limits (BITNET_FAULT_MAX_* below): BITNET_FAULT_MAX_TERMS terms per
 * entry, patterns shorter than BITNET_FAULT_MAX_NAME bytes, counts up to
 * 2^32 - 1, delays up to one hour, grow up to 2^20.
 *
 * Threads.  Arming and disarming may run while other threads hit points:
 * a point's chain is published with one atomic store and freed only after
 * every thread inside its hit has left.  A point armed with
 * BITNET_FAULT_THIS_THREAD only sees hits of the thread that armed it
 * (worker threads it starts are other threads).
 *
 * Compile-out.  A build with BN_NO_FAULTS (pip: BITNET_FAULTS=0) has no
 * points in the code; the registry below is still readable, and
 * bitnet_fault_compiled_in() returns 0, bitnet_fault_arm returns
 * BITNET_E_UNSUPPORTED saying so.
 */
#ifndef BITNET_FAULT_H
#define BITNET_FAULT_H

#include <stdint.h>

#include "bitnet.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Limits of arming, checked by bitnet_fault_arm (and by anything that
 * validates a spec before it gets here: read them, do not copy them). */
#define BITNET_FAULT_MAX_TERMS 16          /* terms in one chain            */
#define BITNET_FAULT_MAX_NAME 128          /* pattern bytes, with the NUL   */
#define BITNET_FAULT_MAX_COUNT 4294967295u /* a term's count: 2^32 - 1      */
#define BITNET_FAULT_MAX_DELAY_MS 3600000  /* delay(ms): an hour; longer is
                                              a mistake, hang waits for the
                                              deadline                      */
#define BITNET_FAULT_MAX_GROW (1 << 20)    /* grow(n)                       */
#define BITNET_FAULT_MAX_DYNAMIC 512       /* points registered at run time */
/* bitnet_fault_arm flags */
#define BITNET_FAULT_THIS_THREAD 1

/* Actions.  fail, oom, delay, hang and crash are performed by the engine
 * wherever a point is placed; missing, nan and grow by the code at the
 * point (only points that declare them accept them). */
enum {
    BITNET_FAULT_OFF = 0,     /* nothing (a hit that only counts)            */
    BITNET_FAULT_FAIL = 1,    /* return arg, or the point's default code      */
    BITNET_FAULT_OOM = 2,     /* return BITNET_E_OOM                          */
    BITNET_FAULT_DELAY = 3,   /* sleep arg ms (wakes on deadline / cancel)    */
    BITNET_FAULT_HANG = 4,    /* sleep until the deadline or cancellation     */
    BITNET_FAULT_MISSING = 5, /* dlopen/dlsym: the library / symbol is absent */
    BITNET_FAULT_NAN = 6,     /* eval.logits: a logit becomes NaN             */
    BITNET_FAULT_GROW = 7,    /* *.fill: fill needs arg more than the query   */
    BITNET_FAULT_CRASH = 8,   /* abort()                                      */
    BITNET_FAULT_N_ACTIONS = 9
};

/* One term of a chain. */
typedef struct {
    double probability; /* in (0, 1]: chance the term applies to a hit      */
    uint64_t count;     /* times the term may be taken; 0 = no limit         */
    int32_t action;     /* BITNET_FAULT_*                                    */
    int64_t arg;        /* fail: code (0 = the point's default); delay: ms;
                           grow: how many more (0 = 1); otherwise 0          */
} bitnet_fault_term_t;

/* A registered point. */
typedef struct {
    const char *name;        /* "tokenize.fill"; the registry's storage      */
    const char *description; /* where it sits, what a failure there means   */
    int32_t default_code;    /* what `fail` returns without a code           */
    uint32_t actions;        /* bit (1 << BITNET_FAULT_x) per accepted action */
} bitnet_fault_point_t;

/* Counters of one point since it was last armed. */
typedef struct {
    uint64_t hits;            /* in-scope arrivals while armed              */
    uint64_t fired;           /* hits that performed an action but off      */
    uint64_t first_fired_hit; /* hit number of the first firing; 0: none    */
    int32_t armed;            /* 1 while armed                              */
    int32_t thread_scoped;    /* 1 if armed with BITNET_FAULT_THIS_THREAD   */
} bitnet_fault_stats_t;

/* What a firing reports to the callback. */
typedef struct {
    int32_t point;  /* registry index                                        */
    int32_t term;   /* index of the term taken in the chain                  */
    int32_t action; /* BITNET_FAULT_*                                        */
    int32_t code;   /* what the point returns: fail's code, BITNET_E_OOM, ... 0
                       for delay, point-specific actions and crash          */
    int64_t arg;    /* the term's argument                                   */
    uint64_t hit;   /* hit number at the point (1-based)                     */
    int32_t first;  /* 1 for the point's first firing since it was armed     */
} bitnet_fault_event_t;

/* Called on the firing thread, before the action is performed, with the
 * point's re-entry guard held: points reached from inside the callback do
 * not fire.  Must not arm or disarm. */
typedef void (*bitnet_fault_callback_t)(void *user,
                                        const bitnet_fault_event_t *event);

/* 1 when points are compiled in, 0 for a BN_NO_FAULTS build. */
BITNET_API int32_t bitnet_fault_compiled_in(void);

/* The registry: point_count entries, index 0..count-1: the points of
 * points.def first, then the registered ones in registration order.  The
 * count only grows (a registered point is never removed), so an index,
 * once valid, names the same point for the life of the process. */
BITNET_API int32_t bitnet_fault_point_count(void);
BITNET_API int bitnet_fault_point_info(int32_t index,
                                       bitnet_fault_point_t *out);
/* Index of an exact name, or -1. */
BITNET_API int32_t bitnet_fault_point_index(const char *name);

/* Registers pts[0..n) as points placed by code this registry did not
 * compile (an interposing library, say: it places them with the ids it gets
 * back, through the host table's fault_eval).  They get the consecutive
 * indexes *first_id .. *first_id + n - 1 and are from then on points like
 * those of points.def: listed, armed by name and by pattern, counted,
 * reported.  Each declares its accepted actions (off is always accepted)
 * and the error code `fail` returns without one; names and descriptions
 * are copied.  One difference: their sites run in an app's calls, not
 * inside a bridge call with its deadline, so delay and hang are handed
 * back to a site that evaluates with a special (fault_eval's > 0) for it
 * to wait under its own deadline; without one the engine sleeps as usual.
 *
 * Idempotent: the same names in the same order as a registration before
 * get the same ids (a library attached again).  All or nothing: refused
 * with BITNET_E_INVALID_ARG when a name clashes with a point of points.def
 * or another registered point, is listed twice, cannot be written in a spec
 * (empty, '*', '=', ';', '(', ')', white space, BITNET_FAULT_MAX_NAME
 * bytes or more), an action or the default code is unknown, or the
 * registry would exceed BITNET_FAULT_MAX_DYNAMIC registered points.
 * A guest library (BN_GUEST) refuses with BITNET_E_UNSUPPORTED: its points
 * are its host's, registered through the host table. */
BITNET_API int32_t bitnet_fault_register_points(const bitnet_fault_point_t *pts,
                                                int32_t n, int32_t *first_id);

/* Arms every registered point matching pattern (an exact name, a prefix
 * ending in '*', or "*") with the chain terms[0..n_terms).  All or nothing:
 * refused with BITNET_E_INVALID_ARG (message in err and the last error) if
 * the pattern matches no point (the message names the closest), a matched
 * point is already armed, a term is out of range, or a point does not
 * accept an action.  *out_armed (may be NULL) gets the number of points
 * armed.  A pattern arms each point with its own copy of the chain (own
 * counts, own hit numbers). */
BITNET_API int bitnet_fault_arm(const char *pattern,
                                const bitnet_fault_term_t *terms,
                                int32_t n_terms, uint64_t seed, int32_t flags,
                                int32_t *out_armed, char *err,
                                int32_t err_len);

/* Disarms every armed point matching pattern; BITNET_E_INVALID_ARG when
 * none is armed.  Waits for threads inside a hit of those points (never
 * for a sleeping delay/hang: they copied what they need). */
BITNET_API int bitnet_fault_disarm(const char *pattern, int32_t *out_disarmed,
                                   char *err, int32_t err_len);
/* Disarms everything; returns how many points were armed. */
BITNET_API int32_t bitnet_fault_disarm_all(void);

BITNET_API int bitnet_fault_stats(int32_t index, bitnet_fault_stats_t *out);

/* Native backtrace (one frame per line) captured at the point's first
 * firing since it was armed.  Two-pass: returns the full length (without
 * NUL); copies up to buf_len - 1 bytes.  0 when none was captured (no
 * firing yet, or no backtrace support on this platform). */
BITNET_API int32_t bitnet_fault_backtrace(int32_t index, char *buf,
                                          int32_t buf_len);

/* Installs the firing callback (NULL: none). */
BITNET_API void bitnet_fault_set_callback(bitnet_fault_callback_t fn,
                                          void *user);

/* ---- hits decided by another process (process isolation) ---------------
 *
 * An isolated session's library runs in a worker process, and the points
 * armed are its caller's: their hit counts, draws, firings and reports
 * must be the caller's.  The worker marks the caller's armed points as
 * decided remotely (bitnet_fault_set_remote); a hit on one calls `decide`
 * (on the hitting thread), which asks the caller; the caller's engine
 * decides that hit with bitnet_fault_decide as if it had happened on the
 * calling thread -- counting it, drawing, taking a term, reporting the
 * firing to its callback -- without performing the action, and the worker
 * performs what was decided (the same message, the same sleep under its
 * deadline, the same abort).  Points not marked stay disarmed in the
 * worker and cost what disarmed points cost. */

/* What a decided hit does (bitnet_fault_decide fills it). */
typedef struct {
    int32_t term;   /* index of the term taken                             */
    int32_t action; /* BITNET_FAULT_*                                      */
    int32_t code;   /* fail / oom: the code returned                       */
    int64_t arg;    /* the term's argument, defaults applied               */
    uint64_t hit;   /* hit number at the point in the deciding engine      */
    char text[40];  /* the term as messages write it: "fail(-4)"           */
} bitnet_fault_decision_t;

/* Decides one hit of `point` on this thread without performing it.
 * locked: the hitting thread holds a bridge lock (the hit counts, nothing
 * is taken: the hitting side refuses it, as bn_fault_eval does).  Returns
 * 0 when the hit is not in scope (not armed, another thread's chain),
 * 1 when it counted and nothing fires, 2 when it fires as *out says (the
 * callback has been told). */
BITNET_API int32_t bitnet_fault_decide(int32_t point, int32_t locked,
                                       bitnet_fault_decision_t *out);

/* Asks for a decision: returns what bitnet_fault_decide returned there
 * (0 when the other side cannot answer: nothing fires). */
typedef int32_t (*bitnet_fault_decider_t)(void *user, int32_t point,
                                          int32_t locked,
                                          bitnet_fault_decision_t *out);

/* The indexes of the points armed now, into out[0..cap) (out may be NULL
 * with cap 0); returns how many are armed (may exceed cap). */
BITNET_API int32_t bitnet_fault_armed_list(int32_t *out, int32_t cap);

/* Makes points[0..n) the points decided by `decide` (replacing the
 * previous set; n = 0 or decide NULL: none).  BITNET_E_INVALID_ARG for an
 * index out of range.  Call it between calls into the library: a hit
 * racing with the change may go either way. */
BITNET_API int bitnet_fault_set_remote(const int32_t *points, int32_t n,
                                       bitnet_fault_decider_t decide,
                                       void *user);

#ifdef __cplusplus
}
#endif
#endif /* BITNET_FAULT_H */
