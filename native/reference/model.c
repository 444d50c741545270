/* model.c — weights, KV state and the forward pass.  See model.h. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "bitnet_capture.h"
#include "bn_alloc.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "bn_log.h"
#include "bn_never.h"
#include "ggml_ops.h"
#include "pool.h"

typedef enum { ROPE_NORM, ROPE_NEOX } rope_kind;

/* What differs between the architectures we run. */
typedef struct {
    const char *name;
    rope_kind rope;
    int sub_norms;   /* attn_sub_norm / ffn_sub_norm present (bitnet) */
    int scales;      /* optional per-tensor .scale tensors (bitnet)   */
} arch_info;

static const arch_info ARCHS[] = {
    {"bitnet", ROPE_NEOX, 1, 1},
    {"llama", ROPE_NORM, 0, 0},
};
#define SUPPORTED_ARCHS "bitnet, llama"
#define SUPPORTED_WEIGHT_TYPES "F32, F16, TQ2_0, I2_S"

typedef struct {
    const float *attn_norm, *attn_sub_norm, *ffn_norm, *ffn_sub_norm;
    bn_weight wq, wk, wv, wo, gate, up, down;
} layer;

struct bn_model {
    bn_gguf *gguf; /* owns the tensor data the weights point into */
    bn_vocab *vocab;
    const arch_info *arch;
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_ff, n_head, n_head_kv;
    int32_t head_dim, n_rot;
    float eps, rope_base;
    bn_weight tok_embd, output;
    const float *output_norm;
    layer *layers;
    size_t act_bytes_per_token; /* largest bn_act_size(w, 1) of any weight */
};

typedef struct {
    float *k, *v;   /* [n_layer][n_ctx][kv_dim], NULL until first use */
    int32_t n_past;
} seq_state;

struct bn_state {
    const bn_model *m;
    int32_t n_ctx;
    bn_pool *pool; /* worker threads for the matmuls */
    seq_state seq[BN_MAX_SEQ];
    /* BITNET_CAPTURE_DIR's <dir>/reference.bnt when the context was
     * created, else "": intermediate tensors for crossval --explain */
    char capture[1024];
};

/* ---- loading ----------------------------------------------------------- */

static int get_tensor(const bn_model *m, const char *name, int required,
                      int64_t ne0, int64_t ne1, const bn_gguf_tensor **out)
{
    const bn_gguf_tensor *t = bn_gguf_find_tensor(m->gguf, name);
    *out = t;
    if (!t) {
        if (!required)
            return BITNET_OK;
        return bn_error(BITNET_E_MODEL_LOAD,
                        "tensor '%s' is missing: the %s architecture needs it; "
                        "the file is incomplete or was written for another "
                        "architecture",
                        name, m->arch->name);
    }
    int64_t want[2] = {ne0, ne1};
    for (int d = 0; d < 2; d++) {
        if (t->ne[d] != want[d] || (t->n_dims > 2 && t->ne[2] != 1))
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tensor '%s' has shape [%lld, %lld] but the "
                            "hyperparameters require [%lld, %lld]",
                            name, (long long)t->ne[0], (long long)t->ne[1],
                            (long long)ne0, (long long)ne1);
    }
    return BITNET_OK;
}

static int load_norm(const bn_model *m, const char *name, int64_t n,
                     const float **out)
{
    const bn_gguf_tensor *t;
    int rc = get_tensor(m, name, 1, n, 1, &t);
    if (rc)
        return rc;
    if (t->type != BN_TYPE_F32)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "unsupported tensor type %s for norm '%s' "
                        "(supported for norms: F32)",
                        bn_ggml_type_name(t->type), name);
    *out = (const float *)t->data;
    return BITNET_OK;
}

/* A projection; `scale_name` is its optional .scale tensor (or NULL). */
static int load_weight(const bn_model *m, const char *name,
                       const char *scale_name, int64_t ncols, int64_t nrows,
                       bn_weight *w)
{
    const bn_gguf_tensor *t;
    int rc = get_tensor(m, name, 1, ncols, nrows, &t);
    if (rc)
        return rc;
    switch (t->type) {
    case BN_TYPE_F32: case BN_TYPE_F16: case BN_TYPE_TQ2_0: case BN_TYPE_I2_S:
        break;
    default:
        return bn_error(BITNET_E_MODEL_LOAD,
                        "unsupported tensor type %s for '%s' (supported: "
                        SUPPORTED_WEIGHT_TYPES "); convert the model with a "
                        "supported quantization",
                        bn_ggml_type_name(t->type) ? bn_ggml_type_name(t->type)
                                                   : "?",
                        name);
    }
    w->type = t->type;
    w->data = t->data;
    w->ncols = ncols;
    w->nrows = nrows;
    w->row_bytes = bn_ggml_row_size(t->type, ncols);
    w->scale = 1.0f;
    if (t->type == BN_TYPE_I2_S) {
        /* BitNet.cpp keeps one float scale right after the codes */
        memcpy(&w->scale, t->data + (size_t)(ncols * nrows / 4), sizeof(float));
        if (!isfinite(w->scale))
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tensor '%s': I2_S scale is not finite", name);
    }
    if (scale_name) {
        const bn_gguf_tensor *s = bn_gguf_find_tensor(m->gguf, scale_name);
        if (s) {
            if (s->type != BN_TYPE_F32 || s->ne[0] != 1 || s->ne[1] != 1)
                return bn_error(BITNET_E_MODEL_LOAD,
                                "tensor '%s' must be a single F32 value",
                                scale_name);
            float v;
            memcpy(&v, s->data, sizeof v);
            w->scale *= v;
        }
    }
    size_t per_tok = bn_act_size(w, 1);
    if (per_tok > ((bn_model *)m)->act_bytes_per_token)
        ((bn_model *)m)->act_bytes_per_token = per_tok;
    return BITNET_OK;
}

