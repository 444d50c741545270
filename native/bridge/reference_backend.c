/*
 * reference_backend.c — the reference engine (native/reference) behind the
 * socket functions: the bridge's "reference" backend.
 *
 * Everything here validates its arguments, records errors through
 * bn_error() and copies them into the caller's buffer on the way out, so the
 * same functions serve the bridge (bn_reference_backend) and the standalone
 * library build.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"
#include "bn_alloc.h"
#include "bn_cpu.h"
#include "bn_deadline.h"
#include "bn_error.h"
#include "bn_never.h"
#include "model.h"

typedef struct {
    bn_model *model;
    bn_state *state;
} ref_ctx;

/* The step callback handed to the loader, tokenizer and forward pass: the
 * calling thread's deadline and its context's cancel flag (bn_deadline.h). */
static int step(void *user)
{
    (void)user;
    return bn_deadline_check();
}

/* Records the error in the caller's buffer too; returns rc. */
static int done(int rc, char *err, int32_t err_len)
{
    if (rc != BITNET_OK)
        bn_error_copy(err, err_len);
    return rc;
}

static int check_path(const char *path)
{
    if (!path)
        return bn_error(BITNET_E_INVALID_ARG, "model_path is NULL");
    if (!*path)
        return bn_error(BITNET_E_MODEL_NOT_FOUND,
                        "model path is empty: pass the path of a .gguf file");
    return BITNET_OK;
}

static int gpu_unsupported(int32_t n_gpu_layers)
{
    if (n_gpu_layers < 0)
        return bn_error(BITNET_E_INVALID_ARG,
                        "n_gpu_layers=%d is negative; use 0 for CPU only",
                        (int)n_gpu_layers);
    if (n_gpu_layers > 0)
        return bn_error(BITNET_E_UNSUPPORTED,
                        "n_gpu_layers=%d asks for GPU offload, but the "
                        "reference backend was built without GPU support "
                        "(has_cuda=0, has_metal=0, has_hip=0); use "
                        "n_gpu_layers=0",
                        (int)n_gpu_layers);
    return BITNET_OK;
}

static int ref_init_context(void **out, const char *path, int32_t n_ctx,
                            int32_t n_gpu_layers, char *err, int32_t err_len)
{
    if (NEVER(!out, "the bridge creates into &c->impl or &c->fb_impl (sockets.c, routing.c), after refusing a NULL out_ctx itself"))
        return done(bn_error(BITNET_E_INVALID_ARG, "out_ctx is NULL"), err,
                    err_len);
    *out = NULL;
    int rc;
    if ((rc = check_path(path)) || (rc = gpu_unsupported(n_gpu_layers)))
        return done(rc, err, err_len);
    if (n_ctx < 0)
        return done(bn_error(BITNET_E_INVALID_ARG,
                             "n_ctx=%d is negative; pass a positive context "
                             "size, or 0 for the model's own",
                             (int)n_ctx),
                    err, err_len);
    ref_ctx *c = bn_calloc(1, sizeof *c, "context");
    if (!c)
        return done(BITNET_E_OOM, err, err_len);
    if ((rc = bn_model_load(path, 0, step, NULL, &c->model)) ||
        (rc = bn_state_new(c->model, n_ctx, &c->state))) {
        bn_model_free(c->model);
        bn_free(c);
        return done(rc, err, err_len);
    }
    *out = c;
    return BITNET_OK;
}

static int ref_free_context(void *ctx)
{
    ref_ctx *c = ctx;
    if (!c)
        return BITNET_OK;
    bn_state_free(c->state);
    bn_model_free(c->model);
    bn_free(c);
    return BITNET_OK;
}

/* Tokenizes with vocabulary v and answers the two-pass protocol. */
static int tokenize_two_pass(const bn_vocab *v, const char *prompt,
                             int add_bos, int parse_special,
                             int32_t *out_tokens, int32_t out_capacity,
                             int32_t *out_len)
{
    if (!prompt)
        return bn_error(BITNET_E_INVALID_ARG, "prompt is NULL");
    if (!out_len)
        return bn_error(BITNET_E_INVALID_ARG, "out_len is NULL");
    if (out_tokens && out_capacity < 0)
        return bn_error(BITNET_E_INVALID_ARG,
                        "out_capacity=%d is negative", (int)out_capacity);
    bn_tokens toks = {0};
    int rc = bn_tokenize(v, prompt, strlen(prompt), add_bos != 0,
                         parse_special != 0, &toks, step, NULL);
    if (rc) {
        bn_tokens_free(&toks);
        return rc;
    }
    if (toks.n > INT32_MAX) {
        bn_tokens_free(&toks);
        return bn_error(BITNET_E_INFERENCE, "prompt produces more than "
                                            "2^31-1 tokens");
    }
    *out_len = (int32_t)toks.n;
    if (out_tokens) {
        if ((size_t)out_capacity < toks.n) {
            rc = bn_error(BITNET_E_INVALID_ARG,
                          "buffer too small (need %zu, got %d): call first "
                          "with out_tokens=NULL to query the size",
                          toks.n, (int)out_capacity);
        } else if (toks.n) {
            memcpy(out_tokens, toks.ids, toks.n * sizeof(int32_t));
        }
    }
    bn_tokens_free(&toks);
    return rc;
}

