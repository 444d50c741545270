/*
 * broken_backend.c — deliberately broken backend libraries, to prove that
 * the error-path matrix notices when a backend gets an error path wrong.
 *
 * Each build wraps the real reference library (REAL_LIBRARY, opened with
 * dlopen) and forwards every socket of bitnet.h to it, except for one bug,
 * chosen at compile time:
 *
 *   BUG_LEAK_ON_TOKENIZE_ERROR  every tokenize call takes a scratch context
 *                               and frees it only when the tokenize succeeds
 *                               (a cleanup forgotten on the error path);
 *   BUG_GENERIC_CODE            every failure is reported as
 *                               BITNET_E_INTERNAL, whatever went wrong (the
 *                               message stays right: only the code lies);
 *   BUG_WRITE_PAST_BUFFER       a fill pass given too small a buffer writes
 *                               the whole result anyway, then reports the
 *                               buffer too small;
 *   BUG_CRASH_IN_EVAL           every evaluation's fill pass aborts the
 *                               process;
 *   BUG_OVERREPORT_FILL         every fill pass that succeeds reports one
 *                               token (tokenize) or one row (eval) more than
 *                               it wrote, i.e. more than the buffer holds;
 *   BUG_NEGATIVE_QUERY          every query pass reports -5 tokens / -5 rows;
 *   BUG_FILL_SHAPE              every fill pass reports one token fewer
 *                               (tokenize) or one column fewer (eval) than
 *                               its query said: within the buffer, and wrong;
 *   BUG_ABSURD_SIZES            every pass reports 1,000,000 tokens / rows;
 *   BUG_BAD_MODEL_INFO          bitnet_cpp_get_model_info says n_vocab=-1;
 *   BUG_BAD_N_PAST              bitnet_cpp_get_n_past says -3;
 *   BUG_BAD_CAPS                bitnet_cpp_get_capabilities says has_cuda=7;
 *   BUG_NULL_SESSION            SESSION_ONLY's exports, and every
 *                               bitnet_cpp_session_create reports success but
 *                               returns no session (it frees the real one);
 *   BUG_FAIL_FREE_ONCE          the first bitnet_cpp_free_context of each
 *                               context fails (BITNET_E_CLEANUP, freeing
 *                               nothing); its retry frees it.
 *
 * Not bugs, but libraries the bridge must serve as they are:
 *
 *   BUG_FAKE_GPU                reports has_cuda=1 and serves Socket 5 by
 *                               evaluating on the CPU (the real library's
 *                               sequence 0), counting its calls
 *                               (broken_backend_gpu_calls) so a test can see
 *                               the bridge routed there;
 *   BUG_SESSION_ONLY            exports Socket 4 (bitnet_cpp_session_*) and
 *                               no Socket 1, 2, 3, 5 or context helpers (the
 *                               seed's alternative to Socket 1): the build
 *                               hides those with a version script.
 *
 * Third-party libraries that do not cooperate (no bitnet_host_attach: the
 * bridge's deadlines, cancellation and fault points cannot reach them),
 * for process isolation (tests/bridge/test_isolation*.py):
 *
 *   BUG_SLEEP_TOKENIZE          every tokenize (session and per-call) sleeps
 *                               60 s first, deaf to any deadline;
 *   BUG_SLEEP_LOAD              every init_context sleeps 60 s first;
 *   BUG_SEGV_EVAL               every evaluation's fill pass (session and
 *                               per-call) writes through NULL (SIGSEGV);
 *   BUG_ABORT_FREE              every free_context aborts (SIGABRT);
 *   BUG_SLEEP_FREE              every free_context sleeps 60 s first;
 *   BUG_STDERR_EXIT             every tokenize writes three lines to stderr,
 *                               the last "broken_backend: giving up", then
 *                               _exit(3).
 *
 * tests/native_builds.py builds them; tests/fault_inject/test_matrix.py checks that the
 * matrix turns red on exactly the rows each bug should break;
 * tests/bridge/test_calls.py that a misreported count is never a result.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bitnet.h"
#include "bitnet_host.h"

#ifndef REAL_LIBRARY
#error "build with -DREAL_LIBRARY=\"/path/to/the/real/libbitnet.so\""
#endif

static void *real_handle;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void open_real(void)
{
    real_handle = dlopen(REAL_LIBRARY, RTLD_NOW | RTLD_LOCAL);
    if (!real_handle) {
        fprintf(stderr, "broken_backend: cannot open %s: %s\n", REAL_LIBRARY, dlerror());
        abort();
    }
}

static void *real(const char *name)
{
    pthread_once(&real_once, open_real);
    return dlsym(real_handle, name);
}

/* The real library's function of the same name and type. */
#define REAL(fn) ((__typeof__(&fn))real(#fn))