static int load_hparams(bn_model *m)
{
    const bn_gguf *g = m->gguf;
    const char *arch = NULL;
    int rc = bn_gguf_get_str(g, "general.architecture", 1, &arch);
    if (rc)
        return rc;
    for (size_t i = 0; i < sizeof ARCHS / sizeof ARCHS[0]; i++)
        if (strcmp(arch, ARCHS[i].name) == 0)
            m->arch = &ARCHS[i];
    if (!m->arch)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "unsupported architecture '%s' (supported: "
                        SUPPORTED_ARCHS ")",
                        arch);
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    uint32_t v;
    struct { const char *suffix; int32_t *dst; int required; } ints[] = {
        {"context_length", &m->n_ctx_train, 1},
        {"embedding_length", &m->n_embd, 1},
        {"block_count", &m->n_layer, 1},
        {"feed_forward_length", &m->n_ff, 1},
        {"attention.head_count", &m->n_head, 1},
        {"attention.head_count_kv", &m->n_head_kv, 0},
        {"rope.dimension_count", &m->n_rot, 0},
    };
    m->n_head_kv = -1;
    m->n_rot = -1;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        v = (uint32_t)*ints[i].dst;
        snprintf(key, sizeof key, "%s.%s", arch, ints[i].suffix);
        if ((rc = bn_gguf_get_u32(g, key, ints[i].required, &v)))
            return rc;
        if (v > (1u << 24) && *ints[i].dst != -1)
            return bn_error(BITNET_E_MODEL_LOAD,
                            "key '%s' = %u is out of range", key, v);
        *ints[i].dst = (int32_t)v;
    }
    m->eps = 1e-5f;
    m->rope_base = 10000.0f;
    if ((rc = bn_gguf_get_f32(g, KEY("attention.layer_norm_rms_epsilon"), 1,
                              &m->eps)) ||
        (rc = bn_gguf_get_f32(g, KEY("rope.freq_base"), 0, &m->rope_base)))
        return rc;
#undef KEY
    if (m->n_head_kv == -1)
        m->n_head_kv = m->n_head;
    if (m->n_embd <= 0 || m->n_layer <= 0 || m->n_ff <= 0 || m->n_head <= 0 ||
        m->n_head_kv <= 0 || m->n_ctx_train <= 0 || m->n_embd % m->n_head ||
        m->n_head % m->n_head_kv)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "inconsistent hyperparameters: n_embd=%d n_layer=%d "
                        "n_ff=%d n_head=%d n_head_kv=%d n_ctx_train=%d (n_embd "
                        "must divide into n_head heads, n_head into n_head_kv "
                        "groups, all positive)",
                        m->n_embd, m->n_layer, m->n_ff, m->n_head,
                        m->n_head_kv, m->n_ctx_train);
    m->head_dim = m->n_embd / m->n_head;
    if (m->n_rot == -1)
        m->n_rot = m->head_dim;
    if (m->n_rot <= 0 || m->n_rot > m->head_dim || m->n_rot % 2)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "rope.dimension_count %d must be even and at most the "
                        "head size %d",
                        m->n_rot, m->head_dim);
    if (!(m->eps > 0.0f) || !isfinite(m->rope_base) || m->rope_base <= 0.0f)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "invalid rms epsilon %g or rope base %g", m->eps,
                        m->rope_base);
    return BITNET_OK;
}

