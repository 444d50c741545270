/*
 * bn_fault.h — what code under test includes to place fault points.
 *
 * A point is reached with
 *
 *     int rc = BN_FAULT(TOKENIZE_FILL);      // 0, or a code to return
 *     if (rc)
 *         return rc;                          // the error is already recorded
 *
 * which is 0 when nothing fires.  When something fires, the engine has
 * already performed the generic action: fail / oom record an error
 * ("injected fault at 'tokenize.fill' (fail(-4), hit 3): ...") and return
 * its code; delay sleeps (0 when the time is up, BITNET_E_TIMEOUT when the
 * caller's deadline passed or it was cancelled meanwhile); hang sleeps
 * until the deadline or cancellation; crash aborts.
 *
 * Points whose entry in points.def accepts missing, nan or grow are placed
 * with the variant that hands those back:
 *
 *     bn_fault_special fs;
 *     int rc = BN_FAULT_SPECIAL(EVAL_LOGITS, &fs);
 *     if (rc < 0) return rc;                  // a generic action fired
 *     if (rc > 0) { ... fs.action == BITNET_FAULT_NAN: poison ...; }
 *
 * and points chosen at run time with
 *
 *     BN_FAULT_AT(point_id, &fs)
 *
 * where point_id is a BN_FP_<ID> taken from a table (the loader's symbol
 * table holds each symbol's BN_FP_DLSYM_<symbol>, so every symbol has its
 * point by construction); the id expression is evaluated only while
 * something is armed.
 *
 * Cost.  Disarmed, a point is one relaxed load of a global and a
 * predictable branch.  While some other point is armed, it adds a call and
 * one relaxed load of this point's own slot: no lock, no shared write.
 * Built with BN_NO_FAULTS every macro is the constant 0.
 *
 * Locks.  No point may be placed where the thread holds a bridge lock
 * (bn_lock.h): an armed point reached there performs nothing and returns
 * BITNET_E_INTERNAL naming it (a delay under the handle registry's lock
 * would stall every call of the process).
 *
 * Three builds of the same points:
 *
 *   engine  (default)      the registry, arming and counting live here:
 *                          the bridge (_bridge).
 *   guest   (BN_GUEST)     a library a bridge loads (the standalone
 *                          libbitnet): it owns no engine; its points forward
 *                          to the loading bridge's engine through the table
 *                          of bitnet_host.h (fault_armed / fault_eval), and
 *                          are inert until attached.  The disarmed cost is
 *                          the same one relaxed load, through a pointer set
 *                          at attach (to a local zero before).
 *   none    (BN_NO_FAULTS) every point is the constant 0.
 *
 * Boundary points.  The bridge places points around every backend call
 * (init_context, tokenize.fill, dlsym.*, ...).  A guest library contains a
 * copy of that bridge code, and when it runs inside a loading bridge the
 * same call has already passed the loader's copy of the point: firing it
 * again would double every hit count.  Files of the bridge layer define
 * BN_FAULT_BOUNDARY before including this header; in a guest build their
 * points are the constant 0.
 */
#ifndef BN_FAULT_H
#define BN_FAULT_H

#include <stdatomic.h>
#include <stdint.h>

#include "bitnet_fault.h"
#include "bn_error.h"

#define BN_FA(a) (1u << BITNET_FAULT_##a)
#define BN_FA_GENERIC                                                         \
    (BN_FA(OFF) | BN_FA(FAIL) | BN_FA(OOM) | BN_FA(DELAY) | BN_FA(HANG) |     \
     BN_FA(CRASH))

/* Point ids: BN_FP_<ID> for every entry of points.def. */
typedef enum {
#define BN_FAULT_POINT(id, name, code, actions, desc) BN_FP_##id,
#include "points.def"
#undef BN_FAULT_POINT
    BN_FP__N
} bn_fault_point;

/* A point-specific action handed back to the code at the point. */
typedef struct {
    int action;   /* BITNET_FAULT_MISSING, _NAN or _GROW */
    int64_t arg;  /* the term's argument (grow: at least 1) */
    uint64_t hit; /* hit number at the point */
} bn_fault_special;