#if defined(BUG_SLEEP_TOKENIZE) || defined(BUG_SLEEP_LOAD) || defined(BUG_SEGV_EVAL) || \
    defined(BUG_ABORT_FREE) || defined(BUG_SLEEP_FREE) || defined(BUG_STDERR_EXIT)
#define NO_HOST_HOOK 1 /* a third-party library: it knows nothing of the bridge */
#endif

#if defined(BUG_SLEEP_TOKENIZE) || defined(BUG_SLEEP_LOAD) || defined(BUG_SLEEP_FREE)
/* Far past any deadline a test sets, and deaf to all of them. */
static void sleep_long(void)
{
    struct timespec t = {60, 0};
    while (nanosleep(&t, &t) != 0)
        ;
}
#endif

static int reported(int rc)
{
#ifdef BUG_GENERIC_CODE
    return rc ? BITNET_E_INTERNAL : rc;
#else
    return rc;
#endif
}

/* What a fill pass that succeeded reports as its count. */
static void overreported(int rc, const void *buf, int32_t *count)
{
#ifdef BUG_OVERREPORT_FILL
    if (rc == BITNET_OK && buf && count)
        ++*count; /* the bug: one more than was written */
#else
    (void)rc, (void)buf, (void)count;
#endif
}

/* What a pass that succeeded reports (the misreporting variants). */
static void misreported(int rc, const void *buf, int32_t *count, int32_t *cols)
{
    if (rc != BITNET_OK || !count)
        return;
#ifdef BUG_NEGATIVE_QUERY
    if (!buf)
        *count = -5;
#endif
#ifdef BUG_FILL_SHAPE
    if (buf) {
        if (cols)
            --*cols;
        else
            --*count;
    }
#endif
#ifdef BUG_ABSURD_SIZES
    *count = 1000000;
#endif
    (void)buf, (void)cols;
}

/* ---- model paths of live contexts (for the leaking variant) ------------- */

#ifdef BUG_LEAK_ON_TOKENIZE_ERROR
#define MAX_TRACKED 256
static struct {
    const bitnet_context_t *ctx;
    char path[4096];
} tracked[MAX_TRACKED];
static pthread_mutex_t tracked_lock = PTHREAD_MUTEX_INITIALIZER;

static void track(const bitnet_context_t *ctx, const char *path)
{
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (!tracked[i].ctx) {
            tracked[i].ctx = ctx;
            snprintf(tracked[i].path, sizeof tracked[i].path, "%s", path);
            break;
        }
    pthread_mutex_unlock(&tracked_lock);
}

static void untrack(const bitnet_context_t *ctx)
{
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i].ctx == ctx)
            tracked[i].ctx = NULL;
    pthread_mutex_unlock(&tracked_lock);
}

/* A scratch context on the same model: freed on success only (the bug). */
static bitnet_context_t *scratch_for(const bitnet_context_t *ctx)
{
    char path[4096] = "";
    pthread_mutex_lock(&tracked_lock);
    for (int i = 0; i < MAX_TRACKED; i++)
        if (tracked[i].ctx == ctx)
            snprintf(path, sizeof path, "%s", tracked[i].path);
    pthread_mutex_unlock(&tracked_lock);
    bitnet_context_t *scratch = NULL;
    if (path[0] && REAL(bitnet_cpp_init_context)(&scratch, path, 16, 0, NULL, 0) != BITNET_OK)
        scratch = NULL;
    return scratch;
}
#else
static void track(const bitnet_context_t *ctx, const char *path) { (void)ctx, (void)path; }
static void untrack(const bitnet_context_t *ctx) { (void)ctx; }
#endif

