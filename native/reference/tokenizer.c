/*
 * tokenizer.c — SentencePiece ("llama" / SPM) tokenizer.  See tokenizer.h.
 *
 * Behaviour follows llama.cpp's llama_vocab (src/llama-vocab.cpp):
 *
 *  Load: token texts are cut at their first NUL and an empty one becomes
 *  "[EMPTY_<id>]"; token types map to attribute bits; tokens whose text
 *  marks end of generation ("</s>", "<|endoftext|>", "<|im_end|>", ...) and
 *  auto-detected fill-in-the-middle tokens become control tokens, a few
 *  texts are forced to user-defined or normal, and model names that call
 *  for it (Phi-3, jina, modern-bert) add rstrip/lstrip.  The special tokens
 *  (control, user-defined, unknown) are tried longest first, equal lengths
 *  in the order libstdc++'s std::sort leaves them (see sort_special).
 *
 *  Tokenize: the text is split around special tokens (control and unknown
 *  ones only with parse_special); every remaining text fragment gets a
 *  leading space when add_space_prefix is set and it is first or follows a
 *  special token, has ' ' escaped to U+2581, is cut into UTF-8 characters
 *  (length from the lead byte only) and merged pairwise: always the
 *  adjacent pair forming the token with the highest score, leftmost first
 *  on ties.  Pieces that are not tokens fall back to <0xXX> byte tokens, a
 *  single-byte token with that text, or the unknown token.  BOS (EOS) is
 *  added when add_bos and tokenizer.ggml.add_bos_token (add_eos_token).
 */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "bn_never.h"

/* llama_token_attr bits. */
enum {
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
    ATTR_LSTRIP = 1 << 7,
    ATTR_RSTRIP = 1 << 8
};

#define KEY_PREFIX "tokenizer.ggml."
/* Units of work (about a byte, a symbol or a lookup each) between two
 * calls of the step callback, the deadline check: a fraction of a
 * millisecond of tokenizing. */
#define STEP_BYTES 4096
/* Iterations of a loop between two polls: every loop whose length grows
 * with the input polls (POLL_AT), so none can outrun the deadline. */
#define POLL_EVERY 1024
/* Longest text fragment handled: indices are 32-bit. */
#define MAX_FRAGMENT ((size_t)1 << 29)

struct bn_vocab {
    int32_t n;
    char *pool;      /* every text, NUL-terminated, back to back */
    size_t *off;     /* text of token i at pool + off[i] */
    uint32_t *len;
    float *score;
    uint16_t *attr;
    int32_t *slots;  /* open-addressing hash: token id or -1 */
    uint32_t mask;   /* slots has mask + 1 entries */
    int32_t *special; /* special tokens in the order they are tried */
    int32_t n_special;
    int32_t bos, eos, unk; /* -1: none */
    int add_space_prefix, add_bos, add_eos;
    int32_t byte_tok[256]; /* byte fallback; -1: none */
    /* bn_vocab_load's step callback, polled by the loops over the tokens
     * while loading (NULL: none, and always once loaded) */
    int (*load_step)(void *);
    void *load_step_user;
};

/* ---- hashing ---------------------------------------------------------- */

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h ^ (h >> 15);
}

static int32_t lookup(const bn_vocab *v, const char *s, size_t n)
{
    uint32_t h = hash_bytes(s, n) & v->mask;
    for (;;) {
        int32_t id = v->slots[h];
        if (id < 0)
            return -1;
        if (v->len[id] == n && memcmp(v->pool + v->off[id], s, n) == 0)
            return id;
        h = (h + 1) & v->mask;
    }
}

static int32_t lookup_str(const bn_vocab *v, const char *s)
{
    return lookup(v, s, strlen(s));
}

/* ---- loading ---------------------------------------------------------- */

void bn_vocab_free(bn_vocab *v)
{
    if (!v)
        return;
    bn_free(v->pool);
    bn_free(v->off);
    bn_free(v->len);
    bn_free(v->score);
    bn_free(v->attr);
    bn_free(v->slots);
    bn_free(v->special);
    bn_free(v);
}

static int attr_of_type(int32_t type)
{
    switch (type) {
    case BN_TOKEN_NORMAL: return ATTR_NORMAL;
    case BN_TOKEN_UNKNOWN: return ATTR_UNKNOWN;
    case BN_TOKEN_CONTROL: return ATTR_CONTROL;
    case BN_TOKEN_USER_DEFINED: return ATTR_USER_DEFINED;
    case BN_TOKEN_UNUSED: return ATTR_UNUSED;
    case BN_TOKEN_BYTE: return ATTR_BYTE;
    default: return 0; /* undefined, and unknown type values */
    }
}

/* While loading: the step callback every 4096 tokens of a loop over them
 * (a hostile file may hold a billion). */
static int load_poll(const bn_vocab *v, int32_t i)
{
    if ((i & 4095) != 4095 || !v->load_step)
        return BITNET_OK;
    int rc = v->load_step(v->load_step_user);
    /* the one step callback (bn_deadline_check, through the bridge)
     * records its code with a message; a bare code gets one here */
    if (NEVER(rc && bn_error_code() != rc, "every step callback is bn_deadline_check, which reports its code through bn_error"))
        bn_error(rc, "cancelled by the step callback (code %d)", rc);
    if (rc) /* where the load was, as the reader's steps say it */
        bn_error_prefix("load aborted while building the vocabulary (token "
                        "%d of %d): ",
                        (int)i + 1, (int)v->n);
    return rc;
}

