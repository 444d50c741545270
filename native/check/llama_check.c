/*
 * llama_check.c — the rules of llama_check.h.
 *
 * Each rule names what llama.cpp does when it is broken, found by running
 * the file against llama.cpp (tests/native/test_llama_check.py keeps one
 * file per rule) and by reading where it asserts: load_hparams and the
 * graph builders (src/llama-model.cpp, src/models/), the vocabulary loader
 * and tokenizers (src/llama-vocab.cpp), the metadata getters
 * (src/llama-model-loader.cpp), ggml's CPU kernels (ggml/src/ggml-cpu/).
 */
#include "llama_check.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_deadline.h"
#include "bn_error.h"
#include "bn_never.h"

/* ggml-backend's TENSOR_ALIGNMENT: llama.cpp maps the file and makes CPU
 * buffers of the mapped tensor data in place, asserting this alignment of
 * the buffer's start; which tensor starts a buffer depends on how llama.cpp
 * assigns buffer types, so every tensor must start on it. */
#define TENSOR_ALIGNMENT 32
/* llama.cpp's LLAMA_MAX_LAYERS (llama-hparams.h). */
#define MAX_LAYERS 512u
/* Vocabulary work between deadline polls. */
#define POLL_EVERY 65536u

/* ---- small helpers ------------------------------------------------------- */

/* s for a message: printable ASCII as is, anything else \xNN (the
 * architecture name comes from the file). */
static const char *quote(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 5 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f && c != '\\')
            dst[o++] = (char)c;
        else
            o += (size_t)snprintf(dst + o, cap - o, "\\x%02x", c);
    }
    dst[o] = '\0';
    return dst;
}

typedef struct {
    const bn_gguf *g;
    char arch[64];    /* quoted, for messages */
    const char *raw;  /* general.architecture as in the file */
    char key[160];    /* scratch: "<arch>.<suffix>" */
} ctx;

static const char *arch_key(ctx *c, const char *suffix)
{
    snprintf(c->key, sizeof c->key, "%s.%s", c->raw, suffix);
    return c->key;
}

/* An optional u32 key: *present says whether it is there.  A key of a type
 * no getter accepts is llama.cpp's to refuse (it does, cleanly): the
 * getter's error is returned. */
static int opt_u32(ctx *c, const char *suffix, uint32_t *out, int *present)
{
    const char *key = arch_key(c, suffix);
    *present = bn_gguf_find_kv(c->g, key) != NULL;
    return *present ? bn_gguf_get_u32(c->g, key, 1, out) : BITNET_OK;
}

/* ---- hyperparameters ----------------------------------------------------- */

/* <arch>.<suffix> as llama.cpp's get_key_or_arr reads it: one u32 for every
 * layer, or an integer array with an entry per layer.  This libllama
 * refuses other element types and lengths by itself, but says why only in
 * its log (and llama.cpp's plain array getter asserts on float and string
 * elements): refused here with the key named.  Absent: *present = 0, out
 * untouched. */
static int per_layer(ctx *c, const char *suffix, uint32_t n_layer,
                     uint32_t *out, int *present)
{
    const char *key = arch_key(c, suffix);
    const bn_gguf_kv *kv = bn_gguf_find_kv(c->g, key);
    *present = kv != NULL;
    if (!kv)
        return BITNET_OK;
    if (kv->type != BN_GGUF_ARRAY) {
        uint32_t v;
        int rc = bn_gguf_get_u32(c->g, key, 1, &v);
        for (uint32_t i = 0; !rc && i < n_layer; i++)
            out[i] = v;
        return rc;
    }
    if (kv->arr_type != BN_GGUF_UINT32 && kv->arr_type != BN_GGUF_INT32)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' is an array of %s: llama.cpp reads it as "
                        "a u32, or an array of u32 or i32 with one entry per "
                        "layer, and refuses anything else; store it so",
                        key, kv->arr_type == BN_GGUF_FLOAT32   ? "f32"
                             : kv->arr_type == BN_GGUF_STRING ? "strings"
                                                               : "another type");
    if (kv->n != n_layer)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' has %" PRIu64 " entries: llama.cpp needs "
                        "one per layer (block_count = %u)",
                        key, kv->n, n_layer);
    /* i32 entries are read as their u32 bits, as llama.cpp does */
    memcpy(out, kv->data, (size_t)n_layer * sizeof *out);
    return BITNET_OK;
}

