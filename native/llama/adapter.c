/*
 * adapter.c — the socket ABI (bitnet.h) implemented over llama.cpp.
 *
 * Built as its own shared library by the binding (on demand), against the
 * llama.h that ships beside the libllama.so it links (llama.cpp's params
 * structs are passed by value and change between releases, so the adapter
 * must see exactly that release's header).  The bridge loads it like any
 * other backend library: its fault points, handle checks and counters at
 * the boundary apply unchanged.
 *
 * Through bitnet_host_attach (bitnet_host.h) the bridge lends it
 *   - deadline_check, polled by llama.cpp's abort callback (every graph
 *     node of a decode) and by the model loader's progress callback, so
 *     timeouts and cancellation stop llama.cpp mid-work;
 *   - log, the sink that llama.cpp's log lines are routed into;
 *   - check_for_llama, run on every file before llama.cpp sees it: a
 *     well-formed GGUF file with a hostile hyperparameter, vocabulary or
 *     tensor type makes llama.cpp abort, crash or spin inside a kernel
 *     where no deadline reaches, and nothing in this process can catch
 *     that afterwards.  It runs here, in load_model, because every path
 *     into llama.cpp passes this one function (sessions, the fallback tier
 *     of another backend, the per-call functions, vocabulary-only loads),
 *     whichever bridge entry point led to it.
 *
 * Sequences: like the reference engine, every seq_id in [0, AD_MAX_SEQ)
 * has n_ctx positions of its own.  llama.cpp is asked for AD_MAX_SEQ
 * separate KV streams (kv_unified = false) of n_ctx cells each.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bitnet.h"
#include "bitnet_capture.h"
#include "bitnet_host.h"
#include "llama.h"
/* ggml's device registry (shipped beside llama.h by llama-cpp-python): the
 * devices llama.cpp would offload to, for Socket 6 */
#if defined(__has_include)
#if __has_include("ggml-backend.h")
#include "ggml-backend.h"
#define AD_HAVE_GGML_BACKEND 1
#endif
#endif

/* AD_LLAMA_LIB: the libllama.so this adapter was compiled and linked for
 * (set by the build), so a report says which llama.cpp answered. */
#ifndef AD_LLAMA_LIB
#define AD_LLAMA_LIB "libllama.so"
#endif

#define AD_MAX_SEQ 8 /* the reference engine's BN_MAX_SEQ */
#define AD_COMPONENT "llama.cpp"

/* ---- errors: the calling thread's last one ----------------------------- */

static _Thread_local char last_msg[2048];
static _Thread_local int last_code;

static int fail(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_code = code;
    return code;
}

static void clear_error(void)
{
    last_msg[0] = '\0';
    last_code = BITNET_OK;
}

/* Copies the last error into the caller's buffer when rc failed. */
static int out(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK && err && err_len > 0)
        snprintf(err, (size_t)err_len, "%s", last_msg);
    return rc;
}

/* ---- live counters: llama.cpp's objects are ours to count --------------- */

static struct {
    atomic_llong contexts, models, bytes, allocations, model_loads, peak;
} live;

static void count_bytes(long long delta)
{
    long long now = atomic_fetch_add(&live.bytes, delta) + delta;
    long long peak = atomic_load(&live.peak);
    while (now > peak && !atomic_compare_exchange_weak(&live.peak, &peak, now))
        ;
}

/* A counted block: its size is kept in front of it. */
static void *ad_calloc(size_t size)
{
    size_t *p = calloc(1, sizeof(size_t) + size);
    if (!p)
        return NULL;
    *p = size;
    atomic_fetch_add(&live.allocations, 1);
    count_bytes((long long)size);
    return p + 1;
}

static void ad_free(void *q)
{
    if (!q)
        return;
    size_t *p = (size_t *)q - 1;
    atomic_fetch_sub(&live.allocations, 1);
    count_bytes(-(long long)*p);
    free(p);
}

/* llama.cpp's own objects (model, context, batch) count as allocations:
 * a leaked one shows up in bitnet_cpp_get_counters. */
static void count_object(int delta) { atomic_fetch_add(&live.allocations, delta); }

/* ---- the host table ----------------------------------------------------- */

static const bitnet_host_t *host;

/* Non-zero when the caller's deadline passed or the call was cancelled. */
static int deadline_passed(void)
{
    const bitnet_host_t *h = host;
    return h && h->deadline_check && h->deadline_check() != BITNET_OK;
}

/* The TIMEOUT error, with the bridge's message (it names the operation and
 * how late it is, or that it was cancelled). */
static int timeout_error(const char *where)
{
    const bitnet_host_t *h = host;
    const char *why = h && h->last_error ? h->last_error() : NULL;
    return fail(BITNET_E_TIMEOUT, "%s: %s", where,
                why && *why ? why : "aborted by the caller's deadline");
}

/* ---- llama.cpp logging -> the host's sink ------------------------------
 * llama.cpp logs in fragments (a line may arrive in pieces, continued with
 * GGML_LOG_LEVEL_CONT): collect them per thread and emit whole lines. */

static _Thread_local char log_line[1024];
static _Thread_local size_t log_len;
static _Thread_local int log_level = -1; /* host level of the open line */
/* The first error line llama.cpp logged on this thread since it was last
 * cleared: model loading reports failures only there, the cause first
 * ("error loading model: check_tensor_dims: ...") and a generic line
 * after it ("failed to load model"), and the caller deserves the cause. */
