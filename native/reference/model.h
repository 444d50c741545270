/*
 * model.h — the reference engine: model weights, per-context state (KV
 * caches), and the forward pass of the `bitnet` and `llama` architectures as
 * upstream llama.cpp defines them.
 *
 *   bitnet: RMSNorm -> Q,K,V (optional per-tensor scales) -> RoPE (NEOX:
 *           pairs offset by n_rot/2) -> causal attention -> attn_sub_norm
 *           -> wo -> residual; RMSNorm -> silu(gate)*up -> ffn_sub_norm ->
 *           down -> residual; output_norm; logits from token_embd (tied).
 *   llama:  the same without the sub-norms and scales, RoPE NORM (adjacent
 *           pairs), output.weight when present, else tied.
 *
 * Weights may be F32, F16, TQ2_0 or I2_S (projections); norms are F32.
 */
#ifndef BN_MODEL_H
#define BN_MODEL_H

#include <stdint.h>

#include "gguf.h"
#include "kernels.h"
#include "tokenizer.h"

/* Sequences per context (seq_id in [0, BN_MAX_SEQ)); each has its own KV
 * cache, allocated on first use. */
#define BN_MAX_SEQ 8

/* Called at step points (per layer, per token, during load); a non-zero
 * return aborts the operation with that code, leaving state unchanged. */
typedef int (*bn_step_fn)(void *user);

typedef struct bn_model bn_model;
typedef struct bn_state bn_state;

/* Flags for bn_model_load. */
#define BN_MODEL_VOCAB_ONLY 1u /* metadata and vocabulary, no tensor data */

int bn_model_load(const char *path, unsigned flags, bn_step_fn step,
                  void *step_user, bn_model **out);
/* The same load from size bytes in memory (bn_gguf_open_memory); name
 * stands for the path in messages.  For the fuzzer (fuzz/gguf_fuzzer.c). */
int bn_model_load_memory(const void *data, size_t size, const char *name,
                         unsigned flags, bn_model **out);
void bn_model_free(bn_model *m);

const bn_vocab *bn_model_vocab(const bn_model *m);
int32_t bn_model_n_vocab(const bn_model *m);
int32_t bn_model_n_ctx_train(const bn_model *m);
const char *bn_model_arch(const bn_model *m);
/* Bytes of KV cache one sequence of n_ctx positions needs. */
uint64_t bn_model_kv_bytes(const bn_model *m, int32_t n_ctx);

/* A context's state: n_ctx positions per sequence. */
int bn_state_new(const bn_model *m, int32_t n_ctx, bn_state **out);
void bn_state_free(bn_state *s);
int32_t bn_state_n_ctx(const bn_state *s);
int32_t bn_state_n_past(const bn_state *s, int32_t seq);
void bn_state_reset(bn_state *s, int32_t seq); /* seq < 0: all */

/* Checks tokens (ids in range, fits in n_ctx after n_past) without doing
 * any work: the query pass of eval. */
int bn_forward_check(const bn_state *s, int32_t seq, const int32_t *tokens,
                     int32_t n_tokens);

/* Evaluates n_tokens tokens appended to sequence seq, writing
 * n_tokens x n_vocab logits.  On any failure n_past is unchanged. */
int bn_forward(bn_state *s, int32_t seq, const int32_t *tokens,
               int32_t n_tokens, float *logits, bn_step_fn step,
               void *step_user);

#endif
