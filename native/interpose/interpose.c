/*
 * interpose.c — the wrapped functions of the interposing libllama
 * (bitnet_interpose.h) and its attachment to a bridge's fault registry.
 *
 * Built per real libllama by fault_inject/interpose/build.py, against the
 * llama.h shipped beside it (params structs are passed by value and change
 * between releases), together with a generated assembly file holding one
 * trampoline per function the real library exports that is not wrapped
 * here (a `jmp *slot`), the slot table and the list of their names.  The
 * constructor below dlopens the real library by absolute path
 * (RTLD_NOW | RTLD_LOCAL: its symbols never enter the global scope, where
 * they would compete with ours) and fills every slot and every real_*
 * pointer from it.  This library does not link the real one (it shares its
 * SONAME: a DT_NEEDED on it would name ourselves).
 *
 * Re-entry.  The real library calls some of its exported functions itself
 * (llama_sampler_free of a chain frees the samplers in it; deprecated names
 * call the new ones) and, when this library is in the global scope, such
 * calls bind to our wrappers.  A thread-local depth counter makes a wrapper
 * reached from inside a real call a plain forward: no point, no counting
 * (libfiu's _fiu_called).
 *
 * Cost.  A wrapper on a hot path (llama_decode, llama_tokenize, ...) reads
 * one relaxed atomic (the host's armed-point count; a local zero before
 * attach) and branches; objects are counted on creation and free only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitnet_interpose.h"
#include "bn_fault.h" /* bn_fault_special: what fault_eval hands back */
#include "llama.h"

#ifndef IP_REAL_LIB
#error "build with -DIP_REAL_LIB=\"/absolute/path/of/the/real/libllama.so\""
#endif

#define IP_COMPONENT "interpose"
#define IP_LIKELY(x) __builtin_expect(!!(x), 1)
#define IP_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* ---- the table ------------------------------------------------------------ */

enum {
#define BN_INTERPOSE_POINT(fn, kind, actions, counter, desc) IP_##fn,
#define BN_INTERPOSE_WRAP(fn, why)
#include "llama_points.def"
#undef BN_INTERPOSE_POINT
#undef BN_INTERPOSE_WRAP
    IP__N
};

/* The real functions, typed from llama.h itself. */
#define BN_INTERPOSE_POINT(fn, kind, actions, counter, desc)                  \
    static __typeof__(&fn) real_##fn;
#define BN_INTERPOSE_WRAP(fn, why) static __typeof__(&fn) real_##fn;
#include "llama_points.def"
#undef BN_INTERPOSE_POINT
#undef BN_INTERPOSE_WRAP

/* What `fail` returns without a code (bitnet_fault_point_t.default_code):
 * only STATUS maps it further (llama_points.def); the others fail in
 * their function's own form whatever the code. */
#define IP_CODE_PTR BITNET_E_INFERENCE
#define IP_CODE_STATUS BITNET_E_INFERENCE
#define IP_CODE_SIZE BITNET_E_INFERENCE
#define IP_CODE_VALUE BITNET_E_INFERENCE
#define IP_CODE_BATCH BITNET_E_OOM
#define IP_CODE_FREE BITNET_E_INTERNAL

