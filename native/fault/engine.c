/*
 * engine.c — the fault engine: arming, triggers, hit counting, actions.
 * The default build only (BN_FAULT_ENGINE: neither BN_NO_FAULTS nor
 * BN_GUEST, see bn_fault.h); a guest forwards its points to the engine of
 * the bridge that loads it (guest.c), and the other builds answer the
 * control ABI from stubs.c.  API docs: bitnet_fault.h (control) and
 * bn_fault.h (placing points).
 *
 * Concurrency design.  A hit must never take a lock, and a point that is
 * not armed must not even write shared memory, so:
 *
 *   - bn_fault_armed_points counts armed points; disarmed code reads only
 *     that (relaxed: a hit racing with arm/disarm may go either way, which
 *     is what "arming while calls run" can promise anyway);
 *   - each point has its own cache line holding its chain pointer; an
 *     unrelated point reads its own NULL and returns;
 *   - an armed point's hit announces itself in `inside`, reads the chain,
 *     picks a term with atomics only, copies what the action needs and
 *     leaves; disarm swaps the pointer to NULL and waits for `inside` to
 *     drain before freeing.  Nothing sleeps, calls back or takes a lock
 *     while inside, so that wait is short and cannot deadlock.
 *
 * Points and the bridge's locks.  A delay or hang sleeps on the calling
 * thread, and the firing callback runs there: under a lock other calls
 * wait for (bn_lock.h) either would stall the whole process whatever the
 * other calls' deadlines.  So an armed, in-scope hit on a thread that holds
 * one counts as a hit and performs nothing: it returns the
 * BITNET_E_INTERNAL of bn_fault_refuse_locked.  Only armed hits pay the
 * check (one thread-local read on the slow path): disarmed points still
 * cost one predictable branch.
 *
 * The engine's own memory comes from plain malloc/free: it must not move
 * the live counters tests assert on, nor hit the `alloc` point.  A
 * thread-local guard makes points reached while a firing is being handled
 * (the firing callback, the backtrace, a fail message) pass through, so an
 * allocator hook cannot recurse.
 */
#include "bn_fault.h"

#ifdef BN_FAULT_ENGINE

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bn_deadline.h"
#include "bn_lock.h"
#include "fault_internal.h"

#if defined(__GLIBC__)
#include <execinfo.h>
#define HAVE_BACKTRACE 1
#endif


/* registry.c: the points' names, default codes, accepted actions, for
 * points.def and registered points alike (a registered point's entry is
 * published before its index can be armed, and never changes after). */
#define registry(i) (*bn_fault_point_def(i))

static const char *const action_names[BITNET_FAULT_N_ACTIONS] = {
    "off", "fail", "oom", "delay", "hang", "missing", "nan", "grow", "crash"};

/* Does point i match pattern: exact, "prefix*", or "*"? */
static int matches(const char *pattern, size_t len, int i)
{
    if (len > 0 && pattern[len - 1] == '*')
        return strncmp(registry(i).name, pattern, len - 1) == 0;
    return strcmp(registry(i).name, pattern) == 0;
}

/* ---- state --------------------------------------------------------------- */

typedef struct {
    int always;             /* probability 1: no draw */
    uint64_t threshold;     /* otherwise: applies when draw < threshold */
    uint64_t count;         /* times it may be taken; 0 = no limit */
    _Atomic uint64_t taken; /* times taken so far */
    int32_t action;         /* BITNET_FAULT_* */
    int32_t code;           /* fail / oom: the code returned */
    int64_t arg;            /* as in bitnet_fault_term_t, defaults applied */
    char text[40];          /* "fail(-4)", for messages */
} term;

typedef struct {
    uint64_t mix;    /* seed mixed with the point's name: the draw's key */
    uint64_t thread; /* arming thread's id; 0 = every thread */
    int n_terms;
    term terms[];
} chain;

/* One cache line per point: a hit on one point never writes a line that
 * another point reads. */
