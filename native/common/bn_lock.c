/* bn_lock.c — counted bridge locks.  See bn_lock.h. */
#include "bn_lock.h"

static _Thread_local int held; /* bn_lock'ed mutexes this thread holds */

void bn_lock(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    held++;
}

void bn_unlock(pthread_mutex_t *m)
{
    held--;
    pthread_mutex_unlock(m);
}

int bn_locks_held(void) { return held; }