/* Copies the token texts into one pool and builds the hash table. */
static int load_texts(bn_vocab *v, const bn_gguf_str *toks)
{
    const int32_t n = v->n;
    size_t total = 0;
    int rc;
    for (int32_t i = 0; i < n; i++) {
        size_t l = toks[i].data ? strlen(toks[i].data) : 0;
        total += (l ? l : 24) + 1; /* "[EMPTY_<id>]" fits in 24 */
        if ((rc = load_poll(v, i)))
            return rc;
    }
    uint32_t cap = 16;
    while (cap < (uint32_t)n * 2u)
        cap *= 2;
    v->pool = bn_malloc(total, "vocabulary texts");
    v->off = bn_malloc(sizeof *v->off * (size_t)n, "vocabulary offsets");
    v->len = bn_malloc(sizeof *v->len * (size_t)n, "vocabulary lengths");
    v->slots = bn_malloc(sizeof *v->slots * cap, "vocabulary hash table");
    if (!v->pool || !v->off || !v->len || !v->slots)
        return BITNET_E_OOM;
    memset(v->slots, 0xff, sizeof *v->slots * cap);
    v->mask = cap - 1;

    size_t at = 0;
    for (int32_t i = 0; i < n; i++) {
        if ((rc = load_poll(v, i)))
            return rc;
        const char *s = toks[i].data ? toks[i].data : "";
        size_t l = strlen(s);
        if (NEVER(l > UINT32_MAX, "the reader refuses strings over 2^30 bytes (MAX_STRING_LEN)"))
            return bn_error(BITNET_E_MODEL_LOAD,
                            "tokenizer.ggml.tokens[%d] is too long", (int)i);
        if (l == 0) /* llama.cpp renames empty tokens */
            l = (size_t)snprintf(v->pool + at, 24, "[EMPTY_%d]", (int)i);
        else
            memcpy(v->pool + at, s, l + 1);
        v->off[i] = at;
        v->len[i] = (uint32_t)l;
        at += l + 1;

        uint32_t h = hash_bytes(v->pool + v->off[i], l) & v->mask;
        while (v->slots[h] >= 0) {
            int32_t o = v->slots[h];
            if (v->len[o] == l &&
                memcmp(v->pool + v->off[o], v->pool + v->off[i], l) == 0)
                return bn_error(
                    BITNET_E_MODEL_LOAD,
                    "tokenizer.ggml.tokens: tokens %d and %d have the same "
                    "text '%s'; every token text must be unique (llama.cpp "
                    "refuses this vocabulary too); fix the vocabulary",
                    (int)o, (int)i, v->pool + v->off[i]);
            h = (h + 1) & v->mask;
        }
        v->slots[h] = i;
    }
    return BITNET_OK;
}

static int load_scores(bn_vocab *v, const bn_gguf *g)
{
    const char *key = KEY_PREFIX "scores";
    v->score = bn_calloc((size_t)v->n, sizeof *v->score, "token scores");
    if (!v->score)
        return BITNET_E_OOM;
    const bn_gguf_kv *kv = bn_gguf_find_kv(g, key);
    if (!kv)
        return BITNET_OK;
    if (kv->type != BN_GGUF_ARRAY ||
        (kv->arr_type != BN_GGUF_FLOAT32 && kv->arr_type != BN_GGUF_INT32))
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s must be an array of float32 (or int32); "
                        "rewrite the model's tokenizer metadata", key);
    const void *data;
    uint64_t n;
    int rc = bn_gguf_get_arr(g, key, 1, kv->arr_type, &data, &n);
    if (rc)
        return rc;
    if (n < (uint64_t)v->n)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s has %llu entries for %d tokens; it needs one "
                        "score per token", key, (unsigned long long)n,
                        (int)v->n);
    for (int32_t i = 0; i < v->n; i++)
        v->score[i] = kv->arr_type == BN_GGUF_FLOAT32
                          ? ((const float *)data)[i]
                          : (float)((const int32_t *)data)[i];
    return BITNET_OK;
}

static int load_types(bn_vocab *v, const bn_gguf *g)
{
    const char *key = KEY_PREFIX "token_type";
    v->attr = bn_malloc(sizeof *v->attr * (size_t)v->n, "token attributes");
    if (!v->attr)
        return BITNET_E_OOM;
    for (int32_t i = 0; i < v->n; i++)
        v->attr[i] = ATTR_NORMAL;
    const bn_gguf_kv *kv = bn_gguf_find_kv(g, key);
    if (!kv)
        return BITNET_OK;
    if (kv->type != BN_GGUF_ARRAY || kv->arr_type != BN_GGUF_INT32)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s must be an array of int32; rewrite the model's "
                        "tokenizer metadata", key);
    const void *data;
    uint64_t n;
    int rc = bn_gguf_get_arr(g, key, 1, BN_GGUF_INT32, &data, &n);
    if (rc)
        return rc;
    if (n < (uint64_t)v->n)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s has %llu entries for %d tokens; it needs one "
                        "type per token", key, (unsigned long long)n,
                        (int)v->n);
    for (int32_t i = 0; i < v->n; i++)
        v->attr[i] = (uint16_t)attr_of_type(((const int32_t *)data)[i]);
    return BITNET_OK;
}

/* A special token id key: absent leaves *id; out of range is an error. */
static int load_id(bn_vocab *v, const bn_gguf *g, const char *name,
                   int32_t *id)
{
    char key[64];
    snprintf(key, sizeof key, KEY_PREFIX "%s", name);
    if (*id >= v->n)
        *id = -1; /* a default out of range is disabled, as in llama.cpp */
    if (!bn_gguf_find_kv(g, key))
        return BITNET_OK;
    uint32_t u = 0;
    int rc = bn_gguf_get_u32(g, key, 1, &u);
    if (rc)
        return rc;
    if (u >= (uint32_t)v->n)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s is %u but the vocabulary has %d tokens; fix the "
                        "tokenizer metadata", key, u, (int)v->n);
    *id = (int32_t)u;
    return BITNET_OK;
}

/* An optional id key used only to decide llama.cpp's text heuristics:
 * -1 when absent, invalid or out of range (llama.cpp ignores those). */