typedef struct {
    _Alignas(64) _Atomic(chain *) chain; /* NULL when disarmed */
    atomic_int inside;                   /* hits holding `chain` right now */
    atomic_int thread_scoped;            /* armed with THIS_THREAD */
    _Atomic uint64_t hits;               /* since armed */
    _Atomic uint64_t fired;              /* since armed */
    _Atomic uint64_t first_fired_hit;    /* 0 until the first firing */
    _Atomic uint64_t generation;         /* bumped per arm, under lock */
    char *backtrace;                     /* first firing's; under lock */
    atomic_int remote;                   /* hits decided by another process
                                            (bitnet_fault_set_remote) */
} point_state;

atomic_int bn_fault_armed_points; /* see bn_fault.h */

static struct {
    pthread_mutex_t lock;          /* arm, disarm, backtraces */
    point_state points[BN_FAULT_CAPACITY]; /* by index: points.def, then
                                              registered points */
    _Atomic(bitnet_fault_callback_t) callback; /* firing observer or NULL */
    _Atomic(void *) callback_user;             /* its argument */
    _Atomic(bitnet_fault_decider_t) decider;   /* remote points' decider */
    _Atomic(void *) decider_user;              /* its argument */
    _Atomic uint64_t next_thread_id;           /* thread ids start at 1 */
} engine = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local struct {
    uint64_t id;     /* 0 until first needed */
    int busy;        /* handling a hit: nested points pass through */
    char note[192];  /* the last firing, for bn_fault_note() */
} tl;

static uint64_t thread_id(void)
{
    if (!tl.id)
        tl.id = atomic_fetch_add(&engine.next_thread_id, 1) + 1;
    return tl.id;
}