/* The largest entry of a per-layer key (0 when absent). */
static int per_layer_max(ctx *c, const char *suffix, uint32_t n_layer,
                         uint32_t *out)
{
    uint32_t v[MAX_LAYERS] = {0};
    int present;
    int rc = per_layer(c, suffix, n_layer, v, &present);
    *out = 0;
    for (uint32_t i = 0; !rc && i < n_layer; i++)
        if (v[i] > *out)
            *out = v[i];
    return rc;
}

/* The expert counts: llama.cpp's load_hparams asserts each of these. */
static int check_experts(ctx *c, uint32_t n_layer)
{
    uint32_t n_expert = 0, used = 0, groups = 0, group_used = 0;
    int p, rc;
    if ((rc = opt_u32(c, "expert_count", &n_expert, &p)) ||
        (rc = per_layer_max(c, "expert_used_count", n_layer, &used)) ||
        (rc = opt_u32(c, "expert_group_count", &groups, &p)) ||
        (rc = opt_u32(c, "expert_group_used_count", &group_used, &p)))
        return rc;
    const char *why = NULL;
    if (n_expert == 0 && used)
        why = "expert_used_count must be 0 without experts (expert_count = 0)";
    else if (n_expert == 0 && groups)
        why = "expert_group_count must be 0 without experts (expert_count = 0)";
    else if (n_expert && used == 0)
        why = "expert_used_count must be at least 1 when expert_count > 0";
    else if (used > n_expert)
        why = "expert_used_count must not exceed expert_count";
    else if (n_expert && groups >= n_expert)
        why = "expert_group_count must be less than expert_count";
    else if (groups > 1 && n_expert % groups)
        why = "expert_count must be a multiple of expert_group_count";
    else if (groups > 1 && (group_used == 0 || group_used >= groups))
        why = "expert_group_used_count must be 1 .. expert_group_count - 1";
    if (!why)
        return BITNET_OK;
    return bn_error(BITNET_E_MODEL_LOAD,
                    "keys '%s.expert_*' (expert_count = %u, "
                    "expert_used_count = %u, expert_group_count = %u, "
                    "expert_group_used_count = %u): %s; llama.cpp aborts the "
                    "process otherwise (GGML_ASSERT in load_hparams)",
                    c->arch, n_expert, used, groups, group_used, why);
}

/* Every float key of the architecture ending in "epsilon" (rms norm, layer
 * norm, group norm ...): ggml's norm kernels assert eps >= 0, which NaN
 * fails too.  Keys of other types are llama.cpp's to refuse. */
static int check_epsilons(ctx *c)
{
    size_t n = strlen(c->raw);
    for (uint64_t i = 0; i < c->g->n_kv; i++) {
        const bn_gguf_kv *kv = &c->g->kv[i];
        size_t len = strlen(kv->key);
        if (len < n + 8 || strncmp(kv->key, c->raw, n) || kv->key[n] != '.' ||
            strcmp(kv->key + len - 7, "epsilon"))
            continue;
        double v;
        if (kv->type == BN_GGUF_FLOAT32)
            v = *(const float *)kv->data;
        else if (kv->type == BN_GGUF_FLOAT64)
            v = *(const double *)kv->data;
        else
            continue;
        if (!(v >= 0.0))
            return bn_error(BITNET_E_MODEL_LOAD,
                            "key '%s' = %g: llama.cpp's norm kernels need an "
                            "epsilon >= 0 and abort the process on a negative "
                            "or NaN one (GGML_ASSERT(eps >= 0.0f)); use the "
                            "model's real epsilon (typically 1e-5 or 1e-6)",
                            kv->key, v);
    }
    return BITNET_OK;
}