/* ---- the sockets ----------------------------------------------------------- */

int bitnet_cpp_init_context(bitnet_context_t **out_ctx, const char *model_path, int32_t n_ctx,
                            int32_t n_gpu_layers, char *err, int32_t err_len)
{
#ifdef BUG_SLEEP_LOAD
    sleep_long();
#endif
    int rc = REAL(bitnet_cpp_init_context)(out_ctx, model_path, n_ctx, n_gpu_layers, err, err_len);
    if (rc == BITNET_OK)
        track(*out_ctx, model_path);
    return reported(rc);
}

#ifdef BUG_FAIL_FREE_ONCE
/* the contexts whose first free has failed (a handful at a time in tests) */
static const bitnet_context_t *refused_once[64];
static pthread_mutex_t refused_lock = PTHREAD_MUTEX_INITIALIZER;

static int first_free(const bitnet_context_t *ctx)
{
    pthread_mutex_lock(&refused_lock);
    int first = 1;
    for (int i = 0; i < 64 && first; i++)
        if (refused_once[i] == ctx) {
            refused_once[i] = NULL;
            first = 0;
        }
    for (int i = 0; i < 64 && first; i++)
        if (!refused_once[i]) {
            refused_once[i] = ctx;
            break;
        }
    pthread_mutex_unlock(&refused_lock);
    return first;
}
#endif

int bitnet_cpp_free_context(bitnet_context_t *ctx)
{
#ifdef BUG_FAIL_FREE_ONCE
    if (ctx && first_free(ctx))
        return BITNET_E_CLEANUP;
#endif
#ifdef BUG_ABORT_FREE
    abort();
#endif
#ifdef BUG_SLEEP_FREE
    sleep_long();
#endif
    int rc = REAL(bitnet_cpp_free_context)(ctx);
    if (rc == BITNET_OK)
        untrack(ctx);
    return reported(rc);
}

/* forwarded (a library without detokenize would also load the fallback
 * tier's model), with the count bugs that make sense for bytes: a negative
 * query, a fill reporting one byte more than its buffer holds */
int bitnet_cpp_detokenize_with_context(const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
                                       int remove_special, int unparse_special, char *out_text,
                                       int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    int rc = REAL(bitnet_cpp_detokenize_with_context)(ctx, tokens, n_tokens, remove_special, unparse_special,
                                                     out_text, out_capacity, out_len, err, err_len);
#ifdef BUG_NEGATIVE_QUERY
    if (rc == BITNET_OK && !out_text && out_len)
        *out_len = -5;
#endif
#ifdef BUG_OVERREPORT_FILL
    if (rc == BITNET_OK && out_text && out_len)
        ++*out_len;
#endif
    return reported(rc);
}

int bitnet_cpp_tokenize_with_context(const bitnet_context_t *ctx, const char *prompt, int add_bos,
                                     int parse_special, int32_t *out_tokens, int32_t out_capacity,
                                     int32_t *out_len, char *err, int32_t err_len)
{
#ifdef BUG_SLEEP_TOKENIZE
    sleep_long();
#endif
#ifdef BUG_STDERR_EXIT
    fprintf(stderr, "broken_backend: tokenize of %zu bytes\n", strlen(prompt));
    fprintf(stderr, "broken_backend: the vocabulary is gone\n");
    fprintf(stderr, "broken_backend: giving up\n");
    fflush(stderr);
    _exit(3);
#endif
#ifdef BUG_LEAK_ON_TOKENIZE_ERROR
    bitnet_context_t *scratch = scratch_for(ctx);
#endif
#ifdef BUG_WRITE_PAST_BUFFER
    if (out_tokens) {
        int32_t need = 0;
        if (REAL(bitnet_cpp_tokenize_with_context)(ctx, prompt, add_bos, parse_special, NULL, 0, &need, NULL, 0) == BITNET_OK &&
            need > out_capacity) {
            int32_t *all = malloc(sizeof *all * (size_t)need);
            int32_t n = 0;
            if (all && REAL(bitnet_cpp_tokenize_with_context)(ctx, prompt, add_bos, parse_special, all, need, &n, NULL, 0) == BITNET_OK)
                memcpy(out_tokens, all, sizeof *all * (size_t)n); /* the bug: n > out_capacity */
            free(all);
        }
    }
#endif
    int rc = REAL(bitnet_cpp_tokenize_with_context)(ctx, prompt, add_bos, parse_special, out_tokens, out_capacity,
                                                   out_len, err, err_len);
    overreported(rc, out_tokens, out_len);
    misreported(rc, out_tokens, out_len, NULL);
#ifdef BUG_LEAK_ON_TOKENIZE_ERROR
    if (rc == BITNET_OK && scratch)
        REAL(bitnet_cpp_free_context)(scratch); /* the bug: not on the error path */
#endif
    return reported(rc);
}