static uint64_t splitmix(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint64_t name_hash(const char *s) /* FNV-1a */
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

/* Does term i of c apply to this hit?  Takes it (counts) if so. */
static int take(term *t, uint64_t mix, uint64_t hit, int i)
{
    if (t->count && atomic_load_explicit(&t->taken, memory_order_relaxed) >=
                        t->count)
        return 0;
    if (!t->always &&
        splitmix(mix ^ splitmix(hit * 0x100 + (uint64_t)i)) >= t->threshold)
        return 0;
    if (!t->count)
        return 1;
    uint64_t n = atomic_load(&t->taken);
    while (n < t->count)
        if (atomic_compare_exchange_weak(&t->taken, &n, n + 1))
            return 1;
    return 0; /* other threads used the last ones meanwhile */
}

/* Exists so a debugger can break on the first firing of any point. */
__attribute__((noinline)) void bn_fault_first_firing(int point)
{
    __asm__ volatile("" ::"r"(point) : "memory");
}

static void capture_backtrace(int point, uint64_t generation)
{
#ifdef HAVE_BACKTRACE
    void *frames[48];
    int n = backtrace(frames, 48);
    char **names = backtrace_symbols(frames, n);
    if (!names)
        return;
    size_t len = 1;
    for (int i = 2; i < n; i++) /* skip this function and fire() */
        len += strlen(names[i]) + 1;
    char *text = malloc(len);
    if (text) {
        text[0] = '\0';
        char *p = text;
        for (int i = 2; i < n; i++) {
            size_t l = strlen(names[i]);
            memcpy(p, names[i], l);
            p[l] = '\n';
            p += l + 1;
            *p = '\0';
        }
        pthread_mutex_lock(&engine.lock);
        point_state *ps = &engine.points[point];
        if (ps->generation == generation && !ps->backtrace) {
            ps->backtrace = text;
            text = NULL;
        }
        pthread_mutex_unlock(&engine.lock);
        free(text);
    }
    free(names);
#else
    (void)point;
    (void)generation;
#endif
}

typedef struct {
    int32_t term, action, code;
    int64_t arg;
    uint64_t hit, generation;
    int first;
    int locked; /* reached under a bridge lock: refused, nothing taken */
    char text[40];
} firing;

/* The note of a firing (bn_fault_note), and, where the hit was decided
 * (observe), its first-firing backtrace and its report to the callback. */
static void announce(int point, const firing *f, int observe)
{
    snprintf(tl.note, sizeof tl.note, "injected fault at '%s' (%s, hit %llu)",
             registry(point).name, f->text, (unsigned long long)f->hit);
    if (!observe)
        return; /* decided, counted and reported by another process */
    if (f->first) {
        capture_backtrace(point, f->generation);
        bn_fault_first_firing(point);
    }
    bitnet_fault_callback_t cb = atomic_load(&engine.callback);
    if (cb) {
        bitnet_fault_event_t ev = {point, f->term, f->action, f->code,
                                   f->arg, f->hit, f->first};
        cb(atomic_load(&engine.callback_user), &ev);
    }
}

/* Performs a firing; called outside the `inside` window, guard held. */
static int fire(int point, const firing *f, bn_fault_special *special,
                int observe)
{
    announce(point, f, observe);
    int rc;
    switch (f->action) {
    case BITNET_FAULT_FAIL:
        return bn_error(f->code,
                        "%s: this failure was requested by a fault-injection "
                        "spec; disarm the point to stop it",
                        tl.note);
    case BITNET_FAULT_OOM:
        return bn_error(BITNET_E_OOM,
                        "%s: out of memory simulated by a fault-injection "
                        "spec; disarm the point to stop it",
                        tl.note);
    case BITNET_FAULT_DELAY:
    case BITNET_FAULT_HANG:
        /* A runtime-registered point's site (the interposing libllama) is
         * called by an app, not inside a bridge call, so the calling thread
         * has no bridge deadline to sleep under: the site performs the wait
         * itself, under its own deadline (and inside llama_decode through
         * llama.cpp's abort callback, so the real abort path runs), when it
         * can take the action back. */
        if (special && point >= BN_FP__N) {
            special->action = f->action;
            special->arg = f->arg;
            special->hit = f->hit;
            return 1;
        }
        rc = bn_deadline_sleep(f->action == BITNET_FAULT_DELAY ? f->arg : -1);
        if (rc)
            bn_error_prefix("%s: ", tl.note);
        return rc;
    case BITNET_FAULT_CRASH:
        fprintf(stderr, "bitnet: %s: aborting the process, as the "
                        "fault-injection spec asks\n", tl.note);
        fflush(stderr);
        abort();
    default: /* missing, nan, grow: the site performs them */
        if (special) {
            special->action = f->action;
            special->arg = f->arg;
            special->hit = f->hit;
            return 1;
        }
        return bn_error(BITNET_E_INTERNAL,
                        "%s: this site cannot perform '%s' (placed with "
                        "BN_FAULT, not BN_FAULT_SPECIAL): a bug in the "
                        "bridge, please report it",
                        tl.note, action_names[f->action]);
    }
}

/* Counts a hit of ps on this thread against its chain and picks the term
 * that applies (f->term stays -1: none; f->hit stays 0: not in scope).
 * Inside the `inside` window; shared by local hits (bn_fault_eval) and
 * hits another process asks about (bitnet_fault_decide). */
static void take_hit(point_state *ps, firing *f, int locked)
{
    chain *c = atomic_load(&ps->chain);
    if (c && (!c->thread || c->thread == thread_id())) {
        f->hit = atomic_fetch_add(&ps->hits, 1) + 1;
        f->locked = locked;
        for (int i = 0; i < c->n_terms && !f->locked; i++) {
            term *t = &c->terms[i];
            if (!take(t, c->mix, f->hit, i))
                continue;
            f->term = i;
            f->action = t->action;
            f->code = t->code;
            f->arg = t->arg;
            memcpy(f->text, t->text, sizeof f->text);
            break;
        }
        if (f->term >= 0 && f->action != BITNET_FAULT_OFF) {
            f->first = atomic_fetch_add(&ps->fired, 1) == 0;
            if (f->first)
                atomic_store(&ps->first_fired_hit, f->hit);
        }
    }
    /* generation is written under the lock only while chain is NULL and
     * inside is 0, so this read is stable */
    f->generation = ps->generation;
}

static int ask_remote(int point, bn_fault_special *special);

int bn_fault_eval(int point, bn_fault_special *special)
{
    /* the capacity, not the registered count: a slot of an index not
     * registered yet holds a NULL chain, which the next check reads */
    if ((unsigned)point >= (unsigned)BN_FAULT_CAPACITY)
        return 0;
    point_state *ps = &engine.points[point];
    /* the per-point check, before anything that costs (a point decided
     * by another process is disarmed here: one more load, same line) */
    if (!atomic_load_explicit(&ps->chain, memory_order_relaxed)) {
        if (BN_UNLIKELY(atomic_load_explicit(&ps->remote, memory_order_relaxed)))
            return ask_remote(point, special);
        return 0;
    }
    if (tl.busy)
        return 0;
    tl.busy = 1;
    firing f = {.term = -1};
    atomic_fetch_add(&ps->inside, 1);
    take_hit(ps, &f, bn_locks_held() > 0);
    atomic_fetch_sub(&ps->inside, 1);
    int rc = 0;
    if (f.locked)
        rc = bn_fault_refuse_locked(point);
    else if (f.term >= 0 && f.action != BITNET_FAULT_OFF)
        rc = fire(point, &f, special, 1);
    tl.busy = 0;
    return rc;
}

/* ---- hits decided by another process (bitnet_fault.h) --------------------- */

/* A hit of a remote point: the decider asks the process whose engine the
 * point is armed in, then this one performs what it decided. */
static int ask_remote(int point, bn_fault_special *special)
{
    if (tl.busy)
        return 0;
    bitnet_fault_decider_t decide = atomic_load(&engine.decider);
    if (!decide)
        return 0;
    tl.busy = 1;
    int locked = bn_locks_held() > 0;
    bitnet_fault_decision_t d;
    memset(&d, 0, sizeof d);
    int32_t how = decide(atomic_load(&engine.decider_user), point, locked, &d);
    int rc = 0;
    if (how >= 1 && locked)
        rc = bn_fault_refuse_locked(point);
    else if (how == 2) {
        firing f = {.term = d.term, .action = d.action, .code = d.code,
                    .arg = d.arg, .hit = d.hit};
        memcpy(f.text, d.text, sizeof f.text);
        f.text[sizeof f.text - 1] = '\0';
        rc = fire(point, &f, special, 0);
    }
    tl.busy = 0;
    return rc;
}

int32_t bitnet_fault_decide(int32_t point, int32_t locked,
                            bitnet_fault_decision_t *out)
{
    if (point < 0 || point >= bitnet_fault_point_count() || !out)
        return 0;
    point_state *ps = &engine.points[point];
    if (!atomic_load(&ps->chain) || tl.busy)
        return 0;
    tl.busy = 1;
    firing f = {.term = -1};
    atomic_fetch_add(&ps->inside, 1);
    take_hit(ps, &f, locked != 0);
    atomic_fetch_sub(&ps->inside, 1);
    int32_t how = f.hit ? 1 : 0;
    if (!f.locked && f.term >= 0 && f.action != BITNET_FAULT_OFF) {
        announce(point, &f, 1);
        out->term = f.term;
        out->action = f.action;
        out->code = f.code;
        out->arg = f.arg;
        out->hit = f.hit;
        memcpy(out->text, f.text, sizeof out->text);
        how = 2;
    }
    tl.busy = 0;
    return how;
}

int32_t bitnet_fault_armed_list(int32_t *out, int32_t cap)
{
    if (!atomic_load_explicit(&bn_fault_armed_points, memory_order_relaxed))
        return 0; /* the common case, every call: nothing armed */
    int32_t n = 0, n_points = bitnet_fault_point_count();
    for (int p = 0; p < n_points; p++)
        if (atomic_load(&engine.points[p].chain)) {
            if (out && n < cap)
                out[n] = p;
            n++;
        }
    return n;
}

int bitnet_fault_set_remote(const int32_t *points, int32_t n,
                            bitnet_fault_decider_t decide, void *user)
{
    int n_points = bitnet_fault_point_count();
    for (int32_t i = 0; i < n; i++)
        if (!points || points[i] < 0 || points[i] >= n_points)
            return bn_error(BITNET_E_INVALID_ARG,
                            "bitnet_fault_set_remote: point index %d is not "
                            "registered here (%d points): both processes must "
                            "run the same build",
                            points ? (int)points[i] : -1, n_points);
    pthread_mutex_lock(&engine.lock);
    for (int p = 0; p < n_points; p++)
        if (atomic_exchange(&engine.points[p].remote, 0))
            atomic_fetch_sub(&bn_fault_armed_points, 1);
    atomic_store(&engine.decider_user, user);
    atomic_store(&engine.decider, decide);
    for (int32_t i = 0; decide && i < n; i++)
        if (!atomic_exchange(&engine.points[points[i]].remote, 1))
            atomic_fetch_add(&bn_fault_armed_points, 1);
    pthread_mutex_unlock(&engine.lock);
    return BITNET_OK;
}

const char *bn_fault_note(void) { return tl.note; }

/* ---- control ------------------------------------------------------------- */

int32_t bitnet_fault_compiled_in(void) { return 1; }

static int check_term(const bitnet_fault_term_t *t, int i)
{
    if (!(t->probability > 0.0 && t->probability <= 1.0))
        return bn_error(BITNET_E_INVALID_ARG,
                        "term %d: probability %g is out of range: expected "
                        "more than 0 and at most 1 (0%% never fires: use "
                        "off)",
                        i + 1, t->probability);
    if (t->count > BITNET_FAULT_MAX_COUNT)
        return bn_error(BITNET_E_INVALID_ARG,
                        "term %d: count %llu is too large: expected at most "
                        "%u (0 = no limit)",
                        i + 1, (unsigned long long)t->count,
                        BITNET_FAULT_MAX_COUNT);
    if (t->action < 0 || t->action >= BITNET_FAULT_N_ACTIONS)
        return bn_error(BITNET_E_INVALID_ARG,
                        "term %d: unknown action %d: expected 0..%d "
                        "(BITNET_FAULT_*)",
                        i + 1, (int)t->action, BITNET_FAULT_N_ACTIONS - 1);
    const char *an = action_names[t->action];
    switch (t->action) {
    case BITNET_FAULT_FAIL:
        if (t->arg != 0 && (t->arg < BITNET_E_MIN || t->arg > -1))
            return bn_error(BITNET_E_INVALID_ARG,
                            "term %d: fail(%lld): not an error code; expected "
                            "%d..-1 (a BITNET_E_* code) or none for the "
                            "point's default",
                            i + 1, (long long)t->arg, BITNET_E_MIN);
        break;
    case BITNET_FAULT_DELAY:
        if (t->arg < 0 || t->arg > BITNET_FAULT_MAX_DELAY_MS)
            return bn_error(BITNET_E_INVALID_ARG,
                            "term %d: delay(%lld): expected 0..%lld ms (use "
                            "hang to wait for the deadline)",
                            i + 1, (long long)t->arg,
                            (long long)BITNET_FAULT_MAX_DELAY_MS);
        break;
    case BITNET_FAULT_GROW:
        if (t->arg < 0 || t->arg > BITNET_FAULT_MAX_GROW)
            return bn_error(BITNET_E_INVALID_ARG,
                            "term %d: grow(%lld): expected 1..%lld",
                            i + 1, (long long)t->arg,
                            (long long)BITNET_FAULT_MAX_GROW);
        break;
    default:
        if (t->arg != 0)
            return bn_error(BITNET_E_INVALID_ARG,
                            "term %d: '%s' takes no argument (got %lld)",
                            i + 1, an, (long long)t->arg);
    }
    return BITNET_OK;
}

static void term_text(const bitnet_fault_term_t *t, term *out, int point)
{
    out->action = t->action;
    out->arg = t->arg;
    out->code = 0;
    if (t->action == BITNET_FAULT_FAIL)
        out->code = out->arg ? (int32_t)out->arg : registry(point).default_code;
    if (t->action == BITNET_FAULT_OOM)
        out->code = BITNET_E_OOM;
    if (t->action == BITNET_FAULT_GROW && out->arg == 0)
        out->arg = 1;
    const char *an = action_names[t->action];
    if (t->action == BITNET_FAULT_FAIL)
        snprintf(out->text, sizeof out->text, "fail(%d)", (int)out->code);
    else if (t->action == BITNET_FAULT_DELAY || t->action == BITNET_FAULT_GROW)
        snprintf(out->text, sizeof out->text, "%s(%lld)", an,
                 (long long)out->arg);
    else
        snprintf(out->text, sizeof out->text, "%s", an);
}

int bitnet_fault_arm(const char *pattern, const bitnet_fault_term_t *terms,
                     int32_t n_terms, uint64_t seed, int32_t flags,
                     int32_t *out_armed, char *err, int32_t err_len)
{
    if (out_armed)
        *out_armed = 0;
    if (!pattern || !*pattern)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "fault point pattern is %s: name a point "
                             "(bitnet_fault_point_info lists every point)",
                             pattern ? "empty" : "NULL"),
                    err, err_len);
    size_t len = strlen(pattern);
    if (len >= BITNET_FAULT_MAX_NAME)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "fault point pattern is %zu bytes long: the "
                             "limit is %d",
                             len, BITNET_FAULT_MAX_NAME - 1),
                    err, err_len);
    if (!terms || n_terms < 1 || n_terms > BITNET_FAULT_MAX_TERMS)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "'%s': %d terms: a chain has 1..%d terms", pattern,
                             (int)n_terms, BITNET_FAULT_MAX_TERMS),
                    err, err_len);
    if (flags & ~BITNET_FAULT_THIS_THREAD)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "'%s': unknown flags 0x%x (known: "
                             "BITNET_FAULT_THIS_THREAD)",
                             pattern, (unsigned)flags),
                    err, err_len);
    int rc;
    for (int i = 0; i < n_terms; i++)
        if ((rc = check_term(&terms[i], i))) {
            bn_error_prefix("arming '%s': ", pattern);
            return bn_fault_done(rc, err, err_len);
        }

    /* every point registered by now; one registered meanwhile is not in
     * this arming (as if registered after it) */
    int n_points = bitnet_fault_point_count();
    chain **made = calloc((size_t)n_points, sizeof *made);
    if (!made)
        return bn_fault_done(bn_error(BITNET_E_OOM, "arming '%s': out of "
                                                    "memory", pattern),
                             err, err_len);
    int n_made = 0;
    pthread_mutex_lock(&engine.lock);
    for (int p = 0; p < n_points; p++) {
        if (!matches(pattern, len, p))
            continue;
        if (atomic_load(&engine.points[p].chain)) {
            rc = bn_error(BITNET_E_INVALID_ARG,
                          "fault point '%s' is already armed: disarm it "
                          "first (one chain per point; chain terms with "
                          "'->' instead)",
                          registry(p).name);
            goto fail;
        }
        for (int i = 0; i < n_terms; i++)
            if (!(registry(p).actions & (1u << terms[i].action))) {
                char ok[128] = "";
                for (int a = 0; a < BITNET_FAULT_N_ACTIONS; a++)
                    if (registry(p).actions & (1u << a)) {
                        size_t u = strlen(ok);
                        snprintf(ok + u, sizeof ok - u, "%s%s", u ? ", " : "",
                                 action_names[a]);
                    }
                rc = bn_error(BITNET_E_INVALID_ARG,
                              "fault point '%s' does not support '%s'; it "
                              "supports: %s",
                              registry(p).name, action_names[terms[i].action],
                              ok);
                goto fail;
            }
        chain *c = malloc(sizeof *c + (size_t)n_terms * sizeof(term));
        if (!c) {
            rc = bn_error(BITNET_E_OOM, "arming '%s': out of memory",
                          pattern);
            goto fail;
        }
        c->mix = splitmix(seed) ^ name_hash(registry(p).name);
        c->thread = (flags & BITNET_FAULT_THIS_THREAD) ? thread_id() : 0;
        c->n_terms = n_terms;
        for (int i = 0; i < n_terms; i++) {
            term *t = &c->terms[i];
            double pr = terms[i].probability;
            t->always = pr >= 1.0;
            t->threshold = t->always ? 0 : (uint64_t)ldexp(pr, 64);
            t->count = terms[i].count;
            atomic_init(&t->taken, 0);
            term_text(&terms[i], t, p);
        }
        made[p] = c;
        n_made++;
    }
    if (n_made == 0) {
        rc = bn_error(BITNET_E_INVALID_ARG,
                      "unknown fault point '%s': no registered point matches "
                      "it (bitnet_fault_point_info lists every point)",
                      pattern);
        goto fail;
    }
    for (int p = 0; p < n_points; p++) {
        if (!made[p])
            continue;
        point_state *ps = &engine.points[p];
        /* counters first: a hit that sees the chain sees them reset */
        atomic_store(&ps->hits, 0);
        atomic_store(&ps->fired, 0);
        atomic_store(&ps->first_fired_hit, 0);
        atomic_store(&ps->thread_scoped, (flags & BITNET_FAULT_THIS_THREAD) != 0);
        free(ps->backtrace);
        ps->backtrace = NULL;
        ps->generation++;
        atomic_store(&ps->chain, made[p]);
        atomic_fetch_add(&bn_fault_armed_points, 1);
    }
    pthread_mutex_unlock(&engine.lock);
    free(made);
    if (out_armed)
        *out_armed = n_made;
    return BITNET_OK;