static int load_tensors(bn_model *m)
{
    char n1[96], n2[96];
    int rc;
    const bn_gguf_tensor *t;
    int64_t d = m->n_embd, kvd = (int64_t)m->head_dim * m->n_head_kv;
    if ((rc = get_tensor(m, "token_embd.weight", 1, d, m->n_vocab, &t)))
        return rc;
    if ((rc = load_weight(m, "token_embd.weight", NULL, d, m->n_vocab,
                          &m->tok_embd)))
        return rc;
    m->output = m->tok_embd; /* tied unless the llama file has output.weight */
    if (!m->arch->sub_norms && bn_gguf_find_tensor(m->gguf, "output.weight") &&
        (rc = load_weight(m, "output.weight", NULL, d, m->n_vocab, &m->output)))
        return rc;
    if ((rc = load_norm(m, "output_norm.weight", d, &m->output_norm)))
        return rc;
    /* block_count comes from the file (up to 2^24): check the file can hold
     * that many layers before sizing the layer table by it.  Unchecked, a
     * one-layer file claiming 2^24 blocks zero-filled a 6 GB table and only
     * then found blk.1 missing. */
    const uint64_t per_layer = m->arch->sub_norms ? 11 : 9; /* norms + 7 weights */
    const uint64_t n_tensors = m->gguf->n_tensors;
    if ((uint64_t)m->n_layer > n_tensors / per_layer)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "block_count=%d needs at least %llu tensors (%llu per "
                        "layer) and a %llu-byte layer table, but the file has "
                        "only %llu tensors: the block count is wrong or the "
                        "file is incomplete",
                        (int)m->n_layer,
                        (unsigned long long)((uint64_t)m->n_layer * per_layer),
                        (unsigned long long)per_layer,
                        (unsigned long long)((uint64_t)m->n_layer * sizeof(layer)),
                        (unsigned long long)n_tensors);
    m->layers = bn_calloc((size_t)m->n_layer, sizeof(layer), "layer table");
    if (!m->layers)
        return BITNET_E_OOM;
    for (int32_t i = 0; i < m->n_layer; i++) {
        layer *L = &m->layers[i];
#define NAME(buf, s) (snprintf(buf, sizeof buf, "blk.%d." s, (int)i), buf)
        if ((rc = load_norm(m, NAME(n1, "attn_norm.weight"), d, &L->attn_norm)) ||
            (rc = load_norm(m, NAME(n1, "ffn_norm.weight"), d, &L->ffn_norm)))
            return rc;
        if (m->arch->sub_norms &&
            ((rc = load_norm(m, NAME(n1, "attn_sub_norm.weight"), d,
                             &L->attn_sub_norm)) ||
             (rc = load_norm(m, NAME(n1, "ffn_sub_norm.weight"), m->n_ff,
                             &L->ffn_sub_norm))))
            return rc;
        struct { const char *w, *s; int64_t cols, rows; bn_weight *dst; } ws[] = {
            {"attn_q.weight", "attn_q.scale", d, d, &L->wq},
            {"attn_k.weight", "attn_k.scale", d, kvd, &L->wk},
            {"attn_v.weight", "attn_v.scale", d, kvd, &L->wv},
            {"attn_output.weight", "attn_output.scale", d, d, &L->wo},
            {"ffn_gate.weight", "ffn_gate.scale", d, m->n_ff, &L->gate},
            {"ffn_up.weight", "ffn_up.scale", d, m->n_ff, &L->up},
            {"ffn_down.weight", "ffn_down.scale", m->n_ff, d, &L->down},
        };
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) {
            snprintf(n1, sizeof n1, "blk.%d.%s", (int)i, ws[j].w);
            snprintf(n2, sizeof n2, "blk.%d.%s", (int)i, ws[j].s);
            if ((rc = load_weight(m, n1, m->arch->scales ? n2 : NULL,
                                  ws[j].cols, ws[j].rows, ws[j].dst)))
                return rc;
        }
#undef NAME
    }
    return BITNET_OK;
}

/* Everything after the reader: vocabulary, hyperparameters, weights.  m
 * owns m->gguf; on failure m and all it holds are freed. */
static int finish_load(bn_model *m, const char *path, unsigned flags,
                       bn_step_fn step, void *step_user, bn_model **out)
{
    int rc;
    if ((rc = bn_vocab_load(m->gguf, step, step_user, &m->vocab)))
        goto fail_ctx;
    m->n_vocab = bn_vocab_n_tokens(m->vocab);
    if ((rc = load_hparams(m)))
        goto fail_ctx;
    if (!(flags & BN_MODEL_VOCAB_ONLY) && (rc = load_tensors(m)))
        goto fail_ctx;
    bn_counter_add(BN_COUNTER_MODELS, 1);
    bn_counter_add(BN_COUNTER_MODEL_LOADS, 1);
    BN_LOG(BN_LOG_DEBUG, "model", "loaded '%s': %d layers, vocab %d%s", path,
           (int)m->n_layer, (int)m->n_vocab,
           (flags & BN_MODEL_VOCAB_ONLY) ? " (vocabulary only)" : "");
    *out = m;
    return BITNET_OK;
fail_ctx:
    /* the reader names the path itself; later checks do not know it */
    bn_error_prefix("'%s': ", path);
    bn_vocab_free(m->vocab);
    bn_free(m->layers);
    bn_gguf_free(m->gguf);
    bn_free(m);
    return rc;
}

/* Both entry points: the file at path, or (in_memory) size bytes at data,
 * named path. */
static int load(const char *path, int in_memory, const void *data,
                size_t size, unsigned flags, bn_step_fn step,
                void *step_user, bn_model **out)
{
    *out = NULL;
    bn_model *m = bn_calloc(1, sizeof *m, "model");
    if (!m)
        return BITNET_E_OOM;
    unsigned gflags = (flags & BN_MODEL_VOCAB_ONLY) ? BN_GGUF_NO_DATA : 0;
    int rc = in_memory ? bn_gguf_open_memory(data, size, path, gflags, step,
                                             step_user, &m->gguf)
                       : bn_gguf_open(path, gflags, step, step_user, &m->gguf);
    if (rc) {
        bn_free(m);
        return rc;
    }
    return finish_load(m, path, flags, step, step_user, out);
}

int bn_model_load(const char *path, unsigned flags, bn_step_fn step,
                  void *step_user, bn_model **out)
{
    return load(path, 0, NULL, 0, flags, step, step_user, out);
}

int bn_model_load_memory(const void *data, size_t size, const char *name,
                         unsigned flags, bn_model **out)
{
    return load(name, 1, data, size, flags, NULL, NULL, out);
}

void bn_model_free(bn_model *m)
{
    if (!m)
        return;
    bn_vocab_free(m->vocab);
    bn_free(m->layers);
    bn_gguf_free(m->gguf);
    bn_free(m);
    bn_counter_add(BN_COUNTER_MODELS, -1);
}

const bn_vocab *bn_model_vocab(const bn_model *m) { return m->vocab; }
int32_t bn_model_n_vocab(const bn_model *m) { return m->n_vocab; }
int32_t bn_model_n_ctx_train(const bn_model *m) { return m->n_ctx_train; }
const char *bn_model_arch(const bn_model *m) { return m->arch->name; }