/* rope.scaling.type: load_hparams asserts the string is one it knows. */
static int check_rope_scaling(ctx *c)
{
    const char *key = arch_key(c, "rope.scaling.type");
    const bn_gguf_kv *kv = bn_gguf_find_kv(c->g, key);
    if (!kv || kv->type != BN_GGUF_STRING)
        return BITNET_OK;
    const char *s = ((const bn_gguf_str *)kv->data)->data;
    static const char *const known[] = {"none", "linear", "yarn", "longrope"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(s, known[i]))
            return BITNET_OK;
    char q[96];
    return bn_error(BITNET_E_MODEL_LOAD,
                    "key '%s' = '%s': llama.cpp knows none, linear, yarn and "
                    "longrope, and aborts the process on any other scaling "
                    "type (GGML_ASSERT in load_hparams)",
                    key, quote(q, sizeof q, s));
}

/* Architectures whose graph llama.cpp builds as a plain transformer: RoPE
 * over the key head on every layer, one head size for Q, K and V, an
 * attention block in every layer.  For them llama.cpp asserts more than it
 * checks (src/models/llama.cpp, bitnet.cpp: n_embd_head == n_embd_head_k,
 * == n_embd_head_v; ggml's RoPE: n_dims even and <= the head size). */
static const char *const TRANSFORMERS[] = {"llama", "bitnet"};

static int is_transformer(const ctx *c)
{
    for (size_t i = 0; i < sizeof TRANSFORMERS / sizeof TRANSFORMERS[0]; i++)
        if (!strcmp(c->raw, TRANSFORMERS[i]))
            return 1;
    return 0;
}

static int check_heads(ctx *c, uint32_t n_layer)
{
    uint32_t n_embd = 0, head[MAX_LAYERS] = {0}, head_kv[MAX_LAYERS];
    int have_embd, have_head, have_kv, rc;
    if ((rc = opt_u32(c, "embedding_length", &n_embd, &have_embd)) ||
        (rc = per_layer(c, "attention.head_count", n_layer, head, &have_head)))
        return rc;
    memcpy(head_kv, head, sizeof head_kv); /* llama.cpp's default */
    if ((rc = per_layer(c, "attention.head_count_kv", n_layer, head_kv,
                        &have_kv)))
        return rc;
    int transformer = is_transformer(c);
    for (uint32_t il = 0; il < n_layer; il++) {
        if (head_kv[il] && head[il] % head_kv[il])
            return bn_error(BITNET_E_MODEL_LOAD,
                            "layer %u: %s.attention.head_count = %u is not a "
                            "multiple of attention.head_count_kv = %u: "
                            "llama.cpp shares each KV head among a whole "
                            "number of query heads and aborts the process "
                            "otherwise (GGML_ASSERT(ggml_can_mul_mat))",
                            il, c->arch, head[il], head_kv[il]);
        if (transformer && head[il] && !head_kv[il])
            return bn_error(BITNET_E_MODEL_LOAD,
                            "layer %u: %s.attention.head_count_kv = 0 with "
                            "%u query heads: llama.cpp's %s graph needs a KV "
                            "head in every attention layer and aborts the "
                            "process otherwise (GGML_ASSERT in ggml_reshape)",
                            il, c->arch, head[il], c->arch);
    }
    /* What follows is about heads: llama.cpp skips it without them. */
    if (!have_embd || !have_head || head[0] == 0)
        return BITNET_OK;
    uint32_t head_dim = n_embd / head[0], k_dim = head_dim, v_dim = head_dim;
    uint32_t n_rot;
    int have_k, have_v, have_rot;
    if ((rc = opt_u32(c, "attention.key_length", &k_dim, &have_k)) ||
        (rc = opt_u32(c, "attention.value_length", &v_dim, &have_v)))
        return rc;
    n_rot = k_dim; /* llama.cpp's default */
    if ((rc = opt_u32(c, "rope.dimension_count", &n_rot, &have_rot)))
        return rc;
    if (transformer && (k_dim != head_dim || v_dim != head_dim))
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s.attention.%s_length' = %u: llama.cpp's %s "
                        "graph takes one head size for queries, keys and "
                        "values, embedding_length / head_count = %u / %u = "
                        "%u, and aborts the process on another (GGML_ASSERT "
                        "in its graph builder); drop the key or set it to %u",
                        c->arch, k_dim != head_dim ? "key" : "value",
                        k_dim != head_dim ? k_dim : v_dim, c->arch, n_embd,
                        head[0], head_dim, head_dim);
    /* ggml's RoPE rotates pairs of the first n_rot dimensions of each key
     * head: it asserts n_rot even and within the head; with 0 its YaRN
     * correction loops without end inside one kernel, where no deadline
     * reaches.  A count written in the file is held to that everywhere;
     * the default (the head size) only where the graph ropes every head. */
    if ((have_rot || transformer) &&
        (n_rot == 0 || n_rot % 2 || n_rot > k_dim)) {
        if (have_rot)
            return bn_error(BITNET_E_MODEL_LOAD,
                            "key '%s.rope.dimension_count' = %u: llama.cpp's "
                            "RoPE needs an even count from 2 to the key head "
                            "size %u; it aborts the process on an odd or "
                            "larger one (GGML_ASSERT(n_dims %% 2 == 0), "
                            "GGML_ASSERT(n_dims <= ne0)) and spins without "
                            "end on 0; set it to an even number <= %u",
                            c->arch, n_rot, k_dim, k_dim);
        return bn_error(BITNET_E_MODEL_LOAD,
                        "the key head size of this %s model is %u (%s): "
                        "llama.cpp's RoPE rotates the whole head and needs "
                        "an even size of at least 2; it aborts the process "
                        "on an odd one (GGML_ASSERT(n_dims %% 2 == 0)) and "
                        "spins without end on 0; "
                        "choose head_count so that embedding_length / "
                        "head_count is even",
                        c->arch, k_dim,
                        have_k ? "attention.key_length"
                               : "embedding_length / attention.head_count");
    }
    return BITNET_OK;
}

