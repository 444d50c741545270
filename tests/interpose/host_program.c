/*
 * host_program.c — drives the interposing libllama from C, attached to a
 * host table filled here: a minimal engine that fires one planned action at
 * one point, as the bridge's engine answers fault_eval (fail / oom: the
 * BITNET_E_* code, < 0; grow, delay, hang: handed back in the special, > 0).
 * It stands in for the bridge until its registry takes runtime points
 * (register_points); the interposer cannot tell the difference.
 *
 *   host_program INTERPOSER MODEL ATTACH POINT ACTION ARG TIMEOUT_MS
 *
 * ATTACH 0: never attached (every wrapper must forward); 2: attached with a
 * table from before register_points (the points must stay inert).  POINT "-": nothing
 * armed.  ACTION: fail | oom | timeout | grow | delay | hang; with POINT "-",
 * oom_record fails the interposer's own allocation in one llama_init_from_model
 * (with a calloc preloaded for it).  Prints one
 * `key=value` line per step; tests/interpose/test_library.py reads them.
 */
#include <dlfcn.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bitnet_interpose.h"
#include "bn_fault.h"
#include "llama.h"

#define FIRST_ID 1000 /* far from 0: a wrapper using its index instead fails */

static const bitnet_fault_point_t *points;
static int32_t n_points;
static int target = -1; /* registry id of the armed point */
static int action;
static int64_t arg;
static atomic_int armed;
static int hits;

static int deadline_check(void) { return 0; }
static int deadline_sleep(int64_t ms) { return 0; }
static void host_log(int level, const char *component, const char *message)
{
    printf("log=%d %s %s\n", level, component, message);
}
static int log_threshold(void) { return 4; }
static const char *last_error(void) { return "injected by host_program"; }
static const char *fault_note(void) { return ""; }

static int32_t register_points(const bitnet_fault_point_t *pts, int32_t n,
                               int32_t *first)
{
    points = pts;
    n_points = n;
    *first = FIRST_ID;
    return 0;
}

static int fault_eval(int id, void *special)
{
    if (id < FIRST_ID || id >= FIRST_ID + n_points) {
        printf("bad_id=%d\n", id);
        return 0;
    }
    if (id != target)
        return 0;
    hits++;
    bn_fault_special *sp = special;
    switch (action) {
    case BITNET_FAULT_FAIL: return arg ? (int)arg : points[id - FIRST_ID].default_code;
    case BITNET_FAULT_OOM: return BITNET_E_OOM;
    case -1: return BITNET_E_TIMEOUT; /* the engine's own sleep met a deadline */
    default:
        sp->action = action;
        sp->arg = arg;
        sp->hit = (uint64_t)hits;
        return 1;
    }
}

static int user_abort_polls;
static bool user_abort(void *data)
{
    (void)data;
    user_abort_polls++;
    return false;
}

static void hook(void *user, const char *kind, const void *object, int created)
{
    (void)user;
    printf("hook=%s %s\n", kind, created ? "made" : "freed");
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

#define SYM(name) __typeof__(&name) p_##name = (__typeof__(&name))dlsym(lib, #name)

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s INTERPOSER MODEL ATTACH POINT ACTION ARG TIMEOUT_MS\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("dlopen=%s\n", dlerror());
        return 1;
    }
    SYM(bitnet_interpose_attach);
    SYM(bitnet_interpose_counters);
    SYM(bitnet_interpose_set_object_hook);
    SYM(bitnet_interpose_set_timeout_ns);
    SYM(llama_backend_init);
    SYM(llama_log_set);
    SYM(llama_model_default_params);
    SYM(llama_context_default_params);
    SYM(llama_model_load_from_file);
    SYM(llama_model_get_vocab);
    SYM(llama_init_from_model);
    SYM(llama_tokenize);
    SYM(llama_token_to_piece);
    SYM(llama_detokenize);
    SYM(llama_chat_apply_template);
    SYM(llama_model_meta_val_str);
    SYM(llama_batch_init);
    SYM(llama_batch_free);
    SYM(llama_batch_get_one);
    SYM(llama_sampler_chain_default_params);
    SYM(llama_sampler_chain_init);
    SYM(llama_sampler_chain_add);
    SYM(llama_sampler_init_greedy);
    SYM(llama_sampler_free);
    SYM(llama_decode);
    SYM(llama_free);
    SYM(llama_model_free);

    static atomic_int zero;
    bitnet_host_t host = {
        .size = sizeof host, .abi = BITNET_HOST_ABI,
        .deadline_check = deadline_check, .deadline_sleep = deadline_sleep,
        .log = host_log, .log_threshold = log_threshold, .last_error = last_error,
        .fault_armed = &armed, .fault_eval = fault_eval, .fault_note = fault_note,
        .register_points = register_points,
    };
    (void)zero;
    p_bitnet_interpose_set_object_hook(hook, NULL);
    p_bitnet_interpose_set_timeout_ns(atoll(argv[7]) * 1000000LL);
    /* tables the interposer must refuse before anything changes (no host is
     * kept: the attach below still succeeds) */
    bitnet_host_t wrong_abi = host, too_short = host;
    wrong_abi.abi = BITNET_HOST_ABI + 1;
    too_short.size = (int32_t)offsetof(bitnet_host_t, last_error);
    printf("attach_refused=%d %d %d\n", p_bitnet_interpose_attach(NULL),
           p_bitnet_interpose_attach(&wrong_abi), p_bitnet_interpose_attach(&too_short));
    printf("counters_null=%d\n", p_bitnet_interpose_counters(NULL));
    if (atoi(argv[3]) == 2) /* a bridge from before register_points */
        host.size = (int32_t)offsetof(bitnet_host_t, register_points);
    if (atoi(argv[3])) {
        printf("attach=%d\n", p_bitnet_interpose_attach(&host));
        bitnet_host_t other = host;
        printf("attach_again=%d\n", p_bitnet_interpose_attach(&host));
        printf("attach_other=%d\n", p_bitnet_interpose_attach(&other));
        printf("points=%d\n", (int)n_points);
        for (int i = 0; i < n_points; i++)
            if (strcmp(points[i].name, argv[4]) == 0)
                target = FIRST_ID + i;
        if (strcmp(argv[4], "-") != 0 && target < 0 && n_points) {
            printf("unknown_point=%s\n", argv[4]);
            return 1;
        }
        const char *a = argv[5];
        action = !strcmp(a, "fail") ? BITNET_FAULT_FAIL : !strcmp(a, "oom") ? BITNET_FAULT_OOM
               : !strcmp(a, "grow") ? BITNET_FAULT_GROW : !strcmp(a, "delay") ? BITNET_FAULT_DELAY
               : !strcmp(a, "hang") ? BITNET_FAULT_HANG : -1;
        arg = atoll(argv[6]);
        if (target >= 0)
            atomic_store(&armed, 1);
    }

    bitnet_interpose_counters_t c;