uint64_t bn_model_kv_bytes(const bn_model *m, int32_t n_ctx)
{
    /* Every factor comes from the file or the caller: multiply with
     * overflow checks and saturate, so an absurd size compares as huge
     * (and is refused) instead of wrapping to something small. */
    const uint64_t f[] = {2u, (uint64_t)m->n_layer, (uint64_t)(n_ctx > 0 ? n_ctx : 0),
                          (uint64_t)m->head_dim, (uint64_t)m->n_head_kv,
                          sizeof(float)};
    uint64_t bytes = 1;
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (__builtin_mul_overflow(bytes, f[i], &bytes))
            return UINT64_MAX;
    return bytes;
}

/* ---- state ------------------------------------------------------------- */

static int seq_alloc(bn_state *s, int32_t seq)
{
    seq_state *q = &s->seq[seq];
    if (q->k)
        return BITNET_OK;
    size_t half = (size_t)(bn_model_kv_bytes(s->m, s->n_ctx) / 2);
    q->k = bn_aligned_alloc(half, "KV cache (keys)");
    if (!q->k)
        goto oom;
    q->v = bn_aligned_alloc(half, "KV cache (values)");
    if (!q->v) {
        bn_aligned_free(q->k);
        q->k = NULL;
        goto oom;
    }
    return BITNET_OK;
oom:
    return bn_error(BITNET_E_OOM,
                    "out of memory allocating the KV cache for sequence %d: "
                    "n_ctx=%d needs %llu bytes for the KV cache; lower n_ctx",
                    (int)seq, (int)s->n_ctx,
                    (unsigned long long)bn_model_kv_bytes(s->m, s->n_ctx));
}

int bn_state_new(const bn_model *m, int32_t n_ctx, bn_state **out)
{
    *out = NULL;
    if (NEVER(!m->layers, "its callers (the reference backend, the fuzzer) load every model they pass with its tensors"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "model was loaded without tensor data (vocab only)");
    if (n_ctx <= 0)
        n_ctx = m->n_ctx_train;
    /* Refuse what cannot fit before asking for it: an absurd n_ctx is an
     * error with guidance, not a swap storm or an overcommitted block.  The
     * bound is physical memory, or the address-space limit (RLIMIT_AS) when
     * that is lower: past either, the allocation cannot succeed usefully. */
    uint64_t need = bn_model_kv_bytes(m, n_ctx);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t limit = (pages > 0 && page > 0) ? (uint64_t)pages * (uint64_t)page
                                             : UINT64_MAX;
    const char *what = "this machine's memory";
    struct rlimit as;
    if (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY &&
        (uint64_t)as.rlim_cur < limit) {
        limit = (uint64_t)as.rlim_cur;
        what = "the process's address-space limit (RLIMIT_AS)";
    }
    if (need > limit)
        return bn_error(BITNET_E_OOM,
                        "n_ctx=%d needs %llu bytes for the KV cache, more than "
                        "%s of %llu bytes; lower n_ctx",
                        (int)n_ctx, (unsigned long long)need, what,
                        (unsigned long long)limit);
    bn_state *s = bn_calloc(1, sizeof *s, "context state");
    if (!s)
        return BITNET_E_OOM;
    s->m = m;
    s->n_ctx = n_ctx;
    const char *dir = getenv(BN_CAPTURE_ENV);
    if (dir && *dir && strlen(dir) + sizeof "/reference.bnt" <= sizeof s->capture)
        snprintf(s->capture, sizeof s->capture, "%s/reference.bnt", dir);
    /* sequence 0 up front: OOM shows at create */
    int rc = seq_alloc(s, 0);
    if (!rc)
        rc = bn_pool_new(bn_pool_default_threads(), &s->pool);
    if (rc) {
        bn_state_free(s);
        return rc;
    }
    *out = s;
    return BITNET_OK;
}

void bn_state_free(bn_state *s)
{
    if (!s)
        return;
    bn_pool_free(s->pool);
    for (int i = 0; i < BN_MAX_SEQ; i++) {
        bn_aligned_free(s->seq[i].k);
        bn_aligned_free(s->seq[i].v);
    }
    bn_free(s);
}

int32_t bn_state_n_ctx(const bn_state *s) { return s->n_ctx; }

int32_t bn_state_n_past(const bn_state *s, int32_t seq)
{
    return (seq >= 0 && seq < BN_MAX_SEQ) ? s->seq[seq].n_past : 0;
}

void bn_state_reset(bn_state *s, int32_t seq)
{
    for (int32_t i = 0; i < BN_MAX_SEQ; i++)
        if (seq < 0 || seq == i)
            s->seq[i].n_past = 0;
}

/* ---- forward pass ------------------------------------------------------ */

int bn_forward_check(const bn_state *s, int32_t seq, const int32_t *tokens,
                     int32_t n_tokens)
{
    if (seq < 0 || seq >= BN_MAX_SEQ)
        return bn_error(BITNET_E_INVALID_ARG,
                        "seq_id %d is out of range: use 0..%d", (int)seq,
                        BN_MAX_SEQ - 1);
    if (n_tokens <= 0)
        return bn_error(BITNET_E_INFERENCE,
                        "empty token list: evaluate needs at least one token "
                        "(n_tokens=%d)",
                        (int)n_tokens);
    if (!tokens)
        return bn_error(BITNET_E_INVALID_ARG, "tokens is NULL");
    int32_t n_vocab = s->m->n_vocab;
    for (int32_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return bn_error(BITNET_E_INFERENCE,
                            "invalid token id %d at position %d: ids must be "
                            "in [0, %d) for this model's vocabulary",
                            (int)tokens[i], (int)i, (int)n_vocab);
    int64_t total = (int64_t)s->seq[seq].n_past + n_tokens;
    if (total > s->n_ctx)
        return bn_error(BITNET_E_CONTEXT_OVERFLOW,
                        "context overflow: %d tokens already in sequence %d "
                        "plus %d new ones = %lld exceeds n_ctx=%d; create the "
                        "session with a larger n_ctx or reset it",
                        (int)s->seq[seq].n_past, (int)seq, (int)n_tokens,
                        (long long)total, (int)s->n_ctx);
    return BITNET_OK;
}

/* Four floats in one vector: GCC's -O2 leaves a loop over pointers that
 * may overlap scalar (it does not version loops for aliasing), and the
 * elementwise loops below are most of rmsnorm's time.  Each lane rounds
 * as the scalar expression does; loads and stores go through memcpy, so
 * in place (y is x) is well defined. */
typedef float f32x4 __attribute__((vector_size(16)));

/* y[i] = (x[i] * scale) * w[i] (y may be x) */
static void scale_mul(float *y, const float *x, float scale, const float *w,
                      int64_t n)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        f32x4 a, b;
        memcpy(&a, x + i, sizeof a);
        memcpy(&b, w + i, sizeof b);
        a = (a * scale) * b;
        memcpy(y + i, &a, sizeof a);
    }
    for (; i < n; i++)
        y[i] = (x[i] * scale) * w[i];
}