static int32_t optional_id(const bn_vocab *v, const bn_gguf *g,
                           const char *name)
{
    char key[64];
    snprintf(key, sizeof key, KEY_PREFIX "%s", name);
    const bn_gguf_kv *kv = bn_gguf_find_kv(g, key);
    uint32_t u = 0;
    if (!kv || bn_gguf_get_u32(g, key, 0, &u) != BITNET_OK) {
        bn_error_clear();
        return -1;
    }
    return u < (uint32_t)v->n ? (int32_t)u : -1;
}

static const char *piece(const bn_vocab *v, int32_t id)
{
    return v->pool + v->off[id];
}

/* Texts llama.cpp treats as end of generation: always control tokens. */
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
    "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
    "[e~[", NULL};

/* Fill-in-the-middle tokens, auto-detected when their id key is absent:
 * the first match becomes a control token. */
static const char *const FIM_PRE[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<PRE>",
    "\xe2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const FIM_SUF[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>", "<SUF>",
    "\xe2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const FIM_MID[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>", "<MID>",
    "\xe2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const FIM_PAD[] = {"<|fim_pad|>", "<fim-pad>",
                                      "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const FIM_REP[] = {"<|fim_repo|>", "<|repo_name|>",
                                      "<fim-repo>", "<REPO>", "<reponame>",
                                      NULL};
static const char *const FIM_SEP[] = {"<|file_sep|>", NULL};

/* llama.cpp's adjustments of token attributes by text and model name. */
static int apply_heuristics(bn_vocab *v, const bn_gguf *g)
{
    static const struct {
        const char *key, *old_key;
        const char *const *texts;
    } fim[] = {
        {"fim_pre_token_id", "prefix_token_id", FIM_PRE},
        {"fim_suf_token_id", "suffix_token_id", FIM_SUF},
        {"fim_mid_token_id", "middle_token_id", FIM_MID},
        {"fim_pad_token_id", NULL, FIM_PAD},
        {"fim_rep_token_id", NULL, FIM_REP},
        {"fim_sep_token_id", NULL, FIM_SEP},
    };
    int32_t fim_id[6];
    for (int c = 0; c < 6; c++) {
        int32_t id = optional_id(v, g, fim[c].key);
        if (fim[c].old_key) {
            int32_t old = optional_id(v, g, fim[c].old_key);
            if (old >= 0)
                id = old; /* read after the new key, so it wins */
        }
        if (id < 0) { /* llama.cpp takes the first match in hash order;
                         here the lowest id (the same when only one) */
            for (const char *const *t = fim[c].texts; *t; t++) {
                int32_t m = lookup_str(v, *t);
                if (m >= 0 && (id < 0 || m < id))
                    id = m;
            }
            if (id >= 0)
                v->attr[id] |= ATTR_CONTROL;
        }
        fim_id[c] = id;
    }

    for (const char *const *t = EOG_TEXTS; *t; t++) {
        int32_t id = lookup_str(v, *t);
        if (id >= 0)
            v->attr[id] |= ATTR_CONTROL;
    }
    static const char *const gpt_oss[] = {"<|channel|>", "<|message|>",
                                          "<|start|>", "<|constrain|>"};
    for (int k = 0; k < 4; k++) {
        int32_t id = lookup_str(v, gpt_oss[k]);
        if (id >= 0)
            v->attr[id] = ATTR_USER_DEFINED;
    }

    /* "<|end|>" is not end of generation next to "<|return|>" and
     * "<|call|>" (or "<|calls|>" and "<|flush|>"); "</s>" is a normal token
     * next to "<|tool_response>" or an end token "<|plamo:eos|>". */
    int32_t end = lookup_str(v, "<|end|>");
    int has_call = lookup_str(v, "<|call|>") >= 0 ||
                   lookup_str(v, "<|calls|>") >= 0;
    if (end >= 0 && has_call &&
        (lookup_str(v, "<|return|>") >= 0 || lookup_str(v, "<|flush|>") >= 0))
        v->attr[end] = ATTR_USER_DEFINED;
    int32_t s_id = lookup_str(v, "</s>");
    int marker = lookup_str(v, "<|tool_response>") >= 0;
    int32_t eog_keys[] = {v->eos, optional_id(v, g, "eot_token_id"),
                          optional_id(v, g, "eom_token_id"), fim_id[3],
                          fim_id[4], fim_id[5]};
    for (int k = 0; k < 6; k++)
        if (eog_keys[k] >= 0 && !strcmp(piece(v, eog_keys[k]), "<|plamo:eos|>"))
            marker = 1;
    if (s_id >= 0 && marker)
        v->attr[s_id] = ATTR_NORMAL;
    return BITNET_OK;
}

static int contains(const char *s, const char *sub)
{
    return s && strstr(s, sub) != NULL;
}

/* contains() ignoring ASCII case in s; sub is lower case. */
static int contains_nocase(const char *s, const char *sub)
{
    size_t n = strlen(sub);
    for (; s && *s; s++) {
        size_t i = 0;
        while (i < n && s[i] &&
               ((s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i]) == sub[i])
            i++;
        if (i == n)
            return 1;
    }
    return 0;
}