int bitnet_cpp_eval_with_context(const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
                                 int32_t seq_id, float *out_logits, int32_t logits_capacity, int32_t *out_rows,
                                 int32_t *out_cols, char *err, int32_t err_len)
{
#ifdef BUG_CRASH_IN_EVAL
    if (out_logits)
        abort();
#endif
#ifdef BUG_SEGV_EVAL
    if (out_logits) {
        volatile int *nowhere = NULL;
        *nowhere = 1; /* the bug: a wild write */
    }
#endif
#ifdef BUG_WRITE_PAST_BUFFER
    if (out_logits) {
        int32_t rows = 0, cols = 0;
        if (REAL(bitnet_cpp_eval_with_context)(ctx, tokens, n_tokens, seq_id, NULL, 0, &rows, &cols, NULL, 0) == BITNET_OK &&
            (int64_t)rows * cols > logits_capacity) {
            size_t n = (size_t)rows * (size_t)cols;
            float *all = malloc(sizeof *all * n);
            if (all) {
                for (size_t i = 0; i < n; i++)
                    all[i] = -1.0f;
                memcpy(out_logits, all, sizeof *all * n); /* the bug: n > logits_capacity */
            }
            free(all);
        }
    }
#endif
    int rc = REAL(bitnet_cpp_eval_with_context)(ctx, tokens, n_tokens, seq_id, out_logits, logits_capacity, out_rows,
                                                out_cols, err, err_len);
    overreported(rc, out_logits, out_rows);
    misreported(rc, out_logits, out_rows, out_cols);
    return reported(rc);
}

int bitnet_cpp_session_create(bitnet_session_t **out_session, const char *model_path, const char *tokenizer_path,
                              int32_t n_ctx, int32_t n_gpu_layers, char *err, int32_t err_len)
{
    int rc = REAL(bitnet_cpp_session_create)(out_session, model_path, tokenizer_path, n_ctx, n_gpu_layers, err, err_len);
#ifdef BUG_NULL_SESSION
    if (rc == BITNET_OK) {
        REAL(bitnet_cpp_session_free)(*out_session);
        *out_session = NULL;
    }
#endif
    return reported(rc);
}

int bitnet_cpp_session_free(bitnet_session_t *session) { return reported(REAL(bitnet_cpp_session_free)(session)); }

int bitnet_cpp_session_tokenize(const bitnet_session_t *session, const char *prompt, int add_bos, int parse_special,
                                int32_t *out_tokens, int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    return reported(REAL(bitnet_cpp_session_tokenize)(session, prompt, add_bos, parse_special, out_tokens, out_capacity,
                                                      out_len, err, err_len));
}

int bitnet_cpp_session_eval(const bitnet_session_t *session, const int32_t *tokens, int32_t n_tokens, float *out_logits,
                            int32_t logits_capacity, int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    return reported(REAL(bitnet_cpp_session_eval)(session, tokens, n_tokens, out_logits, logits_capacity, out_rows,
                                                  out_cols, err, err_len));
}

#ifdef BUG_FAKE_GPU
static int gpu_calls;
int broken_backend_gpu_calls(void) { return __atomic_load_n(&gpu_calls, __ATOMIC_SEQ_CST); }
#endif

