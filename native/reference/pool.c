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

struct bn_pool {
    int n_threads;            /* including the caller */
    pthread_t *threads;       /* n_threads - 1 workers */
    pthread_mutex_t lock;     /* guards sleeping and waking */
    pthread_cond_t wake;      /* workers wait here for a new generation */
    pthread_cond_t idle;      /* the caller waits here for active == 0 */
    atomic_uint_fast64_t generation; /* bumped once per job */
    atomic_int stop;          /* set by bn_pool_free */
    /* the current job; written before generation is bumped */
    bn_task_fn fn;
    void *arg;
    int64_t n_items, grain;
    atomic_int_fast64_t next; /* next unclaimed item */
    atomic_int active;        /* workers still inside the current job */
};

static void work(bn_pool *p)
{
    for (;;) {
        int64_t i0 = atomic_fetch_add(&p->next, p->grain);
        if (i0 >= p->n_items)
            return;
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
        work(p);
        if (atomic_fetch_sub(&p->active, 1) == 1) {
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
    bn_pool *p = bn_calloc(1, sizeof *p, "thread pool");
    if (!p)
        return BITNET_E_OOM;
    p->n_threads = 1;
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
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->n_threads - 1; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->idle);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    bn_free(p->threads);
    bn_free(p);
}

int bn_pool_threads(const bn_pool *p) { return p ? p->n_threads : 1; }

void bn_pool_run(bn_pool *p, bn_task_fn fn, void *arg, int64_t n_items,
                 int64_t grain)
{
    if (grain < 1)
        grain = 1;
    if (!p || p->n_threads == 1 || n_items <= grain) {
        fn(arg, 0, n_items);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_items = n_items;
    p->grain = grain;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n_threads - 1);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add(&p->generation, 1); /* publishes the job */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    work(p);
    int spins = 0;
    while (atomic_load(&p->active) > 0) {
        if (++spins < SPIN_ROUNDS) {
            CPU_RELAX();
            continue;
        }
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->active) > 0)
            pthread_cond_wait(&p->idle, &p->lock);
        pthread_mutex_unlock(&p->lock);
    }
}