static int ref_tokenize(void *ctx, const char *prompt, int add_bos,
                        int parse_special, int32_t *out_tokens,
                        int32_t out_capacity, int32_t *out_len, char *err,
                        int32_t err_len)
{
    ref_ctx *c = ctx;
    return done(tokenize_two_pass(bn_model_vocab(c->model), prompt, add_bos,
                                  parse_special, out_tokens, out_capacity,
                                  out_len),
                err, err_len);
}

static int ref_detokenize(void *ctx, const int32_t *tokens, int32_t n_tokens,
                          int remove_special, int unparse_special,
                          char *out_text, int32_t out_capacity,
                          int32_t *out_len, char *err, int32_t err_len)
{
    ref_ctx *c = ctx;
    int rc = BITNET_OK;
    if (!out_len)
        rc = bn_error(BITNET_E_INVALID_ARG, "out_len is NULL");
    else if (n_tokens < 0)
        rc = bn_error(BITNET_E_INVALID_ARG, "n_tokens=%d is negative",
                      (int)n_tokens);
    else if (out_text && out_capacity < 0)
        rc = bn_error(BITNET_E_INVALID_ARG, "out_capacity=%d is negative",
                      (int)out_capacity);
    size_t n = 0;
    if (!rc)
        rc = bn_detokenize(bn_model_vocab(c->model), tokens, (size_t)n_tokens,
                           remove_special, unparse_special, out_text,
                           out_text ? (size_t)out_capacity : 0, &n, step,
                           NULL);
    if (out_len && (!rc || n))
        *out_len = n > INT32_MAX ? INT32_MAX : (int32_t)n;
    if (!rc && n > INT32_MAX)
        rc = bn_error(BITNET_E_INFERENCE,
                      "the text of %d tokens is longer than 2^31-1 bytes",
                      (int)n_tokens);
    return done(rc, err, err_len);
}

static int eval_two_pass(bn_state *st, int32_t n_vocab, const int32_t *tokens,
                         int32_t n_tokens, int32_t seq_id, float *out_logits,
                         int32_t logits_capacity, int32_t *out_rows,
                         int32_t *out_cols)
{
    if (!out_rows || !out_cols)
        return bn_error(BITNET_E_INVALID_ARG, "out_rows/out_cols is NULL");
    int rc = bn_forward_check(st, seq_id, tokens, n_tokens);
    if (rc)
        return rc;
    *out_rows = n_tokens;
    *out_cols = n_vocab;
    if (!out_logits)
        return BITNET_OK;
    int64_t need = (int64_t)n_tokens * n_vocab;
    if (logits_capacity < need)
        return bn_error(BITNET_E_INVALID_ARG,
                        "buffer too small (need %lld, got %d): call first "
                        "with out_logits=NULL to query rows x cols",
                        (long long)need, (int)logits_capacity);
    return bn_forward(st, seq_id, tokens, n_tokens, out_logits, step, NULL);
}

static int ref_eval(void *ctx, const int32_t *tokens, int32_t n_tokens,
                    int32_t seq_id, float *out_logits, int32_t logits_capacity,
                    int32_t *out_rows, int32_t *out_cols, char *err,
                    int32_t err_len)
{
    ref_ctx *c = ctx;
    return done(eval_two_pass(c->state, bn_model_n_vocab(c->model), tokens,
                              n_tokens, seq_id, out_logits, logits_capacity,
                              out_rows, out_cols),
                err, err_len);
}

static int ref_eval_gpu(void *ctx, const int32_t *tokens, int32_t n_tokens,
                        float *out_logits, int32_t logits_capacity,
                        int32_t *out_rows, int32_t *out_cols, char *err,
                        int32_t err_len)
{
    (void)ctx; (void)tokens; (void)n_tokens; (void)out_logits;
    (void)logits_capacity; (void)out_rows; (void)out_cols;
    return done(bn_error(BITNET_E_UNSUPPORTED,
                         "GPU evaluation is not available: the reference "
                         "backend was built without GPU support (has_cuda=0, "
                         "has_metal=0, has_hip=0); evaluate on the CPU "
                         "(bitnet_cpp_eval_with_context)"),
                err, err_len);
}

