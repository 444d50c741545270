/* pool.c — worker threads for one context.  See pool.h. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "bn_alloc.h"
#include "bn_error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Spins before sleeping: long enough to bridge the gap between two matmuls
 * of one forward pass, short enough not to burn a core between calls. */
#define SPIN_ROUNDS 4000

/*
 * fork().  A child process has only the thread that forked: a pool's
 * workers are not there, and its mutex may have been copied while a worker
 * held it.  So a pool remembers the fork generation it started its workers
 * in; a child (where a pthread_atfork handler has bumped the generation)
 * runs every job on the calling thread, never touches the pool's locks,
 * and frees the pool without joining threads that do not exist there (nor
 * destroying condition variables their copies still count as waiting).
 */
static atomic_uint fork_generation;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void after_fork_in_child(void)
{
    atomic_fetch_add_explicit(&fork_generation, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, after_fork_in_child);
}

struct bn_pool {
    int n_threads;            /* including the caller */
    pthread_t *threads;       /* n_threads - 1 workers */
    unsigned forks;           /* fork_generation the workers were started in */
    pthread_mutex_t lock;     /* guards sleeping and waking */
    pthread_cond_t wake;      /* workers wait here for a new generation */
    pthread_cond_t idle;      /* the caller waits here for inside == 0 */
    atomic_uint_fast64_t generation; /* bumped once per job: wakes workers */
    atomic_int stop;          /* set by bn_pool_free */
    /* the current job: written while open == 0, read by a worker only
     * after it has seen open == 1 */
    bn_task_fn fn;
    void *arg;
    int64_t n_items, grain;
    atomic_int_fast64_t next; /* next unclaimed item */
    /* A worker joins a job by incrementing `inside`, then looking at `open`;
     * the caller closes the job (open = 0) once every item is claimed, then
     * waits for inside == 0.  Both sides are sequentially consistent, so a
     * worker either sees the job closed and leaves without touching it, or
     * is counted and waited for.  The caller therefore waits only for chunks
     * already being computed, never for a worker that has not woken up yet
     * (or, without the fork check, one that does not exist): the wait is
     * bounded by one chunk of work per worker. */
    atomic_int open;
    atomic_int inside;
};

/* The workers of p run in this process (not in a fork()ed child). */
static int owned(const bn_pool *p)
{
    return p->forks ==
           atomic_load_explicit(&fork_generation, memory_order_relaxed);
}

/* Takes chunks until none is left; the calling thread asks `stop` before
 * each (workers pass NULL) and, told to stop, claims every item left so
 * that no worker starts another chunk. */
static int work(bn_pool *p, bn_pool_stop_fn stop, void *stop_user)
{
    for (;;) {
        int rc = stop ? stop(stop_user) : 0;
        if (rc) {
            atomic_store(&p->next, p->n_items);
            return rc;
        }
        int64_t i0 = atomic_fetch_add(&p->next, p->grain);
        if (i0 >= p->n_items)
            return BITNET_OK;
        int64_t i1 = i0 + p->grain < p->n_items ? i0 + p->grain : p->n_items;
        p->fn(p->arg, i0, i1);
    }
}

static void *worker(void *arg)
{
    bn_pool *p = arg;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t gen;
        int spins = 0;
        while ((gen = atomic_load(&p->generation)) == seen &&
               !atomic_load(&p->stop)) {
            if (++spins < SPIN_ROUNDS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&p->lock);
            while (atomic_load(&p->generation) == seen &&
                   !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->lock);
            pthread_mutex_unlock(&p->lock);
        }
        if (atomic_load(&p->stop))
            return NULL;
        seen = gen;
        atomic_fetch_add(&p->inside, 1);
        if (atomic_load(&p->open))
            work(p, NULL, NULL); /* an open job: its fields are visible */
        if (atomic_fetch_sub(&p->inside, 1) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->idle);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

int bn_pool_default_threads(void)
{
    const char *env = getenv("BITNET_NUM_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 1 && v <= 64)
            return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

int bn_pool_new(int n_threads, bn_pool **out)
{
    *out = NULL;
    if (n_threads < 1)
        n_threads = 1;
    /* before the first worker exists, so no pool's workers can predate it */
    pthread_once(&atfork_once, register_atfork);
    bn_pool *p = bn_calloc(1, sizeof *p, "thread pool");
    if (!p)
        return BITNET_E_OOM;
    p->n_threads = 1;
    p->forks = atomic_load_explicit(&fork_generation, memory_order_relaxed);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    if (n_threads > 1) {
        p->threads = bn_calloc((size_t)n_threads - 1, sizeof(pthread_t),
                               "thread pool");
        if (!p->threads) {
            bn_pool_free(p);
            return BITNET_E_OOM;
        }
        for (int i = 0; i < n_threads - 1; i++) {
            if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
                bn_pool_free(p); /* joins the ones already started */
                return bn_error(BITNET_E_INTERNAL,
                                "could not start worker thread %d of %d; "
                                "set BITNET_NUM_THREADS=1 to run without "
                                "workers",
                                i + 1, n_threads - 1);
            }
            p->n_threads++;
        }
    }
    *out = p;
    return BITNET_OK;
}

void bn_pool_free(bn_pool *p)
{
    if (!p)
        return;
    if (owned(p)) {
        pthread_mutex_lock(&p->lock);
        atomic_store(&p->stop, 1);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
        for (int i = 0; i < p->n_threads - 1; i++)
            pthread_join(p->threads[i], NULL);
        pthread_cond_destroy(&p->idle);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
    }
    /* in a fork()ed child the workers are the parent's: nothing to join;
     * the synchronisation objects are left as they are (see the top) */
    bn_free(p->threads);
    bn_free(p);
}

int bn_pool_threads(const bn_pool *p)
{
    return p && owned(p) ? p->n_threads : 1;
}

int bn_pool_run(bn_pool *p, bn_task_fn fn, void *arg, int64_t n_items,
                int64_t grain, bn_pool_stop_fn stop, void *stop_user)
{
    if (grain < 1)
        grain = 1;
    if (!p || p->n_threads == 1 || n_items <= grain || !owned(p)) {
        for (int64_t i0 = 0; i0 < n_items; i0 += grain) {
            int rc = stop ? stop(stop_user) : 0;
            if (rc)
                return rc;
            fn(arg, i0, i0 + grain < n_items ? i0 + grain : n_items);
        }
        return BITNET_OK;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_items = n_items;
    p->grain = grain;
    atomic_store(&p->next, 0);
    atomic_store(&p->open, 1); /* publishes the job's fields */
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->generation, 1); /* wakes the workers */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    int rc = work(p, stop, stop_user);
    /* every item is claimed: no worker may join from here on, and the ones
     * inside finish the chunk they hold (see `open` above) */
    atomic_store(&p->open, 0);
    int spins = 0;
    while (atomic_load(&p->inside) > 0) {
        if (++spins < SPIN_ROUNDS) {
            CPU_RELAX();
            continue;
        }
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->inside) > 0)
            pthread_cond_wait(&p->idle, &p->lock);
        pthread_mutex_unlock(&p->lock);
    }
    return rc;
}