static int check_hparams(ctx *c)
{
    uint32_t n_layer = 0;
    int rc = bn_gguf_get_u32(c->g, arch_key(c, "block_count"), 1, &n_layer);
    if (rc)
        return rc; /* llama.cpp requires the key as well */
    if (n_layer == 0 || n_layer > MAX_LAYERS)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s.block_count' = %u: llama.cpp needs 1 to %u "
                        "layers (LLAMA_MAX_LAYERS) and aborts the process on "
                        "any other count (GGML_ASSERT in load_hparams); set "
                        "it to the number of blk.N layers in the file",
                        c->arch, n_layer, MAX_LAYERS);
    uint32_t n_ff[MAX_LAYERS];
    int present;
    if ((rc = per_layer(c, "feed_forward_length", n_layer, n_ff, &present)) ||
        (rc = check_experts(c, n_layer)) || (rc = check_rope_scaling(c)) ||
        (rc = check_epsilons(c)))
        return rc;
    return check_heads(c, n_layer);
}

/* ---- vocabulary ---------------------------------------------------------- */

/* A set of the token strings, open addressing over their indices. */
typedef struct {
    const bn_gguf_str *tok;
    uint32_t *slot; /* token index + 1; 0 = empty */
    uint64_t mask;
} token_set;

static uint64_t hash(const char *s, uint64_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (uint64_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* Index of s in the set, or -1; with insert != 0 adds index `id` when s is
 * not there yet (then returns -1) and returns the earlier index when it is. */
static int64_t set_find(token_set *t, const char *s, uint64_t len,
                        int insert, uint32_t id)
{
    for (uint64_t h = hash(s, len) & t->mask;; h = (h + 1) & t->mask) {
        uint32_t v = t->slot[h];
        if (!v) {
            if (insert)
                t->slot[h] = id + 1;
            return -1;
        }
        const bn_gguf_str *o = &t->tok[v - 1];
        if (o->len == len && !memcmp(o->data, s, len))
            return v - 1;
    }
}

/* A token table beside the tokens: llama.cpp reads it as n_tokens entries
 * of one type (and refuses, cleanly, another type or a shorter table). */
static int check_table(const bn_gguf *g, const char *key, uint64_t n_tokens,
                       uint32_t t1, uint32_t t2, const char *types)
{
    const bn_gguf_kv *kv = bn_gguf_find_kv(g, key);
    if (!kv)
        return BITNET_OK;
    if (kv->type != BN_GGUF_ARRAY || (kv->arr_type != t1 && kv->arr_type != t2))
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' is not an array of %s: llama.cpp refuses "
                        "it; write one %s per token",
                        key, types, types);
    if (kv->n < n_tokens)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' has %" PRIu64 " entries for %" PRIu64
                        " tokens (tokenizer.ggml.tokens): llama.cpp needs one "
                        "per token; write the tables from one vocabulary",
                        key, kv->n, n_tokens);
    return BITNET_OK;
}

