/*
 * bn_lock.h — the mutexes that calls of the bridge wait for, taken through
 * helpers that count, per thread, how many of them it holds.
 *
 * Why count.  Every call validates its handle under the handle registry's
 * lock, so whatever runs while that lock is held stalls every other call
 * of the process, whatever its deadline: a slow allocation, a log sink, an
 * injected delay.  The rule is that nothing that may sleep, call back or
 * fire a fault point runs under such a lock; the count makes the rule
 * checkable where it matters: the fault engine refuses a point reached
 * while bn_locks_held() > 0 (bn_fault.h), so a point placed inside a locked
 * region shows up as a BITNET_E_INTERNAL in the first test that arms it,
 * instead of as a stall that only a timing measurement would notice.
 *
 * Locks of the bridge that other calls wait for go through these (the
 * handle registry); locks private to one subsystem that never wait for
 * each other may stay plain pthread mutexes.
 */
#ifndef BN_LOCK_H
#define BN_LOCK_H

#include <pthread.h>

void bn_lock(pthread_mutex_t *m);
void bn_unlock(pthread_mutex_t *m);

/* How many bn_lock'ed mutexes the calling thread holds now. */
int bn_locks_held(void);

#endif