fail:
    pthread_mutex_unlock(&engine.lock);
    for (int p = 0; p < n_points; p++)
        free(made[p]);
    free(made);
    return bn_fault_done(rc, err, err_len);
}

/* Caller holds the lock. */
static void disarm_point(int p)
{
    point_state *ps = &engine.points[p];
    chain *c = atomic_exchange(&ps->chain, NULL);
    if (!c)
        return;
    atomic_fetch_sub(&bn_fault_armed_points, 1);
    while (atomic_load(&ps->inside))
        sched_yield();
    free(c);
}

int bitnet_fault_disarm(const char *pattern, int32_t *out_disarmed, char *err,
                        int32_t err_len)
{
    if (out_disarmed)
        *out_disarmed = 0;
    if (!pattern || !*pattern)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "fault point pattern is %s",
                             pattern ? "empty" : "NULL"),
                    err, err_len);
    size_t len = strlen(pattern);
    int n = 0, n_points = bitnet_fault_point_count();
    pthread_mutex_lock(&engine.lock);
    for (int p = 0; p < n_points; p++)
        if (matches(pattern, len, p) && atomic_load(&engine.points[p].chain)) {
            disarm_point(p);
            n++;
        }
    pthread_mutex_unlock(&engine.lock);
    if (out_disarmed)
        *out_disarmed = n;
    if (n == 0)
        return bn_fault_done(bn_error(BITNET_E_INVALID_ARG,
                             "nothing to disarm: no armed fault point "
                             "matches '%s'",
                             pattern),
                    err, err_len);
    return BITNET_OK;
}