static int check_vocab_tables(const bn_gguf *g, const bn_gguf_kv *tokens,
                              const char *model)
{
    if (tokens->type != BN_GGUF_ARRAY || tokens->arr_type != BN_GGUF_STRING)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key 'tokenizer.ggml.tokens' is not an array of "
                        "strings: llama.cpp refuses it; write the vocabulary "
                        "as one string per token");
    int rc;
    if ((rc = check_table(g, "tokenizer.ggml.scores", tokens->n,
                          BN_GGUF_FLOAT32, BN_GGUF_INT32, "f32")) ||
        (rc = check_table(g, "tokenizer.ggml.token_type", tokens->n,
                          BN_GGUF_INT32, BN_GGUF_INT32, "i32")))
        return rc;
    /* WPM turns BYTE-typed tokens into pieces through a byte conversion it
     * does not implement (GGML_ABORT("fatal error") in token_to_byte),
     * for every token while loading. */
    const bn_gguf_kv *types = bn_gguf_find_kv(g, "tokenizer.ggml.token_type");
    if (!strcmp(model, "bert") && types)
        for (uint64_t i = 0; i < tokens->n; i++)
            if (((const int32_t *)types->data)[i] == 6 /* BYTE */)
                return bn_error(BITNET_E_MODEL_LOAD,
                                "token %" PRIu64 " is typed BYTE (6) in "
                                "tokenizer.ggml.token_type of a 'bert' "
                                "(WPM) vocabulary: llama.cpp cannot turn a "
                                "byte token of WPM into text and aborts the "
                                "process while loading; type it NORMAL (1)",
                                i);
    return BITNET_OK;
}

/* Duplicates (llama.cpp asserts its token -> id map is as large as the
 * list) and, for SPM, the 256 byte tokens its tokenizer falls back to. */
static int check_tokens(const bn_gguf_kv *tokens, const char *model)
{
    const bn_gguf_str *tok = tokens->data;
    uint64_t cap = 1;
    while (cap < 2 * tokens->n)
        cap <<= 1;
    token_set set = {tok, bn_calloc((size_t)cap, sizeof *set.slot,
                                    "llama check: token set"),
                     cap - 1};
    if (!set.slot)
        return BITNET_E_OOM;
    int rc = BITNET_OK;
    char q[96];
    for (uint64_t i = 0; i < tokens->n && !rc; i++) {
        if (i % POLL_EVERY == POLL_EVERY - 1 && (rc = bn_deadline_check()))
            break;
        int64_t was = set_find(&set, tok[i].data, tok[i].len, 1, (uint32_t)i);
        if (was >= 0)
            rc = bn_error(BITNET_E_MODEL_LOAD,
                          "tokenizer.ggml.tokens holds '%s' twice (tokens "
                          "%" PRId64 " and %" PRIu64 "): llama.cpp needs "
                          "distinct tokens and aborts the process otherwise "
                          "(GGML_ASSERT(id_to_token.size() == "
                          "token_to_id.size())); remove or rename the "
                          "duplicate",
                          quote(q, sizeof q, tok[i].data), was, i);
    }
    /* llama.cpp's SPM tokenizer spells text missing from the vocabulary as
     * byte tokens, "<0xXX>" or else the byte itself, and looks each up
     * with unordered_map::at: a missing one throws std::out_of_range
     * through the C API, which terminates the process. */
    if (!rc && !strcmp(model, "llama"))
        for (int b = 0; b < 256; b++) {
            char hex[8], raw[1] = {(char)b};
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            if (set_find(&set, hex, 6, 0, 0) >= 0 ||
                set_find(&set, raw, 1, 0, 0) >= 0)
                continue;
            rc = bn_error(BITNET_E_MODEL_LOAD,
                          "the 'llama' (SPM) vocabulary has no token for "
                          "byte 0x%02X ('%s' or the byte itself): llama.cpp "
                          "spells text outside the vocabulary as byte "
                          "tokens and terminates the process on a missing "
                          "one (uncaught std::out_of_range); add the 256 "
                          "byte tokens <0x00>..<0xFF>",
                          b, hex);
            break;
        }
    bn_free(set.slot);
    return rc;
}

