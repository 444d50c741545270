/*
 * bn_deadline.h — deadlines and cancellation for native operations.
 *
 * The bridge sets the calling thread's current deadline on entry to every
 * operation (bn_deadline_enter) and clears it on the way out, so code deep
 * inside (load steps, per-layer steps, a `delay`/`hang` fault, an
 * allocator) can check it without a parameter threaded through every call.
 * A deadline also carries the context's cancel flag, which another thread
 * may set at any time.
 *
 * No thread is created per call: waiting (bn_deadline_sleep) happens on the
 * calling thread and wakes at the deadline, on cancellation, or when the
 * requested time is up, whichever is first.
 */
#ifndef BN_DEADLINE_H
#define BN_DEADLINE_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct {
    int64_t at_ns;          /* CLOCK_MONOTONIC ns; 0 = no deadline */
    atomic_int *cancel;     /* non-zero = cancelled; may be NULL */
    const char *operation;  /* for messages: "evaluate", "load", ... */
} bn_deadline;

/* CLOCK_MONOTONIC now, in ns. */
int64_t bn_now_ns(void);

/* Makes d the calling thread's current deadline; returns the previous one
 * (restore it with bn_deadline_leave, so nested operations compose). */
const bn_deadline *bn_deadline_enter(const bn_deadline *d);
void bn_deadline_leave(const bn_deadline *previous);
const bn_deadline *bn_deadline_current(void); /* NULL when none */

/* BITNET_OK, or BITNET_E_TIMEOUT (with a message naming the operation and
 * how far past the deadline it is, or that it was cancelled) for the
 * current deadline.  Cheap: one thread-local load when there is none. */
int bn_deadline_check(void);

/* Sleeps up to ms milliseconds (ms < 0: until the deadline or
 * cancellation — a hang), waking every few ms to check.  Returns
 * BITNET_OK when the time is up, BITNET_E_TIMEOUT when the deadline passed
 * or the operation was cancelled, BITNET_E_INTERNAL for a hang with
 * neither a deadline nor a cancel flag (refused: it could never end). */
int bn_deadline_sleep(int64_t ms);

#endif