/* x[i] += y[i]: the residual connections */
static void add_into(float *x, const float *y, int64_t n)
{
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        f32x4 a, b;
        memcpy(&a, x + i, sizeof a);
        memcpy(&b, y + i, sizeof b);
        a += b;
        memcpy(x + i, &a, sizeof a);
    }
    for (; i < n; i++)
        x[i] += y[i];
}

/* y = x / rms(x) * w, as ggml_rms_norm followed by ggml_mul, rounding
 * where ggml's CPU op rounds: each square in float, summed in double, the
 * mean rounded to float.  (Squaring in double instead moves the scale by an
 * ulp now and then, and an ulp is enough to push an activation across a
 * Q8_K rounding step downstream: issue 19.) */
static void rmsnorm(float *y, const float *x, const float *w, int64_t n,
                    float eps)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / (double)n);
    scale_mul(y, x, 1.0f / sqrtf(mean + eps), w, n);
}

/* rmsnorm of n_tokens rows of n (y may be x).  Each row's sum is a chain
 * of dependent double adds, so its latency bounds one row; four rows at
 * once keep four chains in flight, each summed in its own order. */
static void rmsnorm_rows(float *y, const float *x, const float *w,
                         int64_t n_tokens, int64_t n, float eps)
{
    int64_t t = 0;
    for (; t + 4 <= n_tokens; t += 4) {
        const float *x0 = x + t * n, *x1 = x0 + n, *x2 = x1 + n, *x3 = x2 + n;
        double s[4] = {0.0, 0.0, 0.0, 0.0};
        for (int64_t i = 0; i < n; i++) {
            s[0] += (double)(x0[i] * x0[i]);
            s[1] += (double)(x1[i] * x1[i]);
            s[2] += (double)(x2[i] * x2[i]);
            s[3] += (double)(x3[i] * x3[i]);
        }
        for (int k = 0; k < 4; k++) {
            const float mean = (float)(s[k] / (double)n);
            scale_mul(y + (t + k) * n, x + (t + k) * n,
                      1.0f / sqrtf(mean + eps), w, n);
        }
    }
    for (; t < n_tokens; t++)
        rmsnorm(y + t * n, x + t * n, w, n, eps);
}

/* Up to three weights that multiply the same input (Q, K and V; gate and
 * up) as one job: their rows are one item space, weight k's rows at
 * [start[k], start[k+1]).  So the input is prepared once, not once per
 * weight, and the pool runs one job with one wake-up and one wait instead
 * of three (with two threads, each job's last chunks leave a worker idle).
 * Each (row, token) result does not depend on the rows computed with it
 * (kernels.c), so the values are those of separate products. */
#define MM_MAX 3
typedef struct {
    int n_w;
    const bn_weight *w[MM_MAX];
    float *y[MM_MAX];
    int64_t start[MM_MAX + 1];
    const void *act;
    int64_t n_tokens;
} mm_job;

static void mm_rows(void *arg, int64_t i0, int64_t i1)
{
    const mm_job *j = arg;
    for (int k = 0; k < j->n_w; k++) {
        const int64_t lo = i0 > j->start[k] ? i0 : j->start[k];
        const int64_t hi = i1 < j->start[k + 1] ? i1 : j->start[k + 1];
        if (lo < hi)
            bn_matmul_rows(j->w[k], j->act, j->n_tokens, j->y[k],
                           lo - j->start[k], hi - j->start[k]);
    }
}

/* Below this many weight-times-token products a matmul stays on the
 * calling thread: waking the workers would cost more than it saves. */
#define PARALLEL_MIN_WORK (1 << 18)
/* At most this many products between two deadline checks (a millisecond or
 * two): the output projection of a 512-token prompt is ~10^10 of them. */
#define POLL_WORK (1 << 24)

/* y[k][n_tokens x w[k]->nrows] = W[k] x for the n weights of one input
 * (all of one type and row length: one prepared activation), each scaled
 * by its per-tensor scale (already folded into the I2_S kernel).  Rows
 * are shared among the context's threads in chunks of a multiple of 16,
 * no larger than POLL_WORK products; the step callback is asked before
 * each chunk the calling thread takes, so a deadline stops a long matmul
 * part way (the output is then garbage: the caller abandons the
 * evaluation). */