#define COUNTERS(when)                                                          \
    p_bitnet_interpose_counters(&c);                                            \
    printf("counters_" when "=%lld %lld %lld %lld %lld\n", (long long)c.llama_models, \
           (long long)c.llama_contexts, (long long)c.llama_batches,             \
           (long long)c.llama_samplers, (long long)c.llama_adapters)

    p_llama_backend_init();
    struct llama_model_params mp = p_llama_model_default_params();
    struct llama_model *model = p_llama_model_load_from_file(argv[2], mp);
    printf("model=%d\n", model != NULL);
    if (!model)
        goto done;
    const struct llama_vocab *vocab = p_llama_model_get_vocab(model);
    printf("vocab=%d\n", vocab != NULL);
    struct llama_context_params cp = p_llama_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.abort_callback = user_abort;
    struct llama_context *ctx = p_llama_init_from_model(model, cp);
    printf("context=%d\n", ctx != NULL);
    if (target < 0) { /* nothing armed: a context llama.cpp itself refuses */
        struct llama_context_params zero_batch = cp;
        zero_batch.n_batch = zero_batch.n_ubatch = 0;
        struct llama_context *refused = p_llama_init_from_model(model, zero_batch);
        printf("context_refused=%d\n", refused == NULL);
        if (refused)
            p_llama_free(refused);
        COUNTERS("refused");
    }
    if (target < 0 && !strcmp(argv[5], "oom_record")) {
        /* the calloc of a library preloaded for this run (build_fail_calloc,
         * tests/native_builds.py) fails the calling thread's next call when
         * asked: the first allocation of the wrapper is its record */
        void (*fail_next)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "fail_calloc_next");
        int (*pending)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "fail_calloc_pending");
        if (!fail_next || !pending) {
            printf("fail_calloc=missing\n");
            return 1;
        }
        fail_next(1);
        struct llama_context *unrecorded = p_llama_init_from_model(model, cp);
        int consumed = !pending();
        fail_next(0);
        printf("context_unrecorded=%d %d\n", unrecorded != NULL, consumed);
        COUNTERS("unrecorded");
        if (unrecorded)
            p_llama_free(unrecorded);
    }
    llama_token tokens[32];
    int n = vocab ? p_llama_tokenize(vocab, "hello world", 11, tokens, 32, true, false) : 0;
    printf("tokenize=%d\n", n);
    char buf[256];
    if (vocab && n > 0) {
        printf("piece=%d\n", p_llama_token_to_piece(vocab, tokens[1], buf, 32, 0, false));
        printf("detokenize=%d\n", p_llama_detokenize(vocab, tokens, n, buf, 64, false, false));
    }
    struct llama_chat_message msg = {"user", "hi"};
    printf("chat=%d\n", p_llama_chat_apply_template("chatml", &msg, 1, true, buf, 8));
    printf("meta=%d\n", p_llama_model_meta_val_str(model, "general.architecture", buf, sizeof buf));
    printf("meta_text=%s\n", buf);
    struct llama_batch b = p_llama_batch_init(8, 0, 1);
    printf("batch=%d\n", b.token != NULL);
    struct llama_sampler *chain = p_llama_sampler_chain_init(p_llama_sampler_chain_default_params());
    struct llama_sampler *greedy = p_llama_sampler_init_greedy();
    printf("sampler=%d %d\n", chain != NULL, greedy != NULL);
    COUNTERS("live");
    if (chain && greedy)
        p_llama_sampler_chain_add(chain, greedy);
    COUNTERS("chained");
    if (ctx && n > 0) {
        double t0 = now_ms();
        int rc = p_llama_decode(ctx, p_llama_batch_get_one(tokens, n));
        printf("decode=%d\n", rc);
        printf("decode_ms=%.0f\n", now_ms() - t0);
        printf("user_abort_polls=%d\n", user_abort_polls > 0);
    }
    if (chain)
        p_llama_sampler_free(chain);
    p_llama_batch_free(b);
    if (ctx)
        p_llama_free(ctx);
    p_llama_model_free(model);
done:
    COUNTERS("end");
    printf("hits=%d\n", hits);
    return 0;
}