/* An RWKV token as llama.cpp's RWKV tokenizer reads it: the text unescaped
 * ("\\t", "\\n", "\\r", "\\xNN" with its lenient hex digits, "\\c" for any other
 * c).  Only what the rule needs: the first byte and the byte count. */
static uint64_t rwkv_bytes(const char *s, uint64_t len, uint8_t *first)
{
    uint64_t n = 0;
    int escaping = 0, hex_left = 0;
    uint8_t acc = 0;
    for (uint64_t i = 0; i < len; i++) {
        uint8_t c = (uint8_t)s[i], out;
        if (hex_left) {
            acc = (uint8_t)((acc << 4) + (c >= 'a' ? c - 'a' + 10 : c - '0'));
            if (--hex_left)
                continue;
            out = acc;
            acc = 0;
        } else if (escaping) {
            escaping = 0;
            if (c == 'x') {
                hex_left = 2;
                continue;
            }
            out = c == 't' ? '\t' : c == 'n' ? '\n' : c == 'r' ? '\r' : c;
        } else if (c == '\\') {
            escaping = 1;
            continue;
        } else {
            out = c;
        }
        if (n++ == 0)
            *first = out;
    }
    return n;
}

/* llama.cpp's RWKV tokenizer walks a trie of the tokens for the longest
 * match; when the bytes it walked hold no whole token, it starts over from
 * the beginning of the text, without end and growing its output.  That
 * never happens when every byte that begins a token is a token itself. */
static int check_rwkv(const bn_gguf_kv *tokens)
{
    const bn_gguf_str *tok = tokens->data;
    uint8_t starts[256] = {0}, single[256] = {0};
    for (uint64_t i = 0; i < tokens->n; i++) {
        uint8_t b = 0;
        uint64_t n = rwkv_bytes(tok[i].data, tok[i].len, &b);
        if (n)
            starts[b] = 1;
        if (n == 1)
            single[b] = 1;
    }
    for (int b = 0; b < 256; b++)
        if (starts[b] && !single[b])
            return bn_error(BITNET_E_MODEL_LOAD,
                            "the 'rwkv' vocabulary has tokens that begin with "
                            "byte 0x%02X but no token of that byte alone: "
                            "llama.cpp's RWKV tokenizer then loops without end "
                            "on text with that byte, its output growing until "
                            "memory runs out (no deadline reaches it); add the "
                            "single-byte tokens",
                            b);
    return BITNET_OK;
}

static int check_vocab(const bn_gguf *g)
{
    /* No model name, an unknown one, no token list: llama.cpp refuses the
     * file by itself; "none"/"no_vocab" reads no tokens at all. */
    const bn_gguf_kv *m = bn_gguf_find_kv(g, "tokenizer.ggml.model");
    const bn_gguf_kv *tokens = bn_gguf_find_kv(g, "tokenizer.ggml.tokens");
    if (!m || m->type != BN_GGUF_STRING || !tokens)
        return BITNET_OK;
    const char *model = ((const bn_gguf_str *)m->data)->data;
    if (!strcmp(model, "none") || !strcmp(model, "no_vocab"))
        return BITNET_OK;
    int rc = check_vocab_tables(g, tokens, model);
    if (!rc)
        rc = check_tokens(tokens, model);
    if (!rc && !strcmp(model, "rwkv"))
        rc = check_rwkv(tokens);
    return rc;
}

/* ---- tensors ------------------------------------------------------------- */

/* Types ggml's CPU backend multiplies (a vec_dot kernel) and looks up rows
 * of (get_rows, for embeddings), by ggml type id.  Left out: Q8_1 and Q8_K
 * (activation formats only), I8..I64 and F64 (no kernels: a projection of
 * one crashes the process with SIGSEGV, an embedding with a scheduler
 * GGML_ASSERT), I2_S (BitNet.cpp's, unknown to llama.cpp). */