/* Per-token lstrip / rstrip that llama.cpp sets by model name. */
static int apply_strip_attrs(bn_vocab *v, const bn_gguf *g)
{
    const char *pre = NULL, *arch = NULL, *name = NULL;
    if (bn_gguf_get_str(g, KEY_PREFIX "pre", 0, &pre) ||
        bn_gguf_get_str(g, "general.architecture", 0, &arch) ||
        bn_gguf_get_str(g, "general.name", 0, &name))
        return bn_error_code();
    if (contains(pre, "jina-v2-de") || contains(pre, "jina-v2-es") ||
        contains(pre, "jina-v2-code") || contains(arch, "nomic-bert-moe") ||
        contains(arch, "jina-bert-v3")) {
        int32_t id = lookup_str(v, "<mask>");
        if (id >= 0)
            v->attr[id] |= ATTR_LSTRIP;
    } else if (contains_nocase(name, "phi-3") || contains_nocase(name, "phi3")) {
        for (int32_t k = 0; k < v->n_special; k++)
            v->attr[v->special[k]] |= ATTR_RSTRIP;
        static const char *const need[] = {"</s>", "<unk>", "<s>",
                                           "<|endoftext|>"};
        for (int k = 0; k < 4; k++) {
            int32_t id = lookup_str(v, need[k]);
            if (id < 0) /* llama.cpp fails the load here */
                return bn_error(BITNET_E_MODEL_LOAD,
                                "a Phi-3 vocabulary (general.name '%s') "
                                "must have the token '%s'",
                                name, need[k]);
            if (k == 0)
                v->attr[id] |= ATTR_RSTRIP;
            else
                v->attr[id] &= (uint16_t)~ATTR_RSTRIP;
        }
    } else if (contains_nocase(name, "modern-bert")) {
        int32_t id = lookup_str(v, "[MASK]");
        if (id >= 0)
            v->attr[id] |= ATTR_LSTRIP;
    }
    return BITNET_OK;
}

/*
 * The order special tokens are tried in matters when two of the same length
 * overlap in the text.  llama.cpp sorts them, from id order, with std::sort
 * comparing lengths only, which is not stable; so that ties come out exactly
 * as there, this is the same algorithm as GNU libstdc++'s std::sort: an
 * introsort (median-of-three quicksort down to runs of 16, heapsort past a
 * depth of 2 log2 n) finished by an insertion sort.  With at most 16
 * special tokens that is a stable sort: longest first, then by id.
 */
static int longer(const uint32_t *len, int32_t x, int32_t y)
{
    return len[x] > len[y];
}

static void swap_at(int32_t *a, ptrdiff_t i, ptrdiff_t j)
{
    int32_t t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* Sift the hole at `hole` down to a leaf, then value back up. */
static void adjust_heap(const uint32_t *len, int32_t *a, ptrdiff_t hole,
                        ptrdiff_t n, int32_t value)
{
    const ptrdiff_t top = hole;
    ptrdiff_t child = hole;
    while (child < (n - 1) / 2) {
        child = 2 * (child + 1);
        if (longer(len, a[child], a[child - 1]))
            child--;
        a[hole] = a[child];
        hole = child;
    }
    if ((n & 1) == 0 && child == (n - 2) / 2) {
        child = 2 * (child + 1);
        a[hole] = a[child - 1];
        hole = child - 1;
    }
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && longer(len, a[parent], value)) {
        a[hole] = a[parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    a[hole] = value;
}

static void heap_sort(const uint32_t *len, int32_t *a, ptrdiff_t n)
{
    if (n < 2)
        return;
    for (ptrdiff_t parent = (n - 2) / 2;; parent--) {
        adjust_heap(len, a, parent, n, a[parent]);
        if (parent == 0)
            break;
    }
    for (ptrdiff_t last = n - 1; last > 0; last--) {
        int32_t value = a[last];
        a[last] = a[0];
        adjust_heap(len, a, 0, last, value);
    }
}

static void introsort(const uint32_t *len, int32_t *a, ptrdiff_t n, int depth)
{
    while (n > 16) {
        if (depth == 0) {
            heap_sort(len, a, n);
            return;
        }
        depth--;
        /* median of a[1], a[mid], a[n-1] moved to a[0] as the pivot */
        ptrdiff_t x = 1, y = n / 2, z = n - 1, m;
        if (longer(len, a[x], a[y]))
            m = longer(len, a[y], a[z]) ? y : longer(len, a[x], a[z]) ? z : x;
        else
            m = longer(len, a[x], a[z]) ? x : longer(len, a[y], a[z]) ? z : y;
        swap_at(a, 0, m);
        ptrdiff_t lo = 1, hi = n;
        for (;;) {
            while (longer(len, a[lo], a[0]))
                lo++;
            hi--;
            while (longer(len, a[0], a[hi]))
                hi--;
            if (lo >= hi)
                break;
            swap_at(a, lo, hi);
            lo++;
        }
        introsort(len, a + lo, n - lo, depth);
        n = lo;
    }
}

static void linear_insert(const uint32_t *len, int32_t *a, ptrdiff_t i)
{
    int32_t value = a[i];
    while (longer(len, value, a[i - 1])) {
        a[i] = a[i - 1];
        i--;
    }
    a[i] = value;
}

static void sort_special(const bn_vocab *v, int32_t *a, ptrdiff_t n)
{
    if (n < 2)
        return;
    const uint32_t *len = v->len;
    int lg = 0;
    while (((ptrdiff_t)1 << (lg + 1)) <= n)
        lg++;
    introsort(len, a, n, 2 * lg);
    ptrdiff_t head = n > 16 ? 16 : n;
    for (ptrdiff_t i = 1; i < head; i++) {
        if (longer(len, a[i], a[0])) {
            int32_t value = a[i];
            memmove(a + 1, a, sizeof *a * (size_t)i);
            a[0] = value;
        } else {
            linear_insert(len, a, i);
        }
    }
    /* unguarded: each later run has a pivot before it that stops the scan */
    for (ptrdiff_t i = head; i < n; i++)
        linear_insert(len, a, i);
}

static int build_special(bn_vocab *v)
{
    int32_t n = 0;
    for (int32_t i = 0; i < v->n; i++)
        if (v->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            n++;
    v->special = bn_malloc(sizeof *v->special * (size_t)(n ? n : 1),
                           "special token list");
    if (!v->special)
        return BITNET_E_OOM;
    n = 0;
    for (int32_t i = 0; i < v->n; i++)
        if (v->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            v->special[n++] = i;
    sort_special(v, v->special, n);
    v->n_special = n;
    return BITNET_OK;
}

static int load(bn_vocab *v, const bn_gguf *g)
{
    const char *model = NULL;
    int rc = bn_gguf_get_str(g, KEY_PREFIX "model", 1, &model);
    if (rc)
        return rc;
    if (strcmp(model, "llama") != 0)
        return bn_error(BITNET_E_MODEL_LOAD,
                        KEY_PREFIX "model is '%s'; only the SentencePiece "
                        "tokenizer \"llama\" is supported; convert the model "
                        "with a llama (SPM) vocabulary", model);

    const char *tkey = KEY_PREFIX "tokens";
    const bn_gguf_kv *kv = bn_gguf_find_kv(g, tkey);
    if (!kv)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s is missing: the model has no vocabulary; "
                        "convert it with its tokenizer", tkey);
    if (kv->type != BN_GGUF_ARRAY || kv->arr_type != BN_GGUF_STRING)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s must be an array of strings; rewrite the "
                        "model's tokenizer metadata", tkey);
    const void *data;
    uint64_t n;
    rc = bn_gguf_get_arr(g, tkey, 1, BN_GGUF_STRING, &data, &n);
    if (rc)
        return rc;
    if (n == 0 || n > (uint64_t)INT32_MAX / 4)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "%s has %llu tokens; a vocabulary needs 1 to %d",
                        tkey, (unsigned long long)n, INT32_MAX / 4);
    v->n = (int32_t)n;

    if ((rc = load_texts(v, data)) || (rc = load_scores(v, g)) ||
        (rc = load_types(v, g)))
        return rc;

    v->bos = 1;
    v->eos = 2;
    v->unk = 0;
    if ((rc = load_id(v, g, "bos_token_id", &v->bos)) ||
        (rc = load_id(v, g, "eos_token_id", &v->eos)) ||
        (rc = load_id(v, g, "unknown_token_id", &v->unk)))
        return rc;

    v->add_space_prefix = 1;
    v->add_bos = 1;
    v->add_eos = 0;
    if ((rc = bn_gguf_get_bool(g, KEY_PREFIX "add_space_prefix", 0,
                               &v->add_space_prefix)) ||
        (rc = bn_gguf_get_bool(g, KEY_PREFIX "add_bos_token", 0,
                               &v->add_bos)) ||
        (rc = bn_gguf_get_bool(g, KEY_PREFIX "add_eos_token", 0,
                               &v->add_eos)))
        return rc;

    if ((rc = apply_heuristics(v, g)) || (rc = build_special(v)) ||
        (rc = apply_strip_attrs(v, g)))
        return rc;

    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
        char one = (char)b;
        int32_t id = lookup_str(v, name);
        if (id < 0)
            id = lookup(v, &one, 1);
        v->byte_tok[b] = id >= 0 ? id : v->unk;
    }
    return BITNET_OK;
}