static _Thread_local char last_llama_error[512];

static int host_level(enum ggml_log_level level)
{
    switch (level) {
    case GGML_LOG_LEVEL_ERROR: return 0;
    case GGML_LOG_LEVEL_WARN: return 1;
    case GGML_LOG_LEVEL_INFO: return 2;
    default: return 3; /* debug, none */
    }
}

static void flush_line(void)
{
    while (log_len && (log_line[log_len - 1] == '\n' || log_line[log_len - 1] == ' '))
        log_len--;
    log_line[log_len] = '\0';
    if (log_len && log_level == 0 && !last_llama_error[0])
        snprintf(last_llama_error, sizeof last_llama_error, "%s", log_line);
    const bitnet_host_t *h = host;
    if (log_len && h && h->log && (!h->log_threshold || log_level <= h->log_threshold()))
        h->log(log_level, AD_COMPONENT, log_line);
    log_len = 0;
}

static void on_llama_log(enum ggml_log_level level, const char *text, void *user)
{
    (void)user;
    if (level != GGML_LOG_LEVEL_CONT) {
        if (log_len)
            flush_line(); /* a new line began without the old one ending */
        log_level = host_level(level);
    }
    for (const char *p = text; p && *p; p++) {
        if (log_len < sizeof log_line - 1)
            log_line[log_len++] = *p;
        if (*p == '\n')
            flush_line();
    }
}

static pthread_once_t backend_once = PTHREAD_ONCE_INIT;

static void backend_init(void)
{
    llama_log_set(on_llama_log, NULL); /* before anything can log */
    llama_backend_init();
}

BITNET_API int bitnet_host_attach(const bitnet_host_t *h)
{
    /* A bridge built from an older bitnet_host.h may hand a shorter table:
     * the adapter needs everything up to last_error.  The loader quotes the
     * reason (bitnet_cpp_get_last_error) where it says the deadlines cannot
     * reach this library. */
    const size_t need = offsetof(bitnet_host_t, last_error) + sizeof h->last_error;
    if (!h) {
        fail(BITNET_E_ABI_MISMATCH, "bitnet_host_attach: the host table is NULL");
        return BITNET_E_ABI_MISMATCH;
    }
    if (h->abi != BITNET_HOST_ABI || (size_t)h->size < need) {
        fail(BITNET_E_ABI_MISMATCH,
             "host table ABI %d (%d bytes) is not the %d (at least %d bytes) "
             "this adapter was built for: rebuild it with the bridge's "
             "bitnet_host.h (delete the adapter cache, BITNET_LLAMA_ADAPTER_DIR)",
             (int)h->abi, (int)h->size, BITNET_HOST_ABI, (int)need);
        return BITNET_E_ABI_MISMATCH;
    }
    host = h;
    pthread_once(&backend_once, backend_init);
    return BITNET_OK;
}

/* ---- model loading ------------------------------------------------------ */

/* Loading runs for a while on big files: the deadline is checked on every
 * progress report (returning false makes llama.cpp give up). */
static bool on_load_progress(float progress, void *user)
{
    (void)progress;
    int *timed_out = user;
    if (deadline_passed()) {
        *timed_out = 1;
        return false;
    }
    return true;
}

static int check_path(const char *path)
{
    struct stat st;
    if (!path)
        return fail(BITNET_E_INVALID_ARG, "model_path is NULL");
    if (!*path)
        return fail(BITNET_E_MODEL_NOT_FOUND,
                    "model path is empty: pass the path of a .gguf file");
    if (stat(path, &st) != 0)
        return fail(BITNET_E_MODEL_NOT_FOUND,
                    "'%s': model file not found (%s); check the path", path,
                    strerror(errno));
    if (!S_ISREG(st.st_mode))
        return fail(BITNET_E_MODEL_NOT_FOUND,
                    "'%s': not a regular file; check the path", path);
    /* llama.cpp says only "failed to load model" for a file that is not
     * GGUF at all: say it here, in the words the reference engine uses. */
    unsigned char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    size_t got = f ? fread(magic, 1, sizeof magic, f) : 0;
    if (f)
        fclose(f);
    if (got != sizeof magic || memcmp(magic, "GGUF", 4) != 0)
        return fail(BITNET_E_MODEL_LOAD,
                    "'%s': not a GGUF file: bad magic 0x%02x%02x%02x%02x "
                    "(expected 'GGUF')",
                    path, magic[0], magic[1], magic[2], magic[3]);
    return BITNET_OK;
}

/* The bridge's check of the file (bitnet_host.h, check_for_llama), when
 * the bridge that attached us lends one. */
static int check_model(const char *path, int vocab_only)
{
    const bitnet_host_t *h = host;
    if (!h || (size_t)h->size < offsetof(bitnet_host_t, check_for_llama) +
                                    sizeof h->check_for_llama ||
        !h->check_for_llama)
        return BITNET_OK;
    int rc = h->check_for_llama(path, vocab_only);
    if (rc)
        return fail(rc, "%s", h->last_error ? h->last_error() : "refused");
    return BITNET_OK;
}

