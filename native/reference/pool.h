/*
 * pool.h — a fixed set of worker threads owned by one context.
 *
 * bn_pool_run splits [0, n_items) into chunks of `grain` items that the
 * caller and the workers take in turn, and returns when all are done.  The
 * threads are created with the context and joined when it is freed: no
 * thread per call, none left behind.  Workers spin briefly for the next job
 * (dispatch in about a microsecond during a forward pass), then sleep on a
 * condition variable, so an idle context costs no CPU.
 *
 * The caller waits only for chunks a worker is already computing (a worker
 * that has not woken yet finds the job taken), so a run is never held up
 * by a thread that is not running.  In a fork()ed child, where the workers
 * do not exist, every job runs on the calling thread and bn_pool_threads
 * says 1; bn_pool_free there frees without joining.
 */
#ifndef BN_POOL_H
#define BN_POOL_H

#include <stdint.h>

typedef struct bn_pool bn_pool;
typedef void (*bn_task_fn)(void *arg, int64_t i0, int64_t i1);
/* Asked by the calling thread before each chunk it takes: non-zero stops
 * the job (a deadline, a cancel). */
typedef int (*bn_pool_stop_fn)(void *user);

/* n_threads counts the caller: 1 creates no thread.  BITNET_E_OOM or
 * BITNET_E_INTERNAL (thread creation refused) on failure. */
int bn_pool_new(int n_threads, bn_pool **out);
void bn_pool_free(bn_pool *p); /* NULL-safe; joins every worker */
int bn_pool_threads(const bn_pool *p);
/* Runs fn over [0, n_items) in chunks of `grain` (the calling thread with
 * the workers, or alone).  stop, if not NULL, is asked before each chunk
 * the calling thread takes; when it returns non-zero no further chunk is
 * started (a worker finishes the one it holds) and bn_pool_run returns
 * that code, some items not run.  BITNET_OK when every item ran. */
int bn_pool_run(bn_pool *p, bn_task_fn fn, void *arg, int64_t n_items,
                int64_t grain, bn_pool_stop_fn stop, void *stop_user);

/* Threads to use when nothing says otherwise: BITNET_NUM_THREADS if set
 * (1..64), else the online CPUs, at most 8. */
int bn_pool_default_threads(void);

#endif