int bn_vocab_load(const bn_gguf *g, int (*step)(void *), void *step_user,
                  bn_vocab **out)
{
    if (NEVER(!out, "the loader (model.c), its one caller, passes &m->vocab"))
        return bn_error(BITNET_E_INVALID_ARG, "bn_vocab_load: out is NULL");
    *out = NULL;
    if (NEVER(!g, "the loader calls it only with the file it has just opened"))
        return bn_error(BITNET_E_INVALID_ARG, "bn_vocab_load: g is NULL");
    bn_vocab *v = bn_calloc(1, sizeof *v, "vocabulary");
    if (!v)
        return BITNET_E_OOM;
    v->load_step = step;
    v->load_step_user = step_user;
    int rc = load(v, g);
    v->load_step = NULL; /* the caller's callback may not outlive the load */
    v->load_step_user = NULL;
    if (rc) {
        bn_vocab_free(v);
        return rc;
    }
    *out = v;
    return BITNET_OK;
}

int32_t bn_vocab_n_tokens(const bn_vocab *v) { return v ? v->n : 0; }
int32_t bn_vocab_bos(const bn_vocab *v) { return v ? v->bos : -1; }
int32_t bn_vocab_eos(const bn_vocab *v) { return v ? v->eos : -1; }

const char *bn_vocab_piece(const bn_vocab *v, int32_t id)
{
    if (NEVER(!v || id < 0 || id >= v->n, "its one caller, fuzz/gguf_fuzzer.c, asks only for ids below bn_vocab_n_tokens"))
        return NULL;
    return piece(v, id);
}

/* ---- tokenizing ------------------------------------------------------- */

void bn_tokens_free(bn_tokens *t)
{
    if (!t)
        return;
    bn_free(t->ids);
    t->ids = NULL;
    t->n = t->cap = 0;
}

static int push(bn_tokens *t, int32_t id)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        int32_t *p = bn_realloc(t->ids, cap * sizeof *p, "token array");
        if (!p)
            return BITNET_E_OOM;
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return BITNET_OK;
}

/* A piece of the input: raw text [off, off + len), or a special token. */
typedef struct {
    size_t off, len;
    int32_t tok; /* -1 for raw text */
} frag;

typedef struct {
    int32_t prev, next;
    uint32_t off, n; /* into the escaped text */
    int32_t id;      /* token of the whole symbol, -1 if none */
} symbol;

typedef struct {
    float score;
    int32_t left, right, id;
    uint32_t size;
} bigram;

typedef struct {
    const bn_vocab *v;
    int (*step)(void *);
    void *user;
    size_t since_step;
    frag *frags, *next; /* fragment lists (current, being built) */
    size_t n_frags, cap_frags;
    char *buf;          /* escaped text of one fragment */
    symbol *sym;
    bigram *heap;
    size_t cap_buf, cap_sym, cap_heap, n_heap;
} work;

/* Scratch of at least need elements (contents not kept); NULL on OOM. */
static void *reserve(void *p, size_t *cap, size_t need, size_t elem,
                     const char *what)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    bn_free(p);
    p = bn_malloc(c * elem, what);
    *cap = p ? c : 0;
    return p;
}