static int cpu_matmul_type(uint32_t t)
{
    switch (t) {
    case 0: case 1: case 2: case 3: case 6: case 7: case 8:   /* F32 F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 */
    case 10: case 11: case 12: case 13: case 14:             /* Q2_K .. Q6_K */
    case 16: case 17: case 18: case 19: case 20: case 21:    /* IQ2_XXS IQ2_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S */
    case 22: case 23: case 29: case 30:                      /* IQ2_S IQ4_XS IQ1_M BF16 */
    case 34: case 35: case 39: case 40: case 41: case 42:    /* TQ1_0 TQ2_0 MXFP4 NVFP4 Q1_0 Q2_0 */
        return 1;
    default:
        return 0;
    }
}

static int check_tensors(const bn_gguf *g)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bn_gguf_tensor *t = &g->tensors[i];
        const char *type = bn_ggml_type_name(t->type);
        uint64_t at = g->data_offset + t->offset;
        if (at % TENSOR_ALIGNMENT)
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tensor '%s' starts at file offset %" PRIu64
                            ", not a multiple of %d: llama.cpp maps tensor "
                            "data in place and aborts the process on a "
                            "misaligned buffer (GGML_ASSERT: buffer pointer "
                            "must be aligned); write the file with "
                            "general.alignment 32 (the GGUF default)",
                            t->name, at, TENSOR_ALIGNMENT);
        if (t->n_dims == 1 && t->type != 0)
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tensor '%s' is a 1-D %s tensor: llama.cpp "
                            "multiplies and adds 1-D weights (norms, scales, "
                            "biases) element-wise with F32 activations, which "
                            "its CPU backend does only with F32, and aborts "
                            "the process otherwise; store it as F32",
                            t->name, type ? type : "?");
        if (t->n_dims > 1 && !cpu_matmul_type(t->type))
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tensor '%s' has type %s: %s; store it as F32, "
                            "F16, BF16 or a quantized type such as Q8_0 or "
                            "TQ2_0",
                            t->name, type ? type : "?",
                            t->type == 36
                                ? "I2_S is BitNet.cpp's type and llama.cpp "
                                  "does not know it"
                                : "llama.cpp's CPU backend has no matrix "
                                  "multiplication or row lookup for it and "
                                  "crashes the process on one (SIGSEGV, or "
                                  "GGML_ASSERT in its scheduler)");
    }
    return BITNET_OK;
}

/* ---- entry points -------------------------------------------------------- */

int bn_check_gguf_for_llama(const bn_gguf *g, int vocab_only)
{
    if (NEVER(!g, "its one caller, bn_check_for_llama, passes the model its successful bn_gguf_open made"))
        return bn_error(BITNET_E_INVALID_ARG, "llama check: the model is NULL");
    int rc = check_vocab(g);
    if (rc || vocab_only)
        return rc;
    const char *arch = NULL;
    if (bn_gguf_get_str(g, "general.architecture", 0, &arch) || !arch) {
        /* llama.cpp refuses a file without a (string) architecture by
         * itself; the tensor rules still hold for what it would load */
        bn_error_clear();
        return check_tensors(g);
    }
    ctx c = {.g = g, .raw = arch};
    quote(c.arch, sizeof c.arch, arch);
    if ((rc = check_hparams(&c)))
        return rc;
    return check_tensors(g);
}

/* The reader's step callback: the caller's deadline, between sections. */
static int poll_deadline(void *user)
{
    (void)user;
    return bn_deadline_check();
}

int bn_check_for_llama(const char *path, int vocab_only)
{
    bn_gguf *g = NULL;
    int rc = bn_gguf_open(path, BN_GGUF_NO_DATA, poll_deadline, NULL, &g);
    if (rc)
        return rc; /* the reader's message names the file */
    rc = bn_check_gguf_for_llama(g, vocab_only);
    bn_gguf_free(g);
    if (rc == BITNET_E_MODEL_LOAD)
        bn_error_prefix("'%s' refused before llama.cpp loads it: ", path);
    else if (rc)
        bn_error_prefix("checking '%s' for llama.cpp: ", path);
    return rc;
}