static int matmul_n(bn_pool *pool, int n, const bn_weight *const *w,
                    const float *x, int64_t n_tokens, float *const *y,
                    void *act, bn_step_fn step, void *step_user)
{
    mm_job job = {.n_w = n, .act = act, .n_tokens = n_tokens};
    for (int k = 0; k < n; k++) {
        job.w[k] = w[k];
        job.y[k] = y[k];
        job.start[k + 1] = job.start[k] + w[k]->nrows;
    }
    const int64_t rows = job.start[n], ncols = w[0]->ncols;
    bn_act_prepare(w[0], x, n_tokens, act);
    const int64_t work = rows * ncols * n_tokens;
    int threads = bn_pool_threads(pool);
    int64_t grain = rows;
    if (threads > 1 && work >= PARALLEL_MIN_WORK)
        grain = (rows / (threads * 4) + 15) & ~(int64_t)15;
    int64_t bounded = (POLL_WORK / (ncols * n_tokens) + 15) & ~(int64_t)15;
    if (grain > bounded)
        grain = bounded;
    if (grain < 16)
        grain = 16;
    int rc = bn_pool_run(grain < rows ? pool : NULL, mm_rows, &job, rows,
                         grain, step, step_user);
    if (rc)
        return rc;
    for (int k = 0; k < n; k++) {
        if (w[k]->type == BN_TYPE_I2_S || w[k]->scale == 1.0f)
            continue;
        const int64_t m = n_tokens * w[k]->nrows;
        for (int64_t i = 0; i < m; i++)
            y[k][i] *= w[k]->scale;
    }
    return BITNET_OK;
}

static int matmul(bn_pool *pool, const bn_weight *w, const float *x,
                  int64_t n_tokens, float *y, void *act, bn_step_fn step,
                  void *step_user)
{
    return matmul_n(pool, 1, &w, x, n_tokens, &y, act, step, step_user);
}

/* Weights w[0..n) of one input, in as few jobs as their types allow: a
 * run of weights with the same type and row length shares one. */
static int matmul_group(bn_pool *pool, int n, const bn_weight *const *w,
                        const float *x, int64_t n_tokens, float *const *y,
                        void *act, bn_step_fn step, void *step_user)
{
    for (int k0 = 0; k0 < n;) {
        int k1 = k0 + 1;
        while (k1 < n && w[k1]->type == w[k0]->type &&
               w[k1]->ncols == w[k0]->ncols)
            k1++;
        int rc = matmul_n(pool, k1 - k0, w + k0, x, n_tokens, y + k0, act,
                          step, step_user);
        if (rc)
            return rc;
        k0 = k1;
    }
    return BITNET_OK;
}

/* Causal attention of tokens [t0, t1) for heads [h0, h1), into out (token
 * t, head h at out + t * d + h * hd).  Head h keeps its scores in att + h *
 * n_ctx, so heads run on any thread in any order; each (token, head) is
 * computed exactly as one loop over them would (scores, softmax and the
 * weighted sum of values each in ggml's order of rounding: ggml_ops.h). */
typedef struct {
    const float *q, *kc, *vc;
    float *att, *out;
    int64_t t0, t1, d, hd, kvd, n_ctx;
    int32_t n_past, group;
    float kq_scale;
} attn_job;

static void attn_heads(void *arg, int64_t h0, int64_t h1)
{
    const attn_job *j = arg;
    for (int64_t h = h0; h < h1; h++) {
        float *att = j->att + h * j->n_ctx;
        const int64_t kvo = (h / j->group) * j->hd;
        for (int64_t t = j->t0; t < j->t1; t++) {
            const float *qh = j->q + t * j->d + h * j->hd;
            const int32_t n_kv = j->n_past + (int32_t)t + 1;
            bn_ggml_scores(att, qh, j->kc + kvo, j->kvd, n_kv, j->hd,
                           j->kq_scale);
            bn_ggml_softmax(att, n_kv);
            bn_ggml_weighted_sum(j->out + t * j->d + h * j->hd, j->vc + kvo,
                                 j->kvd, att, n_kv, j->hd);
        }
    }
}

/* The rotation's cos and sin for position pos, cs[i] and cs[n_rot/2 + i]
 * for i < n_rot / 2: theta advances by repeated multiplication, as ggml's
 * rope cache does, so angles match llama.cpp's to the last bit.  Every
 * head of a token, in every layer, rotates by the same angles: computed
 * once per token and evaluation, not once per head or layer. */
static void rope_cache(float *cs, int32_t n_rot, int32_t pos, float base)
{
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int32_t i = 0; i < n_rot / 2; i++) {
        cs[i] = cosf(theta);
        cs[n_rot / 2 + i] = sinf(theta);
        theta *= theta_scale;
    }
}

/* Every logit must be a number: NaN or Inf means broken weights or a
 * kernel bug, reported at the first position where it shows. */
static int check_finite(const float *logits, int64_t rows, int64_t cols)
{
    /* a pass of integer ands, adds and ors first, the scan for the
     * message only when it finds something: an all-ones exponent (inf or
     * NaN), and only that, carries into bit 31 when its lowest bit is
     * added.  Written in groups of 8 so that -O2 vectorizes it (the scalar
     * isfinite loop cost 2% of a 4-token evaluation). */
    const int64_t total = rows * cols;
    uint32_t bad = 0;
    int64_t i = 0;
    for (; i + 8 <= total; i += 8) {
        uint32_t u[8];
        memcpy(u, logits + i, sizeof u);
        for (int k = 0; k < 8; k++)
            bad |= (u[k] & 0x7F800000u) + 0x00800000u;
    }
    for (; i < total; i++) {
        uint32_t u;
        memcpy(&u, logits + i, sizeof u);
        bad |= (u & 0x7F800000u) + 0x00800000u;
    }
    if (!(bad & 0x80000000u))
        return BITNET_OK;
    for (int64_t i = 0; i < rows * cols; i++)
        if (!isfinite(logits[i]))
            return bn_error(BITNET_E_INFERENCE,
                            "non-finite logit (%s) at token position %lld, "
                            "vocab index %lld: the model's weights or the "
                            "computation produced NaN/Inf",
                            isnan(logits[i]) ? "NaN" : "Inf",
                            (long long)(i / cols), (long long)(i % cols));
    return BITNET_OK;
}