static int call_step(work *w)
{
    w->since_step = 0;
    if (!w->step)
        return BITNET_OK;
    int rc = w->step(w->user);
    /* a callback that explains itself (a deadline, an injected fault) keeps
     * its message; a bare code gets a generic one */
    if (NEVER(rc && bn_error_code() != rc, "every step callback is bn_deadline_check, which reports its code through bn_error"))
        return bn_error(rc, "tokenizing cancelled by the step callback "
                            "(code %d)", rc);
    return rc;
}

/* Counts `units` of work done; calls the step callback (the deadline
 * check) once STEP_BYTES of them have added up. */
static inline int poll(work *w, size_t units)
{
    w->since_step += units;
    return BN_LIKELY(w->since_step < STEP_BYTES) ? BITNET_OK : call_step(w);
}

/* In a loop over i: poll every POLL_EVERY iterations (a register test on
 * the others). */
#define POLL_AT(w, i)                                                         \
    (BN_UNLIKELY(((i) & (POLL_EVERY - 1)) == POLL_EVERY - 1)                  \
         ? poll((w), POLL_EVERY)                                              \
         : BITNET_OK)

/* A step of the tokenizer: every text fragment and every 1024 merges.  The
 * `tokenize.step` fault point is reached on each (its hit counts do not
 * depend on how often the loops between poll); then `bytes` of work are
 * counted towards the next deadline check. */
static int tick(work *w, size_t bytes)
{
    int rc = BN_FAULT(TOKENIZE_STEP);
    return rc ? rc : poll(w, bytes);
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

/* *at = the first occurrence of needle in hay, or -1.  A text made of the
 * needle's first byte is a candidate at every position: the candidates
 * are counted as work. */
static int find(work *w, const char *hay, size_t hn, const char *needle,
                size_t nn, long long *at)
{
    *at = -1;
    if (nn > hn)
        return BITNET_OK;
    const char *p = hay, *last = hay + (hn - nn);
    while (p <= last) {
        const char *q = memchr(p, needle[0], (size_t)(last - p) + 1);
        if (!q)
            return poll(w, (size_t)(last - p) + 1);
        int rc = poll(w, (size_t)(q - p) + 1);
        if (rc)
            return rc;
        if (memcmp(q, needle, nn) == 0) {
            *at = q - hay;
            return BITNET_OK;
        }
        p = q + 1;
    }
    return BITNET_OK;
}

static int add_frag(work *w, size_t *n, size_t off, size_t len, int32_t tok)
{
    if (*n == w->cap_frags) { /* grow both lists together */
        size_t cap = w->cap_frags * 2;
        frag *a = bn_realloc(w->frags, cap * sizeof *a, "text fragments");
        if (!a)
            return BITNET_E_OOM;
        w->frags = a;
        frag *b = bn_realloc(w->next, cap * sizeof *b, "text fragments");
        if (!b)
            return BITNET_E_OOM;
        w->next = b;
        w->cap_frags = cap;
    }
    w->next[(*n)++] = (frag){off, len, tok};
    return BITNET_OK;
}

/* Splits every raw fragment around each special token, longest tokens
 * first: tokenizer_st_partition. */
static int partition(work *w, const char *text, int parse_special)
{
    const bn_vocab *v = w->v;
    for (int32_t k = 0; k < v->n_special; k++) {
        int32_t id = v->special[k];
        uint16_t attr = v->attr[id];
        if (!parse_special && (attr & (ATTR_CONTROL | ATTR_UNKNOWN)))
            continue;
        const char *s = piece(v, id);
        size_t sl = v->len[id];
        size_t n = 0;
        int rc;
        for (size_t f = 0; f < w->n_frags; f++) {
            frag fr = w->frags[f];
            if (fr.tok >= 0) {
                if ((rc = add_frag(w, &n, fr.off, fr.len, fr.tok)) ||
                    (rc = POLL_AT(w, f)))
                    return rc;
                continue;
            }
            if ((rc = tick(w, fr.len)))
                return rc;
            size_t off = fr.off, len = fr.len;
            while (len > 0) {
                long long m;
                if ((rc = find(w, text + off, len, s, sl, &m)))
                    return rc;
                if (m < 0) {
                    if ((rc = add_frag(w, &n, off, len, -1)))
                        return rc;
                    break;
                }
                size_t left = (size_t)m;
                if (attr & ATTR_LSTRIP)
                    while (left > 0 && is_space(text[off + left - 1]))
                        left--;
                if (left > 0 && (rc = add_frag(w, &n, off, left, -1)))
                    return rc;
                if ((rc = add_frag(w, &n, 0, 0, id)) || (rc = poll(w, 1)))
                    return rc;
                off += (size_t)m + sl;
                len -= (size_t)m + sl;
                if (attr & ATTR_RSTRIP)
                    while (len > 0 && is_space(text[off])) {
                        off++;
                        len--;
                    }
            }
        }
        frag *t = w->frags;
        w->frags = w->next;
        w->next = t;
        w->n_frags = n;
    }
    return BITNET_OK;
}

/* Heap order: higher score first, then the leftmost pair. */
static int above(const bigram *a, const bigram *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(work *w, bigram b)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!above(&b, &w->heap[p]))
            break;
        w->heap[i] = w->heap[p];
        i = p;
    }
    w->heap[i] = b;
}