static int ref_get_n_past(void *ctx, int32_t seq_id, int32_t *out)
{
    ref_ctx *c = ctx;
    if (NEVER(!out, "bitnet_cpp_get_n_past refuses a NULL out_n_past and passes its own &n (sockets.c)"))
        return bn_error(BITNET_E_INVALID_ARG, "out_n_past is NULL");
    if (seq_id < 0 || seq_id >= BN_MAX_SEQ)
        return bn_error(BITNET_E_INVALID_ARG,
                        "seq_id %d is out of range: use 0..%d", (int)seq_id,
                        BN_MAX_SEQ - 1);
    *out = bn_state_n_past(c->state, seq_id);
    return BITNET_OK;
}

static int ref_reset(void *ctx, int32_t seq_id)
{
    ref_ctx *c = ctx;
    if (seq_id >= BN_MAX_SEQ)
        return bn_error(BITNET_E_INVALID_ARG,
                        "seq_id %d is out of range: use 0..%d, or -1 for all",
                        (int)seq_id, BN_MAX_SEQ - 1);
    bn_state_reset(c->state, seq_id);
    return BITNET_OK;
}

static int ref_model_info(void *ctx, int32_t *n_vocab, int32_t *n_ctx)
{
    ref_ctx *c = ctx;
    if (n_vocab)
        *n_vocab = bn_model_n_vocab(c->model);
    if (n_ctx)
        *n_ctx = bn_state_n_ctx(c->state);
    return BITNET_OK;
}

static int ref_caps(bitnet_capabilities_t *out)
{
    if (NEVER(!out, "every caller passes its own local caps (sockets.c), a NULL out_caps is refused before"))
        return bn_error(BITNET_E_INVALID_ARG, "out_caps is NULL");
    bn_cpu_capabilities(out);
    return BITNET_OK;
}

/* Per-call tokenize loads only the metadata: the vocabulary is all it
 * needs, and the file's tensor data is still validated against its size. */
static int ref_percall_tokenize(const char *path, const char *prompt,
                                int add_bos, int parse_special,
                                int32_t *out_tokens, int32_t out_capacity,
                                int32_t *out_len, char *err, int32_t err_len)
{
    bn_model *m = NULL;
    int rc = check_path(path);
    if (!rc)
        rc = bn_model_load(path, BN_MODEL_VOCAB_ONLY, step, NULL, &m);
    if (!rc)
        rc = tokenize_two_pass(bn_model_vocab(m), prompt, add_bos,
                               parse_special, out_tokens, out_capacity,
                               out_len);
    bn_model_free(m);
    return done(rc, err, err_len);
}

/* Per-call eval: the query pass reads the metadata to learn n_vocab; the
 * fill pass loads everything, evaluates from an empty context, frees. */
static int ref_percall_eval(const char *path, const int32_t *tokens,
                            int32_t n_tokens, int32_t n_ctx, float *out_logits,
                            int32_t logits_capacity, int32_t *out_rows,
                            int32_t *out_cols, char *err, int32_t err_len)
{
    bn_model *m = NULL;
    bn_state *st = NULL;
    int rc = check_path(path);
    if (!rc && n_ctx < 0)
        rc = bn_error(BITNET_E_INVALID_ARG, "n_ctx=%d is negative",
                      (int)n_ctx);
    if (!rc)
        rc = bn_model_load(path, out_logits ? 0 : BN_MODEL_VOCAB_ONLY, step,
                           NULL, &m);
    if (!rc && !out_logits) {
        /* size query: validate what can be validated without weights */
        if (!out_rows || !out_cols)
            rc = bn_error(BITNET_E_INVALID_ARG, "out_rows/out_cols is NULL");
        else if (n_tokens <= 0)
            rc = bn_error(BITNET_E_INFERENCE,
                          "empty token list: evaluate needs at least one "
                          "token (n_tokens=%d)",
                          (int)n_tokens);
        else {
            *out_rows = n_tokens;
            *out_cols = bn_model_n_vocab(m);
        }
    } else if (!rc) {
        if (!(rc = bn_state_new(m, n_ctx, &st)))
            rc = eval_two_pass(st, bn_model_n_vocab(m), tokens, n_tokens, 0,
                               out_logits, logits_capacity, out_rows,
                               out_cols);
    }
    bn_state_free(st);
    bn_model_free(m);
    return done(rc, err, err_len);
}

const bn_backend bn_reference_backend = {
    .name = "reference",
    .embedded = 1,
    .init_context = ref_init_context,
    .free_context = ref_free_context,
    .tokenize_with_context = ref_tokenize,
    .detokenize_with_context = ref_detokenize,
    .eval_with_context = ref_eval,
    .eval_gpu = ref_eval_gpu,
    .get_n_past = ref_get_n_past,
    .reset_context = ref_reset,
    .get_model_info = ref_model_info,
    .get_capabilities = ref_caps,
    .percall_tokenize = ref_percall_tokenize,
    .percall_eval = ref_percall_eval,
};