static int load_model(const char *path, int vocab_only, int32_t n_gpu_layers,
                      struct llama_model **out)
{
    *out = NULL;
    int rc = check_path(path);
    if (rc)
        return rc;
    pthread_once(&backend_once, backend_init);
    if (deadline_passed())
        return timeout_error("llama.cpp model load");
    if ((rc = check_model(path, vocab_only)))
        return rc;
    int timed_out = 0;
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = n_gpu_layers; /* checked against llama.cpp's report */
    mp.vocab_only = vocab_only != 0;
    mp.progress_callback = on_load_progress;
    mp.progress_callback_user_data = &timed_out;
    last_llama_error[0] = '\0';
    struct llama_model *m = llama_model_load_from_file(path, mp);
    if (!m) {
        if (timed_out)
            return timeout_error("llama.cpp model load");
        return fail(BITNET_E_MODEL_LOAD,
                    "llama.cpp could not load '%s': %s", path,
                    last_llama_error[0] ? last_llama_error
                                        : "no reason given (set "
                                          "BITNET_CPP_LOG_LEVEL=info for "
                                          "llama.cpp's log)");
    }
    count_object(1);
    atomic_fetch_add(&live.models, 1);
    atomic_fetch_add(&live.model_loads, 1);
    *out = m;
    return BITNET_OK;
}

static void free_model(struct llama_model *m)
{
    if (!m)
        return;
    llama_model_free(m);
    count_object(-1);
    atomic_fetch_sub(&live.models, 1);
}

/* ---- contexts ----------------------------------------------------------- */

typedef struct {
    struct llama_model *model;
    struct llama_context *lctx;
    const struct llama_vocab *vocab;
    int32_t n_vocab;
    int32_t n_ctx;   /* positions per sequence, as the caller asked */
    int32_t n_batch; /* tokens per llama_decode */
    int32_t n_past[AD_MAX_SEQ];
    int32_t n_gpu_layers; /* offloaded at init, as the caller asked */
    char capture[1024]; /* BITNET_CAPTURE_DIR's <dir>/llama.bnt, or "" */
    int32_t capture_pos0; /* position of the batch being decoded */
} ad_ctx;

/* BITNET_NUM_THREADS, else the online CPUs up to 8: the reference
 * engine's rule, so a comparison runs both on the same threads. */
static int32_t default_threads(void)
{
    const char *env = getenv("BITNET_NUM_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v >= 1 && v <= 64)
            return (int32_t)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int32_t)n;
}

/* BITNET_LLAMA_KV=f16: llama.cpp's own defaults (fp16 KV cache, flash
 * attention when it chooses), for speed; else f32, for exactness. */
static int kv_f16(void)
{
    const char *v = getenv("BITNET_LLAMA_KV");
    return v && strcmp(v, "f16") == 0;
}

/* The tensors worth comparing (bitnet_capture.h): the ones the graph
 * builder names "<name>-<layer>", and the two outputs.  Only F32 tensors
 * laid out contiguously in host memory (a CPU context) are written. */
static int capture_wanted(const struct ggml_tensor *t)
{
    if (t->type != GGML_TYPE_F32 || !t->data || t->nb[0] != sizeof(float) ||
        t->nb[1] != (size_t)t->ne[0] * sizeof(float) ||
        t->nb[2] != t->nb[1] * (size_t)t->ne[1] ||
        t->nb[3] != t->nb[2] * (size_t)t->ne[2])
        return 0;
    if (strcmp(t->name, "result_norm") == 0 ||
        strcmp(t->name, "result_output") == 0)
        return 1;
    const char *dash = strrchr(t->name, '-');
    if (!dash || dash == t->name || !dash[1])
        return 0;
    for (const char *p = dash + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return 1;
}

/* cb_eval: asked first whether a tensor is wanted, then called with it
 * computed.  Values are per token along the last used dimension. */
static bool on_capture(struct ggml_tensor *t, bool ask, void *user)
{
    ad_ctx *c = user;
    if (ask)
        return capture_wanted(t) != 0;
    if (!capture_wanted(t))
        return true;
    int64_t ntok = t->ne[3] > 1 ? t->ne[3] : t->ne[2] > 1 ? t->ne[2] : t->ne[1];
    int64_t total = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    bn_capture_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, BN_CAPTURE_MAGIC, 4);
    h.pos0 = c->capture_pos0;
    snprintf(h.name, sizeof h.name, "%s", t->name);
    h.ne1 = ntok;
    h.ne0 = ntok ? total / ntok : 0;
    FILE *f = fopen(c->capture, "ab");
    if (f) {
        fwrite(&h, sizeof h, 1, f);
        fwrite(t->data, sizeof(float), (size_t)total, f);
        fclose(f);
    }
    return true; /* never abort the computation */
}

/* llama_decode polls this between graph nodes, on the calling thread. */
static bool on_abort_poll(void *user)
{
    (void)user;
    return deadline_passed();
}