/* The `eval.logits` fault point: < 0 a generic action fired (return it),
 * 1 nan poisoned the last token's first logit (the finiteness check then
 * reports it), 0 nothing.  Out of line, so that placing the point leaves
 * the code of bn_forward as it was. */
static __attribute__((noinline, cold)) int logits_fault(float *logits,
                                                         int64_t rows,
                                                         int64_t cols)
{
    bn_fault_special fs;
    int rc = BN_FAULT_SPECIAL(EVAL_LOGITS, &fs);
    if (rc > 0 && fs.action == BITNET_FAULT_NAN) {
        logits[(rows - 1) * cols] = NAN;
        return 1;
    }
    return rc;
}

typedef struct {
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2;
    float *rope; /* rope_cache's n_rot angles of each token */
    void *act;
} scratch;

/* Appends n tokens x ne0 values named "<name>-<layer>" (layer < 0: no
 * suffix) to the capture file, in bitnet_capture.h's format.  Best effort:
 * a debugging aid that must never fail an evaluation. */
static __attribute__((noinline, cold)) void capture_write(
    const bn_state *s, const char *name, int32_t layer, int32_t pos0,
    const float *x, int64_t ne0, int64_t n)
{
    bn_capture_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, BN_CAPTURE_MAGIC, 4);
    h.pos0 = pos0;
    if (layer >= 0)
        snprintf(h.name, sizeof h.name, "%s-%d", name, (int)layer);
    else
        snprintf(h.name, sizeof h.name, "%s", name);
    h.ne0 = ne0;
    h.ne1 = n;
    FILE *f = fopen(s->capture, "ab");
    if (!f)
        return;
    fwrite(&h, sizeof h, 1, f);
    fwrite(x, sizeof(float), (size_t)(ne0 * n), f);
    fclose(f);
}

static void *scratch_take(unsigned char **p, size_t bytes)
{
    void *r = *p;
    *p += (bytes + 63) & ~(size_t)63;
    return r;
}