int32_t bitnet_fault_disarm_all(void)
{
    int n = 0, n_points = bitnet_fault_point_count();
    pthread_mutex_lock(&engine.lock);
    for (int p = 0; p < n_points; p++)
        if (atomic_load(&engine.points[p].chain)) {
            disarm_point(p);
            n++;
        }
    pthread_mutex_unlock(&engine.lock);
    return n;
}

int bitnet_fault_stats(int32_t index, bitnet_fault_stats_t *out)
{
    if (!out || index < 0 || index >= bitnet_fault_point_count())
        return bn_error(BITNET_E_INVALID_ARG,
                        "bitnet_fault_stats: %s", !out ? "out is NULL" :
                        "point index out of range");
    point_state *ps = &engine.points[index];
    out->hits = atomic_load(&ps->hits);
    out->fired = atomic_load(&ps->fired);
    out->first_fired_hit = atomic_load(&ps->first_fired_hit);
    out->armed = atomic_load(&ps->chain) != NULL;
    out->thread_scoped = atomic_load(&ps->thread_scoped);
    return BITNET_OK;
}

int32_t bitnet_fault_backtrace(int32_t index, char *buf, int32_t buf_len)
{
    if (index < 0 || index >= bitnet_fault_point_count())
        return 0;
    pthread_mutex_lock(&engine.lock);
    const char *bt = engine.points[index].backtrace;
    size_t n = bt ? strlen(bt) : 0;
    if (buf && buf_len > 0) {
        size_t c = n < (size_t)buf_len - 1 ? n : (size_t)buf_len - 1;
        if (c)
            memcpy(buf, bt, c);
        buf[c] = '\0';
    }
    pthread_mutex_unlock(&engine.lock);
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

void bitnet_fault_set_callback(bitnet_fault_callback_t fn, void *user)
{
    atomic_store(&engine.callback_user, user);
    atomic_store(&engine.callback, fn);
}

#endif /* BN_FAULT_ENGINE */