static const bitnet_fault_point_t ip_points[IP__N] = {
#define BN_INTERPOSE_POINT(fn, kind, actions, counter, desc)                  \
    {#fn, desc, IP_CODE_##kind, (actions)},
#define BN_INTERPOSE_WRAP(fn, why)
#include "llama_points.def"
#undef BN_INTERPOSE_POINT
#undef BN_INTERPOSE_WRAP
};

/* Generated (build.py): the trampolines' slots and names. */
extern void *bn_ip_slots[] __attribute__((visibility("hidden")));
extern const char bn_ip_names[] __attribute__((visibility("hidden")));
extern const int32_t bn_ip_n_slots __attribute__((visibility("hidden")));

/* ---- state ------------------------------------------------------------------ */

enum { C_llama_models, C_llama_contexts, C_llama_batches, C_llama_samplers,
       C_llama_adapters, C__N };
static const char *const counter_names[C__N] = {
    "llama_models", "llama_contexts", "llama_batches", "llama_samplers",
    "llama_adapters"};

typedef void (*ip_hook_fn)(void *user, const char *kind, const void *object,
                           int created);

static struct {
    void *real;                    /* dlopen handle of the real library    */
    char real_error[512];          /* why it could not be loaded, if so    */
    atomic_llong live[C__N];       /* live objects per counter             */
    _Atomic(ip_hook_fn) hook;      /* object hook (NULL: none)             */
    _Atomic(void *) hook_user;     /* its user pointer                     */
    _Atomic(const bitnet_host_t *) host; /* attached bridge, NULL before   */
    atomic_int first_id;           /* registry id of ip_points[0]; -1: no
                                      points (not attached, or declined)   */
    _Atomic(const atomic_int *) armed; /* host's armed count; never_armed  */
    atomic_llong timeout_ns;       /* deadline of a firing call; 0: none   */
    pthread_mutex_t lock;          /* the object lists below               */
} ip = {.first_id = -1, .lock = PTHREAD_MUTEX_INITIALIZER};

static const atomic_int never_armed;

/* Depth of real calls on this thread (see Re-entry above).  initial-exec:
 * no __tls_get_addr call on a wrapper's path. */
static __thread int ip_depth __attribute__((tls_model("initial-exec")));

#define IP_ARMED()                                                            \
    IP_UNLIKELY(atomic_load_explicit(                                         \
                    atomic_load_explicit(&ip.armed, memory_order_relaxed),    \
                    memory_order_relaxed) != 0)

/* Runs a real call with the re-entry depth raised. */
#define IP_REAL(expr) (ip_depth++, (expr))
#define IP_REAL_DONE() (ip_depth--)

/* ---- logging ------------------------------------------------------------------ */

static void ip_log(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ip_log(int level, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    const bitnet_host_t *h = atomic_load(&ip.host);
    if (h && h->log) {
        if (!h->log_threshold || level <= h->log_threshold())
            h->log(level, IP_COMPONENT, line);
    } else if (level == 0) {
        fprintf(stderr, "bitnet interpose: %s\n", line);
    }
}

/* ---- loading the real library ------------------------------------------------ */

/* A slot whose symbol the real library does not have (it changed since the
 * build: the cache key includes its size and mtime, so only a file replaced
 * under a running process gets here). */
static void ip_unresolved(void)
{
    fprintf(stderr, "bitnet interpose: a function of %s was called that the "
                    "library no longer exports; rebuild the interposer "
                    "(delete its cache directory)\n", IP_REAL_LIB);
    abort();
}

__attribute__((constructor)) static void ip_load(void)
{
    atomic_store(&ip.armed, &never_armed);
    ip.real = dlopen(IP_REAL_LIB, RTLD_NOW | RTLD_LOCAL);
    if (!ip.real) {
        snprintf(ip.real_error, sizeof ip.real_error, "%s", dlerror());
        fprintf(stderr, "bitnet interpose: cannot load the real libllama "
                        "%s: %s\n", IP_REAL_LIB, ip.real_error);
    }
    const char *name = bn_ip_names;
    for (int32_t i = 0; i < bn_ip_n_slots; i++, name += strlen(name) + 1) {
        void *p = ip.real ? dlsym(ip.real, name) : NULL;
        bn_ip_slots[i] = p ? p : (void *)ip_unresolved;
    }
#define BN_INTERPOSE_POINT(fn, kind, actions, counter, desc)                  \
    real_##fn = ip.real ? (__typeof__(real_##fn))dlsym(ip.real, #fn) : NULL;  \
    if (!real_##fn)                                                           \
        real_##fn = (__typeof__(real_##fn))(void *)ip_unresolved;
#define BN_INTERPOSE_WRAP(fn, why) BN_INTERPOSE_POINT(fn, , , , )
#include "llama_points.def"
#undef BN_INTERPOSE_POINT
#undef BN_INTERPOSE_WRAP
}

/* ---- counters and the object hook -------------------------------------------- */

static void ip_note(int counter, const void *object, int created)
{
    if (!object)
        return;
    ip_hook_fn hook = atomic_load_explicit(&ip.hook, memory_order_acquire);
    if (!created && hook)
        hook(atomic_load(&ip.hook_user), counter_names[counter], object, 0);
    atomic_fetch_add(&ip.live[counter], created ? 1 : -1);
    if (created && hook)
        hook(atomic_load(&ip.hook_user), counter_names[counter], object, 1);
}

/* Objects whose end is decided elsewhere: a context's record (its abort
 * callback chain) and a LoRA adapter (freed with its model unless freed
 * first).  Few, made and freed rarely: a list under a lock. */
typedef struct ip_obj {
    const void *object;
    const void *owner;           /* adapter: its model                      */
    ggml_abort_callback user_cb; /* context: the caller's abort callback    */
    void *user_data;
    atomic_int plan;             /* context: what the next poll performs     */
    int64_t until_ns;            /* delay: when it ends                      */
    int64_t deadline_ns;         /* the call's deadline; 0: none             */
    int aborted;                 /* the plan aborted the decode              */
    struct ip_obj *next;
} ip_obj;

static ip_obj *ip_contexts, *ip_adapters;

static void ip_obj_add(ip_obj **list, ip_obj *o)
{
    pthread_mutex_lock(&ip.lock);
    o->next = *list;
    *list = o;
    pthread_mutex_unlock(&ip.lock);
}

static ip_obj *ip_obj_find(ip_obj **list, const void *object)
{
    pthread_mutex_lock(&ip.lock);
    ip_obj *o = *list;
    while (o && o->object != object)
        o = o->next;
    pthread_mutex_unlock(&ip.lock);
    return o;
}

static ip_obj *ip_obj_take(ip_obj **list, const void *object)
{
    pthread_mutex_lock(&ip.lock);
    ip_obj **pp = list;
    while (*pp && (*pp)->object != object)
        pp = &(*pp)->next;
    ip_obj *o = *pp;
    if (o)
        *pp = o->next;
    pthread_mutex_unlock(&ip.lock);
    return o;
}

/* ---- deadlines ---------------------------------------------------------------- */

static int64_t ip_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleeps until `until` (INT64_MAX: a hang) or the deadline (0: none),
 * whichever is first.  0 = the time was up, 1 = the deadline passed. */
static int ip_sleep_until(int64_t until, int64_t deadline)
{
    for (;;) {
        int64_t now = ip_now_ns();
        if (deadline && now >= deadline)
            return 1;
        if (now >= until)
            return 0;
        int64_t end = until;
        if (deadline && deadline < end)
            end = deadline;
        int64_t step = end - now;
        if (step > 10000000LL) /* 10 ms: stay responsive to nothing else,
                                  but never oversleep a deadline */
            step = 10000000LL;
        struct timespec ts = {step / 1000000000LL, step % 1000000000LL};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
            ;
    }
}

/* ---- evaluating a point --------------------------------------------------------- */

/* What a wrapper does after its point was evaluated. */
typedef enum {
    IP_GO = 0, /* call the real function                                 */
    IP_FAIL,   /* fail in the function's own terms (o->code)             */
    IP_GROW,   /* report a short buffer, o->grow more than the capacity  */
    IP_ABORT,  /* the deadline passed in a delay / hang                  */
    IP_PLAN,   /* llama_decode / llama_encode: delay or hang inside the
                  abort callback (o->plan, o->until_ns, o->deadline_ns)  */
} ip_verdict;

typedef struct {
    int code;
    int64_t grow;
    int plan;
    int64_t until_ns, deadline_ns;
} ip_outcome;

enum { PLAN_NONE, PLAN_DELAY, PLAN_HANG, PLAN_ABORT };

/* The slow path: only while something is armed in the attached bridge.
 * `deferred`: the caller performs delay / hang itself (decode, encode). */
static ip_verdict ip_check(int id, ip_outcome *o, int deferred)
{
    memset(o, 0, sizeof *o);
    const bitnet_host_t *h = atomic_load_explicit(&ip.host,
                                                  memory_order_acquire);
    int32_t first = atomic_load_explicit(&ip.first_id, memory_order_relaxed);
    if (!h || first < 0 || ip_depth)
        return IP_GO;
    bn_fault_special sp = {0};
    ip_depth++; /* whatever the engine calls must not re-enter a point */
    int rc = h->fault_eval(first + id, &sp);
    ip_depth--;
    if (rc == 0)
        return IP_GO;
    if (rc < 0) {
        /* fail / oom (error recorded by the engine), or a delay / hang the
         * engine performed that ended at the bridge's deadline */
        o->code = rc;
        return rc == BITNET_E_TIMEOUT ? IP_ABORT : IP_FAIL;
    }
    switch (sp.action) {
    case BITNET_FAULT_GROW:
        o->grow = sp.arg > 0 ? sp.arg : 1;
        return IP_GROW;
    case BITNET_FAULT_DELAY:
    case BITNET_FAULT_HANG: {
        /* handed back for the site to perform: under our own deadline */
        int64_t now = ip_now_ns();
        int64_t timeout = atomic_load(&ip.timeout_ns);
        o->deadline_ns = timeout > 0 ? now + timeout : 0;
        if (sp.action == BITNET_FAULT_HANG && !o->deadline_ns) {
            ip_log(0, "refusing to hang in %s with no deadline: it could "
                      "never end; set a timeout for interposed calls "
                      "(bitnet_interpose_set_timeout_ns); failing the call "
                      "instead", ip_points[id].name);
            o->code = BITNET_E_INTERNAL;
            return IP_FAIL;
        }
        o->until_ns = sp.action == BITNET_FAULT_HANG
                          ? INT64_MAX
                          : now + sp.arg * 1000000LL;
        o->plan = sp.action == BITNET_FAULT_HANG ? PLAN_HANG : PLAN_DELAY;
        if (deferred)
            return IP_PLAN;
        return ip_sleep_until(o->until_ns, o->deadline_ns) ? IP_ABORT : IP_GO;
    }
    default: /* an action this point did not declare: arming refuses it */
        return IP_GO;
    }
}

/* A pointer result: any verdict but GO is NULL. */
#define IP_CHECK_PTR(id)                                                      \
    do {                                                                      \
        if (IP_ARMED()) {                                                     \
            ip_outcome o_;                                                    \
            if (ip_check(IP_##id, &o_, 0) != IP_GO)                           \
                return NULL;                                                  \
        }                                                                     \
    } while (0)

/* ---- attach ------------------------------------------------------------------- */

BITNET_API int bitnet_interpose_attach(const bitnet_host_t *host)
{
    if (!host || host->abi != BITNET_HOST_ABI ||
        (size_t)host->size < offsetof(bitnet_host_t, last_error) +
                                 sizeof host->last_error)
        return BITNET_E_ABI_MISMATCH;
    const bitnet_host_t *expected = NULL;
    if (!atomic_compare_exchange_strong(&ip.host, &expected, host)) {
        if (expected == host) /* the same bridge again answers as before */
            return atomic_load(&ip.first_id) >= 0 ? BITNET_OK
                                                  : BITNET_HOST_DECLINED_FAULTS;
        ip_log(0, "bitnet_interpose_attach: already attached to another "
                  "bridge in this process; an interposer serves one");
        return BITNET_E_INVALID_ARG;
    }
    /* register_points is appended to the table: an older bridge's table is
     * shorter, and then the points stay inert */
    int has_register =
        (size_t)host->size >= offsetof(bitnet_host_t, register_points) +
                                  sizeof host->register_points &&
        host->register_points && host->fault_eval && host->fault_armed;
    if (!has_register) {
        ip_log(1, "the bridge offers no runtime fault points (faults compiled "
                  "out, or an older bridge): the llama_* points stay inert");
        return BITNET_HOST_DECLINED_FAULTS;
    }
    int32_t first = -1;
    int rc = host->register_points(ip_points, IP__N, &first);
    if (rc != BITNET_OK || first < 0) {
        ip_log(0, "registering the llama_* fault points failed (%d): %s", rc,
               host->last_error ? host->last_error() : "");
        return BITNET_HOST_DECLINED_FAULTS;
    }
    atomic_store(&ip.first_id, first);
    /* last: from here a wrapper sees the host's armed count */
    atomic_store_explicit(&ip.armed, host->fault_armed, memory_order_release);
    return BITNET_OK;
}

BITNET_API int bitnet_interpose_counters(bitnet_interpose_counters_t *out)
{
    if (!out)
        return BITNET_E_INVALID_ARG;
    out->llama_models = atomic_load(&ip.live[C_llama_models]);
    out->llama_contexts = atomic_load(&ip.live[C_llama_contexts]);
    out->llama_batches = atomic_load(&ip.live[C_llama_batches]);
    out->llama_samplers = atomic_load(&ip.live[C_llama_samplers]);
    out->llama_adapters = atomic_load(&ip.live[C_llama_adapters]);
    return BITNET_OK;
}

BITNET_API void bitnet_interpose_set_object_hook(ip_hook_fn hook, void *user)
{
    atomic_store(&ip.hook_user, user);
    atomic_store_explicit(&ip.hook, hook, memory_order_release);
}

BITNET_API const char *bitnet_interpose_real_library(void)
{
    return IP_REAL_LIB;
}

BITNET_API void bitnet_interpose_set_timeout_ns(int64_t ns)
{
    atomic_store(&ip.timeout_ns, ns > 0 ? ns : 0);
}

/* ---- constructors with a pointer result ---------------------------------------- */

#define IP_CTOR(RET, fn, counter, PARAMS, ARGS)                               \
    RET fn PARAMS                                                             \
    {                                                                         \
        if (ip_depth)                                                         \
            return real_##fn ARGS;                                            \
        IP_CHECK_PTR(fn);                                                     \
        RET r_ = IP_REAL(real_##fn ARGS);                                     \
        IP_REAL_DONE();                                                       \
        ip_note(C_##counter, r_, 1);                                          \
        return r_;                                                            \
    }

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

IP_CTOR(struct llama_model *, llama_model_load_from_file, llama_models,
        (const char *path, struct llama_model_params params), (path, params))
IP_CTOR(struct llama_model *, llama_load_model_from_file, llama_models,
        (const char *path, struct llama_model_params params), (path, params))
IP_CTOR(struct llama_model *, llama_model_load_from_file_ptr, llama_models,
        (FILE *file, struct llama_model_params params), (file, params))
IP_CTOR(struct llama_model *, llama_model_init_from_user, llama_models,
        (struct gguf_context *metadata, llama_model_set_tensor_data_t set_tensor_data,
         void *set_tensor_data_ud, struct llama_model_params params),
        (metadata, set_tensor_data, set_tensor_data_ud, params))
IP_CTOR(struct llama_model *, llama_model_load_from_splits, llama_models,
        (const char **paths, size_t n, struct llama_model_params params),
        (paths, n, params))

IP_CTOR(struct llama_sampler *, llama_sampler_chain_init, llama_samplers,
        (struct llama_sampler_chain_params params), (params))
IP_CTOR(struct llama_sampler *, llama_sampler_init, llama_samplers,
        (struct llama_sampler_i *iface, llama_sampler_context_t ctx),
        (iface, ctx))
IP_CTOR(struct llama_sampler *, llama_sampler_clone, llama_samplers,
        (const struct llama_sampler *smpl), (smpl))
IP_CTOR(struct llama_sampler *, llama_sampler_init_greedy, llama_samplers,
        (void), ())
IP_CTOR(struct llama_sampler *, llama_sampler_init_dist, llama_samplers,
        (uint32_t seed), (seed))
IP_CTOR(struct llama_sampler *, llama_sampler_init_top_k, llama_samplers,
        (int32_t k), (k))
IP_CTOR(struct llama_sampler *, llama_sampler_init_top_p, llama_samplers,
        (float p, size_t min_keep), (p, min_keep))
IP_CTOR(struct llama_sampler *, llama_sampler_init_min_p, llama_samplers,
        (float p, size_t min_keep), (p, min_keep))
IP_CTOR(struct llama_sampler *, llama_sampler_init_typical, llama_samplers,
        (float p, size_t min_keep), (p, min_keep))
IP_CTOR(struct llama_sampler *, llama_sampler_init_temp, llama_samplers,
        (float t), (t))
IP_CTOR(struct llama_sampler *, llama_sampler_init_temp_ext, llama_samplers,
        (float t, float delta, float exponent), (t, delta, exponent))
IP_CTOR(struct llama_sampler *, llama_sampler_init_xtc, llama_samplers,
        (float p, float t, size_t min_keep, uint32_t seed),
        (p, t, min_keep, seed))
IP_CTOR(struct llama_sampler *, llama_sampler_init_top_n_sigma, llama_samplers,
        (float n), (n))
IP_CTOR(struct llama_sampler *, llama_sampler_init_mirostat, llama_samplers,
        (int32_t n_vocab, uint32_t seed, float tau, float eta, int32_t m),
        (n_vocab, seed, tau, eta, m))
IP_CTOR(struct llama_sampler *, llama_sampler_init_mirostat_v2, llama_samplers,
        (uint32_t seed, float tau, float eta), (seed, tau, eta))
IP_CTOR(struct llama_sampler *, llama_sampler_init_grammar, llama_samplers,
        (const struct llama_vocab *vocab, const char *grammar_str,
         const char *grammar_root),
        (vocab, grammar_str, grammar_root))
IP_CTOR(struct llama_sampler *, llama_sampler_init_grammar_lazy,
        llama_samplers,
        (const struct llama_vocab *vocab, const char *grammar_str,
         const char *grammar_root, const char **trigger_words,
         size_t num_trigger_words, const llama_token *trigger_tokens,
         size_t num_trigger_tokens),
        (vocab, grammar_str, grammar_root, trigger_words, num_trigger_words,
         trigger_tokens, num_trigger_tokens))
IP_CTOR(struct llama_sampler *, llama_sampler_init_grammar_lazy_patterns,
        llama_samplers,
        (const struct llama_vocab *vocab, const char *grammar_str,
         const char *grammar_root, const char **trigger_patterns,
         size_t num_trigger_patterns, const llama_token *trigger_tokens,
         size_t num_trigger_tokens),
        (vocab, grammar_str, grammar_root, trigger_patterns,
         num_trigger_patterns, trigger_tokens, num_trigger_tokens))
IP_CTOR(struct llama_sampler *, llama_sampler_init_penalties, llama_samplers,
        (int32_t n_vocab, int32_t penalty_last_n, float penalty_repeat,
         float penalty_freq, float penalty_present),
        (n_vocab, penalty_last_n, penalty_repeat, penalty_freq,
         penalty_present))
IP_CTOR(struct llama_sampler *, llama_sampler_init_dry, llama_samplers,
        (const struct llama_vocab *vocab, float dry_multiplier,
         float dry_base, int32_t dry_allowed_length,
         int32_t dry_penalty_last_n, const char **seq_breakers,
         size_t num_breakers),
        (vocab, dry_multiplier, dry_base, dry_allowed_length,
         dry_penalty_last_n, seq_breakers, num_breakers))
IP_CTOR(struct llama_sampler *, llama_sampler_init_adaptive_p, llama_samplers,
        (float target, float decay, uint32_t seed), (target, decay, seed))
IP_CTOR(struct llama_sampler *, llama_sampler_init_logit_bias, llama_samplers,
        (int32_t n_vocab, int32_t n_logit_bias,
         const llama_logit_bias *logit_bias),
        (n_vocab, n_logit_bias, logit_bias))
IP_CTOR(struct llama_sampler *, llama_sampler_init_infill, llama_samplers,
        (const struct llama_vocab *vocab), (vocab))

/* ---- frees -------------------------------------------------------------------- */

/* A free cannot fail: only the timing actions (and crash) apply, and a
 * delay that meets the deadline still frees (leaking would be worse). */
#define IP_CHECK_FREE(id)                                                     \
    do {                                                                      \
        if (IP_ARMED()) {                                                     \
            ip_outcome o_;                                                    \
            (void)ip_check(IP_##id, &o_, 0);                                  \
        }                                                                     \
    } while (0)

/* A model takes the LoRA adapters still attached to it with it. */
static void ip_model_freed(struct llama_model *model)
{
    ip_obj *o;
    for (;;) {
        pthread_mutex_lock(&ip.lock);
        ip_obj **pp = &ip_adapters;
        while (*pp && (*pp)->owner != model)
            pp = &(*pp)->next;
        o = *pp;
        if (o)
            *pp = o->next;
        pthread_mutex_unlock(&ip.lock);
        if (!o)
            break;
        ip_note(C_llama_adapters, o->object, 0);
        free(o);
    }
    ip_note(C_llama_models, model, 0);
}

void llama_model_free(struct llama_model *model)
{
    if (ip_depth) {
        real_llama_model_free(model);
        return;
    }
    IP_CHECK_FREE(llama_model_free);
    ip_model_freed(model);
    IP_REAL(real_llama_model_free(model));
    IP_REAL_DONE();
}

void llama_free_model(struct llama_model *model)
{
    if (ip_depth) {
        real_llama_free_model(model);
        return;
    }
    IP_CHECK_FREE(llama_free_model);
    ip_model_freed(model);
    IP_REAL(real_llama_free_model(model));
    IP_REAL_DONE();
}

void llama_sampler_free(struct llama_sampler *smpl)
{
    if (ip_depth) {
        real_llama_sampler_free(smpl);
        return;
    }
    IP_CHECK_FREE(llama_sampler_free);
    ip_note(C_llama_samplers, smpl, 0);
    IP_REAL(real_llama_sampler_free(smpl));
    IP_REAL_DONE();
}

void llama_sampler_chain_add(struct llama_sampler *chain,
                             struct llama_sampler *smpl)
{
    if (!ip_depth)
        ip_note(C_llama_samplers, smpl, 0); /* owned by the chain now */
    IP_REAL(real_llama_sampler_chain_add(chain, smpl));
    IP_REAL_DONE();
}

struct llama_sampler *llama_sampler_chain_remove(struct llama_sampler *chain,
                                                 int32_t i)
{
    int outer = !ip_depth;
    struct llama_sampler *r = IP_REAL(real_llama_sampler_chain_remove(chain, i));
    IP_REAL_DONE();
    if (outer)
        ip_note(C_llama_samplers, r, 1); /* the caller's again */
    return r;
}

/* ---- LoRA adapters ------------------------------------------------------------ */

static struct llama_adapter_lora *ip_adapter_made(struct llama_model *model,
                                                  struct llama_adapter_lora *a)
{
    if (!a)
        return a;
    ip_obj *o = calloc(1, sizeof *o);
    if (o) {
        o->object = a;
        o->owner = model;
        ip_obj_add(&ip_adapters, o);
    }
    ip_note(C_llama_adapters, a, 1);
    return a;
}

struct llama_adapter_lora *llama_adapter_lora_init(struct llama_model *model,
                                                   const char *path)
{
    if (ip_depth)
        return real_llama_adapter_lora_init(model, path);
    IP_CHECK_PTR(llama_adapter_lora_init);
    struct llama_adapter_lora *a =
        IP_REAL(real_llama_adapter_lora_init(model, path));
    IP_REAL_DONE();
    return ip_adapter_made(model, a);
}

struct llama_adapter_lora *
llama_adapter_lora_init_from_file_ptr(struct llama_model *model, FILE *file)
{
    if (ip_depth)
        return real_llama_adapter_lora_init_from_file_ptr(model, file);
    IP_CHECK_PTR(llama_adapter_lora_init_from_file_ptr);
    struct llama_adapter_lora *a =
        IP_REAL(real_llama_adapter_lora_init_from_file_ptr(model, file));
    IP_REAL_DONE();
    return ip_adapter_made(model, a);
}

void llama_adapter_lora_free(struct llama_adapter_lora *adapter)
{
    if (ip_depth) {
        real_llama_adapter_lora_free(adapter);
        return;
    }
    IP_CHECK_FREE(llama_adapter_lora_free);
    free(ip_obj_take(&ip_adapters, adapter));
    ip_note(C_llama_adapters, adapter, 0);
    IP_REAL(real_llama_adapter_lora_free(adapter));
    IP_REAL_DONE();
}

/* ---- contexts: the abort callback chain ---------------------------------------- */

/* Installed in every context made through us; llama.cpp polls it between
 * graph nodes on the decoding thread.  A plan set by llama_decode's
 * wrapper runs here on the first poll, so a delay is spent inside the
 * decode and a hang (or a deadline passed in a delay) ends it through
 * llama.cpp's own abort path (status 2). */
static bool ip_on_abort(void *data)
{
    ip_obj *r = data;
    if (IP_UNLIKELY(atomic_load_explicit(&r->plan, memory_order_relaxed))) {
        int plan = atomic_exchange(&r->plan, PLAN_NONE);
        if (plan == PLAN_ABORT ||
            ((plan == PLAN_DELAY || plan == PLAN_HANG) &&
             ip_sleep_until(r->until_ns, r->deadline_ns))) {
            r->aborted = 1;
            return true;
        }
    }
    return r->user_cb ? r->user_cb(r->user_data) : false;
}

static struct llama_context *ip_context_made(struct llama_context *ctx,
                                             ip_obj *r)
{
    if (!ctx) {
        free(r);
        return NULL;
    }
    if (r) {
        r->object = ctx;
        ip_obj_add(&ip_contexts, r);
    }
    ip_note(C_llama_contexts, ctx, 1);
    return ctx;
}

/* Our callback in front of the caller's (NULL when out of memory: the
 * context is made as asked, without the abort path for delay / hang). */
static ip_obj *ip_context_record(struct llama_context_params *params)
{
    ip_obj *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->user_cb = params->abort_callback;
    r->user_data = params->abort_callback_data;
    params->abort_callback = ip_on_abort;
    params->abort_callback_data = r;
    return r;
}

struct llama_context *llama_init_from_model(struct llama_model *model,
                                            struct llama_context_params params)
{
    if (ip_depth)
        return real_llama_init_from_model(model, params);
    IP_CHECK_PTR(llama_init_from_model);
    ip_obj *r = ip_context_record(&params);
    struct llama_context *ctx = IP_REAL(real_llama_init_from_model(model, params));
    IP_REAL_DONE();
    return ip_context_made(ctx, r);
}

struct llama_context *
llama_new_context_with_model(struct llama_model *model,
                             struct llama_context_params params)
{
    if (ip_depth)
        return real_llama_new_context_with_model(model, params);
    IP_CHECK_PTR(llama_new_context_with_model);
    ip_obj *r = ip_context_record(&params);
    struct llama_context *ctx =
        IP_REAL(real_llama_new_context_with_model(model, params));
    IP_REAL_DONE();
    return ip_context_made(ctx, r);
}

void llama_set_abort_callback(struct llama_context *ctx,
                              ggml_abort_callback cb, void *data)
{
    ip_obj *r = ip_depth ? NULL : ip_obj_find(&ip_contexts, ctx);
    if (!r) {
        real_llama_set_abort_callback(ctx, cb, data);
        return;
    }
    /* ours stays installed and calls this one (two plain stores, as
     * llama.cpp's own setter does: setting it while the context decodes on
     * another thread is as racy there) */
    r->user_cb = cb;
    r->user_data = data;
}

void llama_free(struct llama_context *ctx)
{
    if (ip_depth) {
        real_llama_free(ctx);
        return;
    }
    IP_CHECK_FREE(llama_free);
    ip_obj *r = ip_obj_take(&ip_contexts, ctx);
    ip_note(C_llama_contexts, ctx, 0);
    IP_REAL(real_llama_free(ctx));
    IP_REAL_DONE();
    free(r); /* after: the context may poll it until it is gone */
}

/* ---- decode / encode ----------------------------------------------------------- */

/* The bridge's code of a firing, in llama_decode's terms (llama_points.def). */
static int32_t ip_status_code(int code)
{
    switch (code) {
    case BITNET_E_OOM: return -2;              /* allocation failed  */
    case BITNET_E_INVALID_ARG: return -1;      /* invalid batch      */
    case BITNET_E_CONTEXT_OVERFLOW: return 1;  /* no KV slot         */
    case BITNET_E_TIMEOUT: return 2;           /* aborted            */
    default: return -3;                        /* compute failed     */
    }
}

static int32_t ip_run_status(int id,
                             int32_t (*real)(struct llama_context *,
                                             struct llama_batch),
                             struct llama_context *ctx,
                             struct llama_batch batch)
{
    ip_outcome o;
    ip_verdict v = ip_check(id, &o, 1);
    if (v == IP_GO)
        return real(ctx, batch);
    if (v == IP_FAIL)
        return ip_status_code(o.code);
    ip_obj *r = ip_obj_find(&ip_contexts, ctx);
    if (!r) {
        /* a context not made through us: no abort path to take */
        if (v == IP_PLAN && !ip_sleep_until(o.until_ns, o.deadline_ns))
            return real(ctx, batch);
        return 2;
    }
    r->until_ns = o.until_ns;
    r->deadline_ns = o.deadline_ns;
    r->aborted = 0;
    atomic_store(&r->plan, v == IP_ABORT ? PLAN_ABORT : o.plan);
    int32_t rc = real(ctx, batch);
    atomic_store(&r->plan, PLAN_NONE); /* a decode that never polled */
    return rc;
}

int32_t llama_decode(struct llama_context *ctx, struct llama_batch batch)
{
    if (IP_ARMED())
        return ip_run_status(IP_llama_decode, real_llama_decode, ctx, batch);
    return real_llama_decode(ctx, batch);
}

int32_t llama_encode(struct llama_context *ctx, struct llama_batch batch)
{
    if (IP_ARMED())
        return ip_run_status(IP_llama_encode, real_llama_encode, ctx, batch);
    return real_llama_encode(ctx, batch);
}

/* ---- batches ------------------------------------------------------------------ */

static const void *ip_batch_object(struct llama_batch b)
{
    return b.token ? (const void *)b.token : (const void *)b.embd;
}

struct llama_batch llama_batch_init(int32_t n_tokens, int32_t embd,
                                    int32_t n_seq_max)
{
    if (ip_depth)
        return real_llama_batch_init(n_tokens, embd, n_seq_max);
    if (IP_ARMED()) {
        ip_outcome o;
        if (ip_check(IP_llama_batch_init, &o, 0) != IP_GO) {
            struct llama_batch none;
            memset(&none, 0, sizeof none);
            return none;
        }
    }
    struct llama_batch b = IP_REAL(real_llama_batch_init(n_tokens, embd,
                                                         n_seq_max));
    IP_REAL_DONE();
    ip_note(C_llama_batches, ip_batch_object(b), 1);
    return b;
}

void llama_batch_free(struct llama_batch batch)
{
    if (ip_depth) {
        real_llama_batch_free(batch);
        return;
    }
    IP_CHECK_FREE(llama_batch_free);
    ip_note(C_llama_batches, ip_batch_object(batch), 0);
    IP_REAL(real_llama_batch_free(batch));
    IP_REAL_DONE();
}

/* ---- vocabulary and text -------------------------------------------------------- */

const struct llama_vocab *llama_model_get_vocab(const struct llama_model *model)
{
    if (IP_ARMED() && !ip_depth) {
        ip_outcome o;
        if (ip_check(IP_llama_model_get_vocab, &o, 0) != IP_GO)
            return NULL;
    }
    return real_llama_model_get_vocab(model);
}

int32_t llama_tokenize(const struct llama_vocab *vocab, const char *text,
                       int32_t text_len, llama_token *tokens,
                       int32_t n_tokens_max, bool add_special,
                       bool parse_special)
{
    if (IP_ARMED() && !ip_depth) {
        ip_outcome o;
        switch (ip_check(IP_llama_tokenize, &o, 0)) {
        case IP_GO: break;
        case IP_GROW: /* llama.cpp's short buffer: minus the count needed */
            return -(int32_t)((int64_t)n_tokens_max + o.grow > INT32_MAX
                                  ? INT32_MAX
                                  : n_tokens_max + o.grow);
        default: return INT32_MIN; /* its one failure value (overflow) */
        }
    }
    return real_llama_tokenize(vocab, text, text_len, tokens, n_tokens_max,
                               add_special, parse_special);
}

/* Minus (capacity + n): the short-buffer answer of token_to_piece and
 * detokenize, which then write nothing. */
static int32_t ip_short(int32_t capacity, int64_t grow)
{
    int64_t need = (int64_t)(capacity > 0 ? capacity : 0) + grow;
    return -(int32_t)(need > INT32_MAX ? INT32_MAX : need);
}

int32_t llama_token_to_piece(const struct llama_vocab *vocab,
                             llama_token token, char *buf, int32_t length,
                             int32_t lstrip, bool special)
{
    if (IP_ARMED() && !ip_depth) {
        ip_outcome o;
        ip_verdict v = ip_check(IP_llama_token_to_piece, &o, 0);
        if (v == IP_GROW)
            return ip_short(length, o.grow);
        if (v != IP_GO) /* a passed deadline: nothing fits in nothing */
            return ip_short(length, 1);
    }
    return real_llama_token_to_piece(vocab, token, buf, length, lstrip,
                                     special);
}

int32_t llama_detokenize(const struct llama_vocab *vocab,
                         const llama_token *tokens, int32_t n_tokens,
                         char *text, int32_t text_len_max,
                         bool remove_special, bool unparse_special)
{
    if (IP_ARMED() && !ip_depth) {
        ip_outcome o;
        ip_verdict v = ip_check(IP_llama_detokenize, &o, 0);
        if (v == IP_GROW)
            return ip_short(text_len_max, o.grow);
        if (v != IP_GO)
            return ip_short(text_len_max, 1);
    }
    return real_llama_detokenize(vocab, tokens, n_tokens, text, text_len_max,
                                 remove_special, unparse_special);
}

int32_t llama_chat_apply_template(const char *tmpl,
                                  const struct llama_chat_message *chat,
                                  size_t n_msg, bool add_ass, char *buf,
                                  int32_t length)
{
    if (IP_ARMED() && !ip_depth) {
        ip_outcome o;
        switch (ip_check(IP_llama_chat_apply_template, &o, 0)) {
        case IP_GO: break;
        case IP_GROW: /* the required size, more than the buffer */
            return (int64_t)(length > 0 ? length : 0) + o.grow > INT32_MAX
                       ? INT32_MAX
                       : (length > 0 ? length : 0) + (int32_t)o.grow;
        default: return -1; /* "template not supported" */
        }
    }
    return real_llama_chat_apply_template(tmpl, chat, n_msg, add_ass, buf,
                                          length);
}

/* The metadata getters: snprintf semantics.  fail: -1 and the buffer
 * cleared (their documented failure); grow(n): a length n bytes past what
 * fits (buf_size - 1 + n), the buffer holding "" as a truncation would
 * leave no complete value. */
static int ip_meta_check(int id, char *buf, size_t buf_size, int32_t *out)
{
    ip_outcome o;
    ip_verdict v = ip_check(id, &o, 0);
    if (v == IP_GO)
        return 0;
    if (buf && buf_size)
        buf[0] = '\0';
    if (v == IP_GROW) {
        int64_t n = (int64_t)(buf_size ? buf_size - 1 : 0) + o.grow;
        *out = n > INT32_MAX ? INT32_MAX : (int32_t)n;
    } else {
        *out = -1;
    }
    return 1;
}

#define IP_META(fn, PARAMS, ARGS)                                             \
    int32_t fn PARAMS                                                         \
    {                                                                         \
        int32_t r_;                                                           \
        if (IP_ARMED() && !ip_depth &&                                        \
            ip_meta_check(IP_##fn, buf, buf_size, &r_))                       \
            return r_;                                                        \
        return real_##fn ARGS;                                                \
    }

IP_META(llama_model_meta_val_str,
        (const struct llama_model *model, const char *key, char *buf,
         size_t buf_size),
        (model, key, buf, buf_size))
IP_META(llama_model_meta_key_by_index,
        (const struct llama_model *model, int32_t i, char *buf,
         size_t buf_size),
        (model, i, buf, buf_size))
IP_META(llama_model_meta_val_str_by_index,
        (const struct llama_model *model, int32_t i, char *buf,
         size_t buf_size),
        (model, i, buf, buf_size))
IP_META(llama_model_desc,
        (const struct llama_model *model, char *buf, size_t buf_size),
        (model, buf, buf_size))

/* ---- state save / load ---------------------------------------------------------- */

#define IP_VALUE(RET, fn, FAILED, PARAMS, ARGS)                               \
    RET fn PARAMS                                                             \
    {                                                                         \
        if (IP_ARMED() && !ip_depth) {                                        \
            ip_outcome o_;                                                    \
            if (ip_check(IP_##fn, &o_, 0) != IP_GO)                           \
                return FAILED;                                                \
        }                                                                     \
        return real_##fn ARGS;                                                \
    }

IP_VALUE(size_t, llama_state_get_data, 0,
         (struct llama_context *ctx, uint8_t *dst, size_t size),
         (ctx, dst, size))
IP_VALUE(size_t, llama_state_set_data, 0,
         (struct llama_context *ctx, const uint8_t *src, size_t size),
         (ctx, src, size))
IP_VALUE(bool, llama_state_load_file, false,
         (struct llama_context *ctx, const char *path, llama_token *tokens_out,
          size_t n_token_capacity, size_t *n_token_count_out),
         (ctx, path, tokens_out, n_token_capacity, n_token_count_out))
IP_VALUE(bool, llama_state_save_file, false,
         (struct llama_context *ctx, const char *path,
          const llama_token *tokens, size_t n_token_count),
         (ctx, path, tokens, n_token_count))
IP_VALUE(bool, llama_load_session_file, false,
         (struct llama_context *ctx, const char *path, llama_token *tokens_out,
          size_t n_token_capacity, size_t *n_token_count_out),
         (ctx, path, tokens_out, n_token_capacity, n_token_count_out))
IP_VALUE(bool, llama_save_session_file, false,
         (struct llama_context *ctx, const char *path,
          const llama_token *tokens, size_t n_token_count),
         (ctx, path, tokens, n_token_count))
IP_VALUE(size_t, llama_state_seq_get_data, 0,
         (struct llama_context *ctx, uint8_t *dst, size_t size,
          llama_seq_id seq_id),
         (ctx, dst, size, seq_id))
IP_VALUE(size_t, llama_state_seq_set_data, 0,
         (struct llama_context *ctx, const uint8_t *src, size_t size,
          llama_seq_id dest_seq_id),
         (ctx, src, size, dest_seq_id))
IP_VALUE(size_t, llama_state_seq_save_file, 0,
         (struct llama_context *ctx, const char *filepath,
          llama_seq_id seq_id, const llama_token *tokens,
          size_t n_token_count),
         (ctx, filepath, seq_id, tokens, n_token_count))
IP_VALUE(size_t, llama_state_seq_load_file, 0,
         (struct llama_context *ctx, const char *filepath,
          llama_seq_id dest_seq_id, llama_token *tokens_out,
          size_t n_token_capacity, size_t *n_token_count_out),
         (ctx, filepath, dest_seq_id, tokens_out, n_token_capacity,
          n_token_count_out))

#pragma GCC diagnostic pop
