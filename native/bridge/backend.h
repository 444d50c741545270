/*
 * backend.h — what the bridge needs from a backend: the socket functions
 * of bitnet.h over the backend's own context type.
 *
 * The bridge wraps every backend context in a bitnet_context_t of its own
 * (handle validation, thread guard, counters) and routes each call through
 * this table.  A NULL entry is an optional socket the backend lacks; the
 * bridge then answers BITNET_E_UNSUPPORTED (the fallback chain arrives
 * with the loader).
 */
#ifndef BN_BACKEND_H
#define BN_BACKEND_H

#include <stdint.h>

#include "bitnet.h"

typedef struct bn_backend {
    const char *name; /* "reference", "dlopen:<path>", ... */
    int embedded;     /* shares this module's last error and deadline */
    /* NULL when the caller's deadline and cancellation reach inside its
     * calls (embedded, or a library that took bitnet_host_attach's table);
     * else why they stop at its boundary, one clause naming the library
     * (loader.c writes it when the library is attached) */
    const char *unbounded;

    int (*init_context)(void **out_ctx, const char *model_path, int32_t n_ctx,
                        int32_t n_gpu_layers, char *err, int32_t err_len);
    int (*free_context)(void *ctx);
    int (*tokenize_with_context)(void *ctx, const char *prompt, int add_bos,
                                 int parse_special, int32_t *out_tokens,
                                 int32_t out_capacity, int32_t *out_len,
                                 char *err, int32_t err_len);
    int (*detokenize_with_context)(void *ctx, const int32_t *tokens,
                                   int32_t n_tokens, int remove_special,
                                   int unparse_special, char *out_text,
                                   int32_t out_capacity, int32_t *out_len,
                                   char *err, int32_t err_len);
    int (*eval_with_context)(void *ctx, const int32_t *tokens,
                             int32_t n_tokens, int32_t seq_id,
                             float *out_logits, int32_t logits_capacity,
                             int32_t *out_rows, int32_t *out_cols, char *err,
                             int32_t err_len);
    int (*eval_gpu)(void *ctx, const int32_t *tokens, int32_t n_tokens,
                    float *out_logits, int32_t logits_capacity,
                    int32_t *out_rows, int32_t *out_cols, char *err,
                    int32_t err_len);
    int (*get_n_past)(void *ctx, int32_t seq_id, int32_t *out);
    int (*reset_context)(void *ctx, int32_t seq_id);
    int (*get_model_info)(void *ctx, int32_t *n_vocab, int32_t *n_ctx);
    int (*get_capabilities)(bitnet_capabilities_t *out);

    int (*percall_tokenize)(const char *model_path, const char *prompt,
                            int add_bos, int parse_special,
                            int32_t *out_tokens, int32_t out_capacity,
                            int32_t *out_len, char *err, int32_t err_len);
    int (*percall_eval)(const char *model_path, const int32_t *tokens,
                        int32_t n_tokens, int32_t n_ctx, float *out_logits,
                        int32_t logits_capacity, int32_t *out_rows,
                        int32_t *out_cols, char *err, int32_t err_len);
    /* Socket 4 of a library (NULL for the embedded backends): used only
     * when it lacks Socket 1 (session_tier.c) */
    int (*session_create)(bitnet_session_t **out, const char *model_path,
                          const char *tokenizer_path, int32_t n_ctx,
                          int32_t n_gpu_layers, char *err, int32_t err_len);
    int (*session_free)(bitnet_session_t *s);
    int (*session_tokenize)(const bitnet_session_t *s, const char *prompt,
                            int add_bos, int parse_special,
                            int32_t *out_tokens, int32_t out_capacity,
                            int32_t *out_len, char *err, int32_t err_len);
    int (*session_eval)(const bitnet_session_t *s, const int32_t *tokens,
                        int32_t n_tokens, float *out_logits,
                        int32_t logits_capacity, int32_t *out_rows,
                        int32_t *out_cols, char *err, int32_t err_len);
    /* a library's own last error, to recover messages longer than err */
    int32_t (*get_last_error)(char *buf, int32_t buf_len);
} bn_backend;

/* The embedded reference engine (native/reference). */
extern const bn_backend bn_reference_backend;
/* No engine at all: every call fails with BITNET_E_NOT_AVAILABLE. */
extern const bn_backend bn_stub_backend;

#endif