int bitnet_cpp_eval_gpu(const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens, float *out_logits,
                        int32_t logits_capacity, int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
#ifdef BUG_FAKE_GPU
    __atomic_add_fetch(&gpu_calls, 1, __ATOMIC_SEQ_CST);
    return REAL(bitnet_cpp_eval_with_context)(ctx, tokens, n_tokens, 0, out_logits, logits_capacity, out_rows,
                                              out_cols, err, err_len);
#else
    return reported(REAL(bitnet_cpp_eval_gpu)(ctx, tokens, n_tokens, out_logits, logits_capacity, out_rows, out_cols,
                                              err, err_len));
#endif
}

int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps)
{
    int rc = REAL(bitnet_cpp_get_capabilities)(out_caps);
#if defined(BUG_FAKE_GPU)
    if (rc == BITNET_OK)
        out_caps->has_cuda = 1;
#elif defined(BUG_BAD_CAPS)
    if (rc == BITNET_OK)
        out_caps->has_cuda = 7;
#endif
    return reported(rc);
}

int crossval_bitnet_tokenize(const char *model_path, const char *prompt, int add_bos, int parse_special,
                             int32_t *out_tokens, int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
#ifdef BUG_SLEEP_TOKENIZE
    sleep_long(); /* the per-call tokenize too: "every tokenize" */
#endif
    int rc = REAL(crossval_bitnet_tokenize)(model_path, prompt, add_bos, parse_special, out_tokens, out_capacity, out_len,
                                            err, err_len);
    overreported(rc, out_tokens, out_len);
    misreported(rc, out_tokens, out_len, NULL);
    return reported(rc);
}

int crossval_bitnet_eval_with_tokens(const char *model_path, const int32_t *tokens, int32_t n_tokens, int32_t n_ctx,
                                     float *out_logits, int32_t logits_capacity, int32_t *out_rows, int32_t *out_cols,
                                     char *err, int32_t err_len)
{
#ifdef BUG_SEGV_EVAL
    if (out_logits) {
        volatile int *nowhere = NULL;
        *nowhere = 1; /* the same bug on the per-call path */
    }
#endif
    int rc = REAL(crossval_bitnet_eval_with_tokens)(model_path, tokens, n_tokens, n_ctx, out_logits, logits_capacity,
                                                    out_rows, out_cols, err, err_len);
    overreported(rc, out_logits, out_rows);
    misreported(rc, out_logits, out_rows, out_cols);
    return reported(rc);
}

int bitnet_cpp_get_n_past(const bitnet_context_t *ctx, int32_t seq_id, int32_t *out_n_past)
{
    int rc = REAL(bitnet_cpp_get_n_past)(ctx, seq_id, out_n_past);
#ifdef BUG_BAD_N_PAST
    if (rc == BITNET_OK)
        *out_n_past = -3;
#endif
    return reported(rc);
}

int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id) { return reported(REAL(bitnet_cpp_reset_context)(ctx, seq_id)); }

int bitnet_cpp_get_model_info(const bitnet_context_t *ctx, int32_t *out_n_vocab, int32_t *out_n_ctx)
{
    int rc = REAL(bitnet_cpp_get_model_info)(ctx, out_n_vocab, out_n_ctx);
#ifdef BUG_BAD_MODEL_INFO
    if (rc == BITNET_OK && out_n_vocab)
        *out_n_vocab = -1;
#endif
    return reported(rc);
}

int32_t bitnet_cpp_abi_version(void) { return REAL(bitnet_cpp_abi_version)(); }
const char *bitnet_cpp_version(void) { return REAL(bitnet_cpp_version)(); }
int32_t bitnet_cpp_get_last_error(char *buf, int32_t buf_len) { return REAL(bitnet_cpp_get_last_error)(buf, buf_len); }
int32_t bitnet_cpp_get_last_error_code(void) { return REAL(bitnet_cpp_get_last_error_code)(); }
int bitnet_cpp_get_counters(bitnet_counters_t *out) { return REAL(bitnet_cpp_get_counters)(out); }

#ifndef NO_HOST_HOOK
/* Deadlines, logging and fault points reach the real library through us. */
int bitnet_host_attach(const bitnet_host_t *host)
{
    bitnet_host_attach_fn attach = (bitnet_host_attach_fn)real("bitnet_host_attach");
    return attach ? attach(host) : BITNET_E_UNSUPPORTED;
}
#endif