#if defined(__GNUC__)
#define BN_FAULT_HIDDEN __attribute__((visibility("hidden")))
#else
#define BN_FAULT_HIDDEN
#endif

/* Which build this is (see the top of this file).  Each file of
 * native/fault that belongs to one build says so with these. */
#if !defined(BN_NO_FAULTS) && !defined(BN_GUEST)
#define BN_FAULT_ENGINE 1 /* the registry's engine is compiled here */
#endif
#if defined(BN_GUEST) && !defined(BN_NO_FAULTS)
#define BN_FAULT_FORWARD 1 /* points forward to the loading bridge's engine */
#endif
#if defined(BN_NO_FAULTS) || (defined(BN_GUEST) && defined(BN_FAULT_BOUNDARY))
#define BN_FAULT_INERT 1 /* the points of this file are the constant 0 */
#endif

#ifndef BN_FAULT_INERT

#ifdef BN_FAULT_ENGINE
/* Number of armed points: the one thing a disarmed point reads. */
extern atomic_int bn_fault_armed_points BN_FAULT_HIDDEN;
#define BN_FAULT_ARMED_COUNTER (&bn_fault_armed_points)
#else
/* Guest: the loading bridge's counter once attached, a local zero before. */
extern _Atomic(const atomic_int *) bn_fault_armed_ref BN_FAULT_HIDDEN;
#define BN_FAULT_ARMED_COUNTER                                                \
    atomic_load_explicit(&bn_fault_armed_ref, memory_order_relaxed)
#endif

/* The slow path: 0 = nothing fired (or a delay ran out), < 0 = a generic
 * action fired (error recorded), > 0 = a point-specific action, described
 * in *special (a site passing NULL gets a recorded BITNET_E_INTERNAL
 * instead: arming refuses that, so it means a misplaced point). */
int bn_fault_eval(int point, bn_fault_special *special) BN_FAULT_HIDDEN;

#define BN_FAULT_ANY_ARMED()                                                  \
    BN_UNLIKELY(atomic_load_explicit(BN_FAULT_ARMED_COUNTER,                  \
                                     memory_order_relaxed) != 0)

/* Checking builds (BN_LOCK_CHECKS: the sanitizer pass) also check every
 * BN_FAULT / BN_FAULT_SPECIAL point reached, armed or not, against the bridge locks the thread holds
 * (bn_lock.h), and abort naming the point: a point placed inside a locked
 * region then fails the first test that runs through it, not only a test
 * that arms it.  The default build does not pay for it. */
#ifdef BN_LOCK_CHECKS
void bn_fault_check_unlocked(int point) BN_FAULT_HIDDEN;
#define BN_FAULT_CHECK_(point) (bn_fault_check_unlocked(point), 0) ||
#else
#define BN_FAULT_CHECK_(point)
#endif

#define BN_FAULT(id)                                                          \
    (BN_FAULT_CHECK_(BN_FP_##id) BN_FAULT_ANY_ARMED()                         \
         ? bn_fault_eval(BN_FP_##id, NULL)                                    \
         : 0)
#define BN_FAULT_SPECIAL(id, sp)                                              \
    (BN_FAULT_CHECK_(BN_FP_##id) BN_FAULT_ANY_ARMED()                         \
         ? bn_fault_eval(BN_FP_##id, (sp))                                    \
         : 0)
#define BN_FAULT_AT(point_expr, sp)                                           \
    (BN_FAULT_ANY_ARMED() ? bn_fault_eval((point_expr), (sp)) : 0)

#else /* inert: every point is gone */

#define BN_FAULT_ANY_ARMED() 0
#define BN_FAULT(id) 0
#define BN_FAULT_SPECIAL(id, sp) ((void)(sp), 0)
#define BN_FAULT_AT(point_expr, sp) ((void)(sp), 0)

#endif

/* "injected fault at 'eval.logits' (nan, hit 1)": the calling thread's
 * last firing, for sites that write their own message around a
 * point-specific action.  "" when nothing fired on this thread. */
const char *bn_fault_note(void) BN_FAULT_HIDDEN;

#endif /* BN_FAULT_H */