static int new_llama_context(ad_ctx *c)
{
    struct llama_context_params cp = llama_context_default_params();
    /* AD_MAX_SEQ streams of n_ctx cells: each sequence its own cache */
    cp.n_ctx = (uint32_t)c->n_ctx * AD_MAX_SEQ;
    cp.n_seq_max = AD_MAX_SEQ;
    cp.kv_unified = false;
    cp.n_threads = cp.n_threads_batch = default_threads();
    cp.abort_callback = on_abort_poll;
    cp.abort_callback_data = c;
    cp.no_perf = true;
    if (!kv_f16()) {
        /* llama.cpp's defaults round K and V to fp16 in the cache (and
         * flash attention rounds Q as well): logits then move by ~1% of
         * their range against the reference engine, which keeps them in
         * f32.  With an f32 cache and plain attention both agree to ~1e-5. */
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    const char *dir = getenv(BN_CAPTURE_ENV);
    if (dir && *dir && c->n_gpu_layers == 0 &&
        strlen(dir) + sizeof "/llama.bnt" <= sizeof c->capture) {
        snprintf(c->capture, sizeof c->capture, "%s/llama.bnt", dir);
        cp.cb_eval = on_capture;
        cp.cb_eval_user_data = c;
    }
    c->lctx = llama_init_from_model(c->model, cp);
    if (!c->lctx)
        return fail(BITNET_E_OOM,
                    "llama.cpp could not create a context of %d positions x "
                    "%d sequences: %s",
                    (int)c->n_ctx, AD_MAX_SEQ,
                    last_llama_error[0] ? last_llama_error
                                        : "no reason given; try a smaller n_ctx");
    count_object(1);
    c->n_batch = (int32_t)llama_n_batch(c->lctx);
    return BITNET_OK;
}

/* llama.cpp holds the AD_MAX_SEQ streams in one context of 32-bit
 * positions: per sequence at most this many. */
#define AD_MAX_N_CTX (INT32_MAX / AD_MAX_SEQ)

static const char *no_gpu_reason(char *buf, size_t cap);

static int ad_check_init_args(int32_t n_ctx, int32_t n_gpu_layers)
{
    if (n_ctx < 0)
        return fail(BITNET_E_INVALID_ARG,
                    "n_ctx=%d is negative; pass a positive context size, or 0 "
                    "for the model's own",
                    (int)n_ctx);
    if (n_ctx > AD_MAX_N_CTX)
        return fail(BITNET_E_INVALID_ARG,
                    "n_ctx=%d is more than the %d positions per sequence "
                    "llama.cpp can hold for %d sequences; pass a smaller "
                    "n_ctx",
                    (int)n_ctx, AD_MAX_N_CTX, AD_MAX_SEQ);
    if (n_gpu_layers < 0)
        return fail(BITNET_E_INVALID_ARG,
                    "n_gpu_layers=%d is negative; use 0 for CPU only",
                    (int)n_gpu_layers);
    /* llama.cpp itself keeps a CPU-only build's layers on the CPU without a
     * word; asked for offload it cannot do, the caller hears why */
    char why[512];
    if (n_gpu_layers > 0 && no_gpu_reason(why, sizeof why)[0])
        return fail(BITNET_E_UNSUPPORTED,
                    "n_gpu_layers=%d asks for GPU offload, but %s; use "
                    "n_gpu_layers=0, or a libllama built with a GPU backend "
                    "(e.g. CMAKE_ARGS=-DGGML_CUDA=on pip install "
                    "llama-cpp-python)",
                    (int)n_gpu_layers, why);
    return BITNET_OK;
}

static void ad_ctx_free(ad_ctx *c)
{
    if (!c)
        return;
    if (c->lctx) {
        llama_free(c->lctx);
        count_object(-1);
    }
    free_model(c->model);
    ad_free(c);
}

static int ad_ctx_new(const char *path, int32_t n_ctx, int32_t n_gpu_layers,
                      ad_ctx **out)
{
    *out = NULL;
    ad_ctx *c = ad_calloc(sizeof *c);
    if (!c)
        return fail(BITNET_E_OOM, "out of memory for a llama.cpp context");
    int rc = load_model(path, 0, n_gpu_layers, &c->model);
    c->n_gpu_layers = n_gpu_layers;
    if (!rc) {
        c->vocab = llama_model_get_vocab(c->model);
        c->n_vocab = llama_vocab_n_tokens(c->vocab);
        c->n_ctx = n_ctx > 0 ? n_ctx : llama_model_n_ctx_train(c->model);
        /* the file's context_length (a u32, which llama.cpp hands back as
         * an int32_t) sizes the context when the caller leaves it to the
         * model: a zero, a wrapped or a huge one must not reach it */
        if (c->n_ctx <= 0 || c->n_ctx > AD_MAX_N_CTX)
            rc = fail(BITNET_E_MODEL_LOAD,
                      "'%s': the model's context_length (read back as %d) "
                      "is not a context size llama.cpp can hold for %d "
                      "sequences (1..%d positions each); pass an explicit "
                      "n_ctx",
                      path, (int)c->n_ctx, AD_MAX_SEQ, AD_MAX_N_CTX);
        else
            rc = new_llama_context(c);
    }
    if (rc) {
        ad_ctx_free(c);
        return rc;
    }
    *out = c;
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_init_context(bitnet_context_t **out_ctx,
                                       const char *model_path, int32_t n_ctx,
                                       int32_t n_gpu_layers, char *err,
                                       int32_t err_len)
{
    clear_error();
    if (!out_ctx)
        return out(fail(BITNET_E_INVALID_ARG, "out_ctx is NULL"), err, err_len);
    *out_ctx = NULL;
    int rc = ad_check_init_args(n_ctx, n_gpu_layers);
    ad_ctx *c = NULL;
    if (!rc)
        rc = ad_ctx_new(model_path, n_ctx, n_gpu_layers, &c);
    if (rc)
        return out(rc, err, err_len);
    atomic_fetch_add(&live.contexts, 1);
    *out_ctx = (bitnet_context_t *)c;
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_free_context(bitnet_context_t *ctx)
{
    clear_error();
    if (!ctx)
        return BITNET_OK;
    ad_ctx_free((ad_ctx *)ctx);
    atomic_fetch_sub(&live.contexts, 1);
    return BITNET_OK;
}

/* ---- tokenize ----------------------------------------------------------- */

static int tokenize(const struct llama_vocab *vocab, const char *prompt,
                    int add_bos, int parse_special, int32_t *out_tokens,
                    int32_t out_capacity, int32_t *out_len)
{
    if (!prompt)
        return fail(BITNET_E_INVALID_ARG, "prompt is NULL");
    if (!out_len)
        return fail(BITNET_E_INVALID_ARG, "out_len is NULL");
    if (out_tokens && out_capacity < 0)
        return fail(BITNET_E_INVALID_ARG, "out_capacity=%d is negative",
                    (int)out_capacity);
    size_t len = strlen(prompt);
    if (len > INT32_MAX)
        return fail(BITNET_E_INVALID_ARG, "prompt longer than 2^31-1 bytes");
    /* The count first: llama_tokenize writes as it goes, and the socket
     * promises nothing is written into a buffer that is too small. */
    int32_t n = llama_tokenize(vocab, prompt, (int32_t)len, NULL, 0,
                               add_bos != 0, parse_special != 0);
    if (n == INT32_MIN)
        return fail(BITNET_E_INFERENCE,
                    "prompt produces more than 2^31-1 tokens");
    n = n < 0 ? -n : n;
    *out_len = n;
    if (!out_tokens || n == 0)
        return BITNET_OK;
    if (out_capacity < n)
        return fail(BITNET_E_INVALID_ARG,
                    "buffer too small (need %d, got %d): call first with "
                    "out_tokens=NULL to query the size",
                    (int)n, (int)out_capacity);
    int32_t got = llama_tokenize(vocab, prompt, (int32_t)len, out_tokens,
                                 out_capacity, add_bos != 0, parse_special != 0);
    if (got != n)
        return fail(BITNET_E_INTERNAL,
                    "llama_tokenize gave %d tokens after counting %d",
                    (int)got, (int)n);
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_tokenize_with_context(
    const bitnet_context_t *ctx, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len)
{
    clear_error();
    if (!ctx)
        return out(fail(BITNET_E_INVALID_HANDLE, "context is NULL"), err, err_len);
    const ad_ctx *c = (const ad_ctx *)ctx;
    return out(tokenize(c->vocab, prompt, add_bos, parse_special, out_tokens,
                        out_capacity, out_len),
               err, err_len);
}

/* ---- detokenize --------------------------------------------------------- */

/* llama_detokenize over the socket's two passes.  Ids are checked first:
 * llama.cpp reads a token's attributes with std::vector::at, so an id
 * outside the vocabulary would throw through C and abort the process. */
static int detokenize(const ad_ctx *c, const int32_t *tokens,
                      int32_t n_tokens, int remove_special,
                      int unparse_special, char *out_text,
                      int32_t out_capacity, int32_t *out_len)
{
    if (!out_len)
        return fail(BITNET_E_INVALID_ARG, "out_len is NULL");
    if (n_tokens < 0)
        return fail(BITNET_E_INVALID_ARG, "n_tokens=%d is negative",
                    (int)n_tokens);
    if (n_tokens && !tokens)
        return fail(BITNET_E_INVALID_ARG, "tokens is NULL");
    if (out_text && out_capacity < 0)
        return fail(BITNET_E_INVALID_ARG, "out_capacity=%d is negative",
                    (int)out_capacity);
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->n_vocab)
            return fail(BITNET_E_INFERENCE,
                        "invalid token id %d at position %d: ids must be in "
                        "[0, %d) for this model's vocabulary",
                        (int)tokens[i], (int)i, (int)c->n_vocab);
    /* The count first (a NULL buffer of 0 bytes: minus the bytes needed):
     * llama_detokenize writes what fits as it goes, the socket nothing. */
    int32_t n = n_tokens ? llama_detokenize(c->vocab, tokens, n_tokens, NULL,
                                            0, remove_special != 0,
                                            unparse_special != 0)
                         : 0;
    if (n == INT32_MIN)
        return fail(BITNET_E_INFERENCE,
                    "the text of %d tokens is longer than 2^31-1 bytes",
                    (int)n_tokens);
    n = n < 0 ? -n : n;
    *out_len = n;
    if (!out_text || n == 0)
        return BITNET_OK;
    if (out_capacity < n)
        return fail(BITNET_E_INVALID_ARG,
                    "buffer too small (need %d, got %d): call first with "
                    "out_text=NULL to query the size",
                    (int)n, (int)out_capacity);
    int32_t got = llama_detokenize(c->vocab, tokens, n_tokens, out_text,
                                   out_capacity, remove_special != 0,
                                   unparse_special != 0);
    if (got != n)
        return fail(BITNET_E_INTERNAL,
                    "llama_detokenize gave %d bytes after counting %d",
                    (int)got, (int)n);
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_detokenize_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int remove_special, int unparse_special, char *out_text,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len)
{
    clear_error();
    if (!ctx)
        return out(fail(BITNET_E_INVALID_HANDLE, "context is NULL"), err, err_len);
    return out(detokenize((const ad_ctx *)ctx, tokens, n_tokens,
                          remove_special, unparse_special, out_text,
                          out_capacity, out_len),
               err, err_len);
}

/* ---- evaluate ----------------------------------------------------------- */

/* The reference engine's checks, with its messages: both backends must
 * refuse the same calls the same way. */
static int check_eval(const ad_ctx *c, int32_t seq, const int32_t *tokens,
                      int32_t n_tokens)
{
    if (seq < 0 || seq >= AD_MAX_SEQ)
        return fail(BITNET_E_INVALID_ARG, "seq_id %d is out of range: use 0..%d",
                    (int)seq, AD_MAX_SEQ - 1);
    if (n_tokens <= 0)
        return fail(BITNET_E_INFERENCE,
                    "empty token list: evaluate needs at least one token "
                    "(n_tokens=%d)",
                    (int)n_tokens);
    if (!tokens)
        return fail(BITNET_E_INVALID_ARG, "tokens is NULL");
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->n_vocab)
            return fail(BITNET_E_INFERENCE,
                        "invalid token id %d at position %d: ids must be in "
                        "[0, %d) for this model's vocabulary",
                        (int)tokens[i], (int)i, (int)c->n_vocab);
    int64_t total = (int64_t)c->n_past[seq] + n_tokens;
    if (total > c->n_ctx)
        return fail(BITNET_E_CONTEXT_OVERFLOW,
                    "context overflow: %d tokens already in sequence %d plus "
                    "%d new ones = %lld exceeds n_ctx=%d; create the session "
                    "with a larger n_ctx or reset it",
                    (int)c->n_past[seq], (int)seq, (int)n_tokens,
                    (long long)total, (int)c->n_ctx);
    return BITNET_OK;
}

/* llama_decode's status as a socket error. */
static int decode_error(int status, int32_t seq, int32_t pos)
{
    switch (status) {
    case 1:
        return fail(BITNET_E_CONTEXT_OVERFLOW,
                    "llama.cpp found no KV cache slot for %d more positions "
                    "of sequence %d; create the session with a larger n_ctx "
                    "or reset it",
                    (int)pos, (int)seq);
    case 2:
        return timeout_error("llama_decode");
    case -2:
        return fail(BITNET_E_OOM, "llama_decode could not allocate its "
                                  "compute buffers (status -2)");
    case -1:
        return fail(BITNET_E_INFERENCE, "llama_decode refused the batch "
                                        "(status -1): %s",
                    last_llama_error[0] ? last_llama_error : "invalid batch");
    default:
        return fail(BITNET_E_INFERENCE, "llama_decode failed (status %d): %s",
                    status,
                    last_llama_error[0] ? last_llama_error : "compute failed");
    }
}

/* Decodes tokens[0..n) at positions n_past.. of seq, one llama batch at a
 * time, copying every row of logits out. */
static int decode_all(ad_ctx *c, int32_t seq, const int32_t *tokens,
                      int32_t n_tokens, float *logits)
{
    int32_t step = c->n_batch > 0 ? c->n_batch : 512;
    struct llama_batch b = llama_batch_init(step, 0, 1);
    if (!b.token)
        return fail(BITNET_E_OOM, "out of memory for a llama.cpp batch");
    count_object(1);
    int rc = BITNET_OK;
    last_llama_error[0] = '\0';
    for (int32_t done = 0; done < n_tokens && !rc; done += step) {
        int32_t n = n_tokens - done < step ? n_tokens - done : step;
        b.n_tokens = n;
        for (int32_t i = 0; i < n; i++) {
            b.token[i] = tokens[done + i];
            b.pos[i] = c->n_past[seq] + done + i;
            b.n_seq_id[i] = 1;
            b.seq_id[i][0] = seq;
            b.logits[i] = 1; /* the socket returns a row per token */
        }
        c->capture_pos0 = c->n_past[seq] + done;
        int status = llama_decode(c->lctx, b);
        if (status) {
            rc = decode_error(status, seq, n);
            break;
        }
        for (int32_t i = 0; i < n; i++) {
            const float *row = llama_get_logits_ith(c->lctx, i);
            if (!row) {
                rc = fail(BITNET_E_INTERNAL, "llama.cpp returned no logits "
                                             "for batch row %d", (int)i);
                break;
            }
            memcpy(logits + (size_t)(done + i) * c->n_vocab, row,
                   (size_t)c->n_vocab * sizeof *row);
        }
    }
    llama_batch_free(b);
    count_object(-1);
    return rc;
}

static int eval_two_pass(ad_ctx *c, const int32_t *tokens, int32_t n_tokens,
                         int32_t seq, float *out_logits,
                         int32_t logits_capacity, int32_t *out_rows,
                         int32_t *out_cols)
{
    if (!out_rows || !out_cols)
        return fail(BITNET_E_INVALID_ARG, "out_rows/out_cols is NULL");
    int rc = check_eval(c, seq, tokens, n_tokens);
    if (rc)
        return rc;
    *out_rows = n_tokens;
    *out_cols = c->n_vocab;
    if (!out_logits)
        return BITNET_OK;
    int64_t need = (int64_t)n_tokens * c->n_vocab;
    if (logits_capacity < need)
        return fail(BITNET_E_INVALID_ARG,
                    "buffer too small (need %lld, got %d): call first with "
                    "out_logits=NULL to query rows x cols",
                    (long long)need, (int)logits_capacity);
    /* No deadline check of our own here: llama_decode polls it through
     * the abort callback from its first graph node on. */
    rc = decode_all(c, seq, tokens, n_tokens, out_logits);
    if (rc) {
        /* A failed call leaves the sequence as it was: drop whatever the
         * batches before the failure put in its cache. */
        llama_memory_seq_rm(llama_get_memory(c->lctx), seq, c->n_past[seq], -1);
        return rc;
    }
    c->n_past[seq] += n_tokens;
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_eval_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int32_t seq_id, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    clear_error();
    if (!ctx)
        return out(fail(BITNET_E_INVALID_HANDLE, "context is NULL"), err, err_len);
    /* The socket takes a const context (the bridge owns the handle); the
     * KV cache behind it is the adapter's to change. */
    ad_ctx *c = (ad_ctx *)ctx;
    return out(eval_two_pass(c, tokens, n_tokens, seq_id, out_logits,
                             logits_capacity, out_rows, out_cols),
               err, err_len);
}

/* Socket 5: the evaluation of a context whose layers were offloaded at
 * init (n_gpu_layers), on sequence 0; refused, naming llama.cpp's own
 * report, when it cannot offload or nothing was offloaded. */
BITNET_API int bitnet_cpp_eval_gpu(const bitnet_context_t *ctx,
                                   const int32_t *tokens, int32_t n_tokens,
                                   float *out_logits, int32_t logits_capacity,
                                   int32_t *out_rows, int32_t *out_cols,
                                   char *err, int32_t err_len)
{
    clear_error();
    if (!ctx)
        return out(fail(BITNET_E_INVALID_HANDLE, "context is NULL"), err, err_len);
    ad_ctx *c = (ad_ctx *)ctx;
    char why[512];
    if (no_gpu_reason(why, sizeof why)[0])
        return out(fail(BITNET_E_UNSUPPORTED,
                        "GPU evaluation is not available: %s; evaluate on "
                        "the CPU (bitnet_cpp_eval_with_context)",
                        why),
                   err, err_len);
    if (c->n_gpu_layers <= 0)
        return out(fail(BITNET_E_UNSUPPORTED,
                        "GPU evaluation of a context with no layer on the "
                        "GPU: it was created with n_gpu_layers=0; create it "
                        "with n_gpu_layers > 0"),
                   err, err_len);
    return out(eval_two_pass(c, tokens, n_tokens, 0, out_logits,
                             logits_capacity, out_rows, out_cols),
               err, err_len);
}

/* ---- context helpers ---------------------------------------------------- */

BITNET_API int bitnet_cpp_get_n_past(const bitnet_context_t *ctx,
                                     int32_t seq_id, int32_t *out_n_past)
{
    clear_error();
    const ad_ctx *c = (const ad_ctx *)ctx;
    if (!c)
        return fail(BITNET_E_INVALID_HANDLE, "context is NULL");
    if (!out_n_past)
        return fail(BITNET_E_INVALID_ARG, "out_n_past is NULL");
    if (seq_id < 0 || seq_id >= AD_MAX_SEQ)
        return fail(BITNET_E_INVALID_ARG, "seq_id %d is out of range: use 0..%d",
                    (int)seq_id, AD_MAX_SEQ - 1);
    *out_n_past = c->n_past[seq_id];
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id)
{
    clear_error();
    ad_ctx *c = (ad_ctx *)ctx;
    if (!c)
        return fail(BITNET_E_INVALID_HANDLE, "context is NULL");
    if (seq_id >= AD_MAX_SEQ)
        return fail(BITNET_E_INVALID_ARG,
                    "seq_id %d is out of range: use 0..%d, or -1 for all",
                    (int)seq_id, AD_MAX_SEQ - 1);
    llama_memory_t mem = llama_get_memory(c->lctx);
    if (seq_id < 0) {
        llama_memory_clear(mem, true);
        memset(c->n_past, 0, sizeof c->n_past);
    } else {
        llama_memory_seq_rm(mem, seq_id, -1, -1);
        c->n_past[seq_id] = 0;
    }
    return BITNET_OK;
}

BITNET_API int bitnet_cpp_get_model_info(const bitnet_context_t *ctx,
                                         int32_t *out_n_vocab,
                                         int32_t *out_n_ctx)
{
    clear_error();
    const ad_ctx *c = (const ad_ctx *)ctx;
    if (!c)
        return fail(BITNET_E_INVALID_HANDLE, "context is NULL");
    if (out_n_vocab)
        *out_n_vocab = c->n_vocab;
    if (out_n_ctx)
        *out_n_ctx = c->n_ctx;
    return BITNET_OK;
}

/* ---- per-call functions ------------------------------------------------- */

BITNET_API int crossval_bitnet_tokenize(const char *model_path,
                                        const char *prompt, int add_bos,
                                        int parse_special, int32_t *out_tokens,
                                        int32_t out_capacity, int32_t *out_len,
                                        char *err, int32_t err_len)
{
    clear_error();
    struct llama_model *m = NULL;
    int rc = load_model(model_path, 1, 0, &m); /* the vocabulary is enough */
    if (!rc)
        rc = tokenize(llama_model_get_vocab(m), prompt, add_bos, parse_special,
                      out_tokens, out_capacity, out_len);
    free_model(m);
    return out(rc, err, err_len);
}

BITNET_API int crossval_bitnet_eval_with_tokens(
    const char *model_path, const int32_t *tokens, int32_t n_tokens,
    int32_t n_ctx, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len)
{
    clear_error();
    ad_ctx *c = NULL;
    int rc = ad_check_init_args(n_ctx, 0);
    if (!rc)
        rc = ad_ctx_new(model_path, n_ctx, 0, &c);
    if (!rc)
        rc = eval_two_pass(c, tokens, n_tokens, 0, out_logits,
                           logits_capacity, out_rows, out_cols);
    ad_ctx_free(c);
    return out(rc, err, err_len);
}

/* ---- capabilities, version, errors, counters ---------------------------- */

/* What llama.cpp itself reports, not what this machine has: its CPU
 * backend's feature list (the kernels it was built with), and for the GPU
 * runtimes a device of that backend in its registry, counted only when
 * llama_supports_gpu_offload() says layers can go there at all. */
static void llama_capabilities(bitnet_capabilities_t *caps)
{
    memset(caps, 0, sizeof *caps);
    pthread_once(&backend_once, backend_init);
#ifdef AD_HAVE_GGML_BACKEND
    ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU");
    ggml_backend_get_features_t features =
        cpu ? (ggml_backend_get_features_t)ggml_backend_reg_get_proc_address(
                  cpu, "ggml_backend_get_features")
            : NULL;
    for (struct ggml_backend_feature *f = features ? features(cpu) : NULL;
         f && f->name; f++) {
        int on = f->value && strcmp(f->value, "0") != 0;
        if (!strcmp(f->name, "AVX2"))
            caps->has_avx2 = on;
        else if (!strcmp(f->name, "AVX512"))
            caps->has_avx512 = on;
        else if (!strcmp(f->name, "NEON"))
            caps->has_neon = on;
    }
    if (!llama_supports_gpu_offload())
        return;
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
        if (type != GGML_BACKEND_DEVICE_TYPE_GPU &&
            type != GGML_BACKEND_DEVICE_TYPE_IGPU)
            continue;
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
        const char *name = reg ? ggml_backend_reg_name(reg) : "";
        if (!strcmp(name, "CUDA"))
            caps->has_cuda = 1;
        else if (!strcmp(name, "Metal") || !strcmp(name, "MTL"))
            caps->has_metal = 1;
        else if (!strcmp(name, "ROCm") || !strcmp(name, "HIP"))
            caps->has_hip = 1;
    }
#endif
}

/* Why GPU work cannot be done here, from llama.cpp's own report (empty
 * when it can offload). */
static const char *no_gpu_reason(char *buf, size_t cap)
{
    buf[0] = '\0';
    pthread_once(&backend_once, backend_init);
    if (!llama_supports_gpu_offload()) {
        snprintf(buf, cap,
                 "llama.cpp (%s) reports no GPU offload support "
                 "(llama_supports_gpu_offload() is false: it was built for "
                 "the CPU only, has_cuda=0, has_metal=0, has_hip=0)",
                 AD_LLAMA_LIB);
        return buf;
    }
#ifdef AD_HAVE_GGML_BACKEND
    for (size_t i = 0; i < ggml_backend_dev_count(); i++) {
        enum ggml_backend_dev_type t =
            ggml_backend_dev_type(ggml_backend_dev_get(i));
        if (t == GGML_BACKEND_DEVICE_TYPE_GPU ||
            t == GGML_BACKEND_DEVICE_TYPE_IGPU)
            return buf; /* a device to offload to */
    }
    snprintf(buf, cap,
             "llama.cpp (%s) supports GPU offload but its backend registry "
             "lists no GPU device (ggml_backend_dev_count() = %zu, none of "
             "type GPU)",
             AD_LLAMA_LIB, ggml_backend_dev_count());
#endif
    return buf;
}

BITNET_API int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps)
{
    clear_error();
    if (!out_caps)
        return fail(BITNET_E_INVALID_ARG, "out_caps is NULL");
    llama_capabilities(out_caps);
    return BITNET_OK;
}

BITNET_API int32_t bitnet_cpp_abi_version(void) { return BITNET_ABI_VERSION; }


BITNET_API const char *bitnet_cpp_version(void)
{
    return "pytest-bitnet llama.cpp adapter 0.1.0 (" AD_LLAMA_LIB ")";
}

BITNET_API int32_t bitnet_cpp_get_last_error(char *buf, int32_t buf_len)
{
    if (buf && buf_len > 0)
        snprintf(buf, (size_t)buf_len, "%s", last_msg);
    size_t n = strlen(last_msg);
    return (int32_t)n;
}

BITNET_API int32_t bitnet_cpp_get_last_error_code(void) { return last_code; }

BITNET_API int bitnet_cpp_get_counters(bitnet_counters_t *o)
{
    if (!o)
        return BITNET_E_INVALID_ARG;
    memset(o, 0, sizeof *o);
    o->contexts = atomic_load(&live.contexts);
    o->models = atomic_load(&live.models);
    o->bytes = atomic_load(&live.bytes);
    o->allocations = atomic_load(&live.allocations);
    o->model_loads = atomic_load(&live.model_loads);
    o->peak_bytes = atomic_load(&live.peak);
    return BITNET_OK;
}