static bigram heap_pop(work *w)
{
    bigram top = w->heap[0];
    bigram last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && above(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!above(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static void try_bigram(work *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0)
        return;
    const symbol *l = &w->sym[left], *r = &w->sym[right];
    int32_t id = lookup(w->v, w->buf + l->off, (size_t)l->n + r->n);
    if (id < 0)
        return;
    heap_push(w, (bigram){w->v->score[id], left, right, id, l->n + r->n});
}

static size_t char_len(unsigned char lead)
{
    return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

/* llm_tokenizer_spm_session::tokenize on w->buf[0..n). */
static int spm(work *w, size_t n, bn_tokens *out)
{
    const bn_vocab *v = w->v;
    int rc;
    size_t count = 0;
    for (size_t at = 0; at < n; count++) {
        at += char_len((unsigned char)w->buf[at]);
        if ((rc = POLL_AT(w, count)))
            return rc;
    }
    /* the queue gets one entry per adjacent pair and two per merge */
    w->sym = reserve(w->sym, &w->cap_sym, count, sizeof *w->sym,
                     "tokenizer symbols");
    if (!w->sym)
        return BITNET_E_OOM;
    w->heap = reserve(w->heap, &w->cap_heap, 3 * count, sizeof *w->heap,
                      "tokenizer merge queue");
    if (!w->heap)
        return BITNET_E_OOM;
    int32_t ns = 0;
    for (size_t at = 0; at < n;) {
        if ((rc = POLL_AT(w, (size_t)ns)))
            return rc;
        size_t l = char_len((unsigned char)w->buf[at]);
        if (l > n - at)
            l = n - at;
        w->sym[ns] = (symbol){ns - 1, at + l == n ? -1 : ns + 1, (uint32_t)at,
                              (uint32_t)l, lookup(v, w->buf + at, l)};
        ns++;
        at += l;
    }
    w->n_heap = 0;
    for (int32_t i = 1; i < ns; i++) {
        try_bigram(w, i - 1, i);
        if ((rc = POLL_AT(w, (size_t)i)))
            return rc;
    }

    size_t pops = 0;
    while (w->n_heap > 0) {
        bigram b = heap_pop(w);
        if (++pops % 1024 == 0 && (rc = tick(w, 1024)))
            return rc;
        symbol *l = &w->sym[b.left], *r = &w->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* stale: one side was merged since */
        l->n += r->n;
        l->id = b.id;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            w->sym[r->next].prev = b.left;
        try_bigram(w, l->prev, b.left);
        try_bigram(w, b.left, l->next);
    }

    size_t k = 0; /* symbols emitted: their indices are sparse after merges */
    for (int32_t i = 0; ns > 0 && i != -1; i = w->sym[i].next) {
        const symbol *s = &w->sym[i];
        if ((rc = POLL_AT(w, k++)))
            return rc;
        if (s->id >= 0) {
            if ((rc = push(out, s->id)))
                return rc;
            continue;
        }
        for (uint32_t j = 0; j < s->n; j++) {
            int32_t id = v->byte_tok[(unsigned char)w->buf[s->off + j]];
            if (NEVER(id < 0, "byte_tok falls back to unk, always a valid id: 0 by default (n >= 1), a key out of range is refused"))
                return bn_error(BITNET_E_INFERENCE,
                                "byte 0x%02X has no token: the vocabulary "
                                "has neither <0x%02X> nor an unknown token",
                                (unsigned char)w->buf[s->off + j],
                                (unsigned char)w->buf[s->off + j]);
            if ((rc = push(out, id)) || (rc = poll(w, 1)))
                return rc;
        }
    }
    return BITNET_OK;
}

/* Space prefix, ' ' -> U+2581, then SPM. */
static int raw_fragment(work *w, const char *text, const frag *f,
                        int prefix, bn_tokens *out)
{
    int rc;
    size_t need = prefix ? 3 : 0;
    for (size_t i = 0; i < f->len; i++) {
        need += text[f->off + i] == ' ' ? 3 : 1;
        if ((rc = POLL_AT(w, i)))
            return rc;
    }
    w->buf = reserve(w->buf, &w->cap_buf, need, 1, "tokenizer text");
    if (!w->buf)
        return BITNET_E_OOM;
    size_t n = 0;
    if (prefix) {
        memcpy(w->buf, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < f->len; i++) {
        if ((rc = POLL_AT(w, i)))
            return rc;
        char c = text[f->off + i];
        if (c == ' ') {
            memcpy(w->buf + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            w->buf[n++] = c;
        }
    }
    return spm(w, n, out);
}

static int tokenize(work *w, const char *text, size_t len, int add_bos,
                    int parse_special, bn_tokens *out)
{
    const bn_vocab *v = w->v;
    int rc;
    w->cap_frags = 16;
    w->frags = bn_malloc(w->cap_frags * sizeof *w->frags, "text fragments");
    w->next = bn_malloc(w->cap_frags * sizeof *w->next, "text fragments");
    if (!w->frags || !w->next)
        return BITNET_E_OOM;
    w->n_frags = 0;
    if (len > 0) {
        w->frags[0] = (frag){0, len, -1};
        w->n_frags = 1;
        if ((rc = partition(w, text, parse_special)))
            return rc;
    }

    size_t longest = 0;
    for (size_t f = 0; f < w->n_frags; f++) {
        if (w->frags[f].tok < 0 && w->frags[f].len > longest)
            longest = w->frags[f].len;
        if ((rc = POLL_AT(w, f)))
            return rc;
    }
    if (longest > MAX_FRAGMENT)
        return bn_error(BITNET_E_INVALID_ARG,
                        "text of %zu bytes without a special token is too "
                        "long to tokenize (limit %zu); split the text",
                        longest, MAX_FRAGMENT);
    if (add_bos && v->add_bos) {
        if (v->bos < 0)
            return bn_error(BITNET_E_INFERENCE,
                            "add_bos was requested but the vocabulary has no "
                            "BOS token; call with add_bos=0");
        if ((rc = push(out, v->bos)))
            return rc;
    }
    int prev_special = 1;
    for (size_t f = 0; f < w->n_frags; f++) {
        const frag *fr = &w->frags[f];
        if (fr->tok >= 0) {
            if ((rc = push(out, fr->tok)) || (rc = POLL_AT(w, f)))
                return rc;
            prev_special = 1;
            continue;
        }
        if ((rc = tick(w, fr->len)) ||
            (rc = raw_fragment(w, text, fr,
                               v->add_space_prefix && prev_special, out)))
            return rc;
        prev_special = 0;
    }
    if (add_bos && v->add_eos) {
        if (v->eos < 0)
            return bn_error(BITNET_E_INFERENCE,
                            "the vocabulary asks for EOS but has no EOS "
                            "token; call with add_bos=0");
        if ((rc = push(out, v->eos)))
            return rc;
    }
    return BITNET_OK;
}

int bn_tokenize(const bn_vocab *v, const char *text, size_t len, int add_bos,
                int parse_special, bn_tokens *out, int (*step)(void *),
                void *step_user)
{
    if (NEVER(!v || !out || (!text && len), "its callers (the reference backend, which refuses a NULL prompt, and the fuzzer) pass a loaded vocabulary, a list of their own and text"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "bn_tokenize: %s is NULL",
                        !v ? "the vocabulary" : !out ? "out" : "text");
    work w = {0};
    w.v = v;
    w.step = step;
    w.user = step_user;
    size_t n0 = out->n;
    int rc = tokenize(&w, text, len, add_bos, parse_special, out);
    if (rc)
        out->n = n0; /* nothing appended on failure */
    bn_free(w.frags);
    bn_free(w.next);
    bn_free(w.buf);
    bn_free(w.sym);
    bn_free(w.heap);
    return rc;
}

/* ---- detokenizing ----------------------------------------------------- */

/* Where the text goes: counted always, copied only on the fill pass. */
typedef struct {
    char *out;     /* NULL: the counting pass */
    size_t total;  /* bytes so far */
} text_out;

static void put(text_out *t, const char *s, size_t n)
{
    if (t->out)
        memcpy(t->out + t->total, s, n);
    t->total += n;
}

/* llama_vocab's token_to_byte for SPM: the two hex digits of "<0xXX>"
 * (strtol's reading: it stops at the first non-digit). */
static unsigned char byte_of(const char *text, uint32_t len)
{
    unsigned value = 0;
    for (uint32_t i = 3; i < len && i < 5; i++) {
        char c = text[i];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            break;
        value = value * 16 + (unsigned)d;
    }
    return (unsigned char)value;
}

/* Puts s[0..n), dropping its first byte when *strip is set and it is a
 * space (llama.cpp's lstrip of one space: the token's first byte only). */
static void put_stripped(text_out *t, int *strip, const char *s, size_t n)
{
    if (!n)
        return;
    if (*strip && s[0] == ' ')
        s++, n--;
    *strip = 0;
    put(t, s, n);
}

/* One token's text (llama_vocab's token_to_piece); *lstrip (one leading
 * space off this token) is cleared after it, as llama_detokenize does. */
static void piece_text(const bn_vocab *v, int32_t id, int unparse_special,
                       int *lstrip, text_out *t)
{
    uint16_t attr = v->attr[id];
    const char *s = piece(v, id);
    uint32_t n = v->len[id];
    int strip = *lstrip;
    *lstrip = 0;
    if (!unparse_special && (attr & (ATTR_UNKNOWN | ATTR_CONTROL)))
        return;
    if (attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        put_stripped(t, &strip, s, n);
    } else if (attr & ATTR_NORMAL) {
        /* U+2581 (E2 96 81), the escaped space, back to ' ' */
        uint32_t from = 0;
        for (uint32_t i = 0; i + 2 < n; i++)
            if ((unsigned char)s[i] == 0xE2 && (unsigned char)s[i + 1] == 0x96 &&
                (unsigned char)s[i + 2] == 0x81) {
                put_stripped(t, &strip, s + from, i - from);
                put_stripped(t, &strip, " ", 1);
                from = i + 3;
                i += 2;
            }
        put_stripped(t, &strip, s + from, n - from);
    } else if (attr & ATTR_BYTE) {
        char b = (char)byte_of(s, n);
        put_stripped(t, &strip, &b, 1);
    }
    /* unused, undefined: nothing, as llama.cpp suppresses them */
}

int bn_detokenize(const bn_vocab *v, const int32_t *ids, size_t n,
                  int remove_special, int unparse_special, char *out,
                  size_t cap, size_t *out_len, int (*step)(void *),
                  void *step_user)
{
    if (n && !ids)
        return bn_error(BITNET_E_INVALID_ARG, "tokens is NULL");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= v->n)
            return bn_error(BITNET_E_INFERENCE,
                            "invalid token id %d at position %zu: ids must be in "
                            "[0, %d) for this model's vocabulary",
                            (int)ids[i], i, (int)v->n);
    }
    /* llama_detokenize: the space prefix goes, unless a removed BOS
     * leads (then llama.cpp keeps it); a removed EOS ends */
    int lstrip = v->add_space_prefix;
    if (remove_special && v->add_bos && n && ids[0] == v->bos) {
        lstrip = 0;
        ids++, n--;
    }
    if (remove_special && v->add_eos && n && ids[n - 1] == v->eos)
        n--;
    /* two walks, counting then copying: the capacity is checked before a
     * byte is written */
    for (int pass = 0; pass < (out ? 2 : 1); pass++) {
        text_out t = {pass ? out : NULL, 0};
        int strip = lstrip;
        for (size_t i = 0; i < n; i++) {
            if (step && (i & 4095) == 4095) {
                int rc = step(step_user);
                if (rc)
                    return rc;
            }
            piece_text(v, ids[i], unparse_special, &strip, &t);
        }
        *out_len = t.total;
        if (!pass && out && t.total > cap)
            return bn_error(BITNET_E_INVALID_ARG,
                            "buffer too small (need %zu, got %zu): call "
                            "first with out_text=NULL to query the size",
                            t.total, cap);
    }
    return BITNET_OK;
}