int bn_forward(bn_state *s, int32_t seq, const int32_t *tokens,
               int32_t n_tokens, float *logits, bn_step_fn step,
               void *step_user)
{
    int rc = bn_forward_check(s, seq, tokens, n_tokens);
    if (rc)
        return rc;
    if ((rc = seq_alloc(s, seq)))
        return rc;
    const bn_model *m = s->m;
    const int64_t n = n_tokens, d = m->n_embd, ff = m->n_ff;
    const int64_t hd = m->head_dim, kvd = hd * m->n_head_kv;
    const int32_t n_past = s->seq[seq].n_past;
    const int32_t group = m->n_head / m->n_head_kv;
    const float kq_scale = 1.0f / sqrtf((float)hd);

    size_t sizes[] = {
        (size_t)(n * d), (size_t)(n * (d > ff ? d : ff)), (size_t)(n * d),
        (size_t)(n * kvd), (size_t)(n * kvd), (size_t)m->n_head * s->n_ctx,
        (size_t)(n * ff), (size_t)(n * ff), (size_t)(n * m->n_rot),
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += ((sizes[i] * sizeof(float)) + 63) & ~(size_t)63;
    total += m->act_bytes_per_token * (size_t)n + 64;
    unsigned char *block = bn_aligned_alloc(total, "evaluation scratch");
    if (!block)
        return BITNET_E_OOM;
    unsigned char *p = block;
    scratch S;
    float **slots[] = {&S.x,   &S.xb, &S.q,   &S.k,   &S.v,
                       &S.att, &S.hb, &S.hb2, &S.rope};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        *slots[i] = scratch_take(&p, sizes[i] * sizeof(float));
    S.act = p;

    for (int64_t t = 0; t < n; t++) {
        bn_dequant_row(&m->tok_embd, tokens[t], S.x + t * d);
        rope_cache(S.rope + t * m->n_rot, m->n_rot, n_past + (int32_t)t,
                   m->rope_base);
    }
    const int neox = m->arch->rope == ROPE_NEOX;

    seq_state *sq = &s->seq[seq];
    /* the tensors llama.cpp's graph names, for crossval --explain */
#define CAPTURE(name, l, x, ne0)                                              \
    do {                                                                      \
        if (s->capture[0])                                                    \
            capture_write(s, (name), (l), n_past, (x), (ne0), n);             \
    } while (0)
#define MATMUL(w, in, out)                                                    \
    matmul(s->pool, (w), (in), n, (out), S.act, step, step_user)
#define MATMUL_GROUP(k, w, in, out)                                           \
    matmul_group(s->pool, (k), (w), (in), n, (out), S.act, step, step_user)
    for (int32_t l = 0; l < m->n_layer; l++) {
        if ((step && (rc = step(step_user))) || (rc = BN_FAULT(EVAL_STEP)))
            goto out;
        const layer *L = &m->layers[l];
        float *kc = sq->k + (size_t)l * s->n_ctx * kvd;
        float *vc = sq->v + (size_t)l * s->n_ctx * kvd;

        rmsnorm_rows(S.xb, S.x, L->attn_norm, n, d, m->eps);
        CAPTURE("attn_norm", l, S.xb, d);
        {
            const bn_weight *w[] = {&L->wq, &L->wk, &L->wv};
            float *y[] = {S.q, S.k, S.v};
            if ((rc = MATMUL_GROUP(3, w, S.xb, y)))
                goto out;
        }
        for (int64_t t = 0; t < n; t++) {
            const int32_t pos = n_past + (int32_t)t;
            const float *cs = S.rope + t * m->n_rot;
            bn_ggml_rope(S.q + t * d, m->n_head, hd, m->n_rot, cs, neox);
            bn_ggml_rope(S.k + t * kvd, m->n_head_kv, hd, m->n_rot, cs, neox);
            /* positions past n_past are scratch until n_past moves, so a
             * failed call leaves the sequence as it was */
            memcpy(kc + (size_t)pos * kvd, S.k + t * kvd, kvd * sizeof(float));
            memcpy(vc + (size_t)pos * kvd, S.v + t * kvd, kvd * sizeof(float));
        }
        CAPTURE("Qcur", l, S.q, d);
        CAPTURE("Kcur", l, S.k, kvd);
        CAPTURE("Vcur", l, S.v, kvd);
        /* causal attention into S.xb: blocks of tokens, each block's heads
         * shared by the pool; the deadline is checked between blocks, which
         * are kept to about POLL_WORK products (quadratic in the tokens) */
        {
            attn_job job = {.q = S.q, .kc = kc, .vc = vc, .att = S.att,
                            .out = S.xb, .d = d, .hd = hd, .kvd = kvd,
                            .n_ctx = s->n_ctx, .n_past = n_past,
                            .group = group, .kq_scale = kq_scale};
            /* scores and weighted sums: 2 hd products per (head, key) */
            const int64_t per_token = (int64_t)m->n_head * (n_past + n) * 2 * hd;
            const int64_t tb = POLL_WORK / per_token > 0 ? POLL_WORK / per_token : 1;
            for (job.t0 = 0; job.t0 < n; job.t0 = job.t1) {
                if (step && (rc = step(step_user)))
                    goto out;
                job.t1 = job.t0 + tb < n ? job.t0 + tb : n;
                const int64_t work = (int64_t)m->n_head * (job.t1 - job.t0) *
                                     (n_past + job.t1) * 2 * hd;
                if ((rc = bn_pool_run(work >= PARALLEL_MIN_WORK ? s->pool : NULL,
                                      attn_heads, &job, m->n_head, 1, NULL,
                                      NULL)))
                    goto out;
            }
        }
        CAPTURE("kqv_out", l, S.xb, d);
        if (L->attn_sub_norm) {
            rmsnorm_rows(S.xb, S.xb, L->attn_sub_norm, n, d, m->eps);
            CAPTURE("attn_sub_norm", l, S.xb, d);
        }
        /* S.q is free again */
        if ((rc = MATMUL(&L->wo, S.xb, S.q)))
            goto out;
        CAPTURE("attn_out", l, S.q, d);
        add_into(S.x, S.q, n * d);
        CAPTURE("ffn_inp", l, S.x, d);

        rmsnorm_rows(S.xb, S.x, L->ffn_norm, n, d, m->eps);
        CAPTURE("ffn_norm", l, S.xb, d);
        {
            const bn_weight *w[] = {&L->gate, &L->up};
            float *y[] = {S.hb, S.hb2};
            if ((rc = MATMUL_GROUP(2, w, S.xb, y)))
                goto out;
        }
        CAPTURE("ffn_gate", l, S.hb, ff);
        CAPTURE("ffn_up", l, S.hb2, ff);
        for (int64_t t = 0; t < n; t++) /* ggml's SiLU: ggml_ops.h */
            bn_ggml_swiglu(S.hb + t * ff, S.hb + t * ff, S.hb2 + t * ff, ff);
        CAPTURE("ffn_sub_out", l, S.hb, ff);
        if (L->ffn_sub_norm) {
            rmsnorm_rows(S.hb, S.hb, L->ffn_sub_norm, n, ff, m->eps);
            CAPTURE("ffn_sub_norm", l, S.hb, ff);
        }
        if ((rc = MATMUL(&L->down, S.hb, S.q)))
            goto out;
        CAPTURE("ffn_down", l, S.q, d);
        add_into(S.x, S.q, n * d);
        CAPTURE("l_out", l, S.x, d);
    }
    if (step && (rc = step(step_user)))
        goto out;
    rmsnorm_rows(S.xb, S.x, m->output_norm, n, d, m->eps);
    CAPTURE("result_norm", -1, S.xb, d);
    if ((rc = MATMUL(&m->output, S.xb, logits)))
        goto out;
    CAPTURE("result_output", -1, logits, m->n_vocab);
#undef MATMUL
#undef MATMUL_GROUP
#undef CAPTURE
    const int poisoned = BN_FAULT_ANY_ARMED() ? logits_fault(logits, n, m->n_vocab) : 0;
    if (poisoned < 0) {
        rc = poisoned;
        goto out;
    }
    if ((rc = check_finite(logits, n, m->n_vocab))) {
        if (poisoned)
            bn_error_prefix("%s: ", bn_fault_note());
        goto out; /* unusable logits: the sequence does not advance */
    }
    sq->n_past = n_past + n_tokens;
out:
    bn_aligned_free(block);
    return rc;
}
