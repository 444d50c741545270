/*
 * bitnet.h — the socket ABI of a BitNet inference library.
 *
 * This is the C contract between the bridge (and the bindings over it) and
 * a backend: the embedded reference engine, a library loaded with dlopen,
 * or llama.cpp behind an adapter.  The names and the two-pass semantics are
 * those of the FFI sockets specification (seed 003):
 *
 *   Socket 1  bitnet_cpp_init_context / bitnet_cpp_free_context
 *   Socket 2  bitnet_cpp_tokenize_with_context            (optional)
 *             bitnet_cpp_detokenize_with_context          (optional)
 *   Socket 3  bitnet_cpp_eval_with_context                (optional)
 *   Socket 4  bitnet_cpp_session_*                        (optional)
 *   Socket 5  bitnet_cpp_eval_gpu                         (optional)
 *   Socket 6  bitnet_cpp_get_capabilities                 (optional)
 *   per-call  crossval_bitnet_tokenize / crossval_bitnet_eval_with_tokens
 *
 * Conventions shared by every function here:
 *
 *  - Return value: BITNET_OK (0) or one of the negative BITNET_E_* codes.
 *  - Two-pass buffers: a NULL output buffer is a size query; the function
 *    then stores the required size and returns BITNET_OK without doing the
 *    work (and without changing any state).  With a buffer, the capacity is
 *    always checked before anything is written; a capacity below the
 *    required size fails with BITNET_E_INVALID_ARG ("buffer too small
 *    (need N, got M)") and nothing is written to the buffer.
 *  - Errors: when err != NULL and err_len > 0, the message is copied into
 *    err, always NUL-terminated, truncated if needed.  The full message is
 *    also kept as the calling thread's last error, see
 *    bitnet_cpp_get_last_error().
 *  - Handles are not shared between threads at the same time: a second
 *    concurrent call on one context fails with BITNET_E_THREAD_SAFETY.
 *  - Handles are opaque values, not addresses to dereference.  A freed
 *    handle fails with BITNET_E_INVALID_HANDLE for ever after, even once a
 *    new context or session is created in its place: a call that kept one
 *    never runs on another caller's context.
 */
#ifndef BITNET_H
#define BITNET_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define BITNET_API __declspec(dllexport)
#else
#define BITNET_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature or a struct layout in this file changes.
 * Overridable only so tests can build a library "from another release"
 * (-DBITNET_ABI_VERSION=99) and check the loader refuses it. */
#ifndef BITNET_ABI_VERSION
#define BITNET_ABI_VERSION 1
#endif

/* Error codes: BITNET_OK, and one enumerator per line of bitnet_errors.def
 * (BITNET_E_INVALID_ARG = -1 ... BITNET_E_ABI_MISMATCH = -16), where each
 * code's meaning and the error class a caller raises for it are listed. */
enum {
    BITNET_OK = 0,
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE) ID = CODE,
#include "bitnet_errors.def"
#undef BITNET_ERROR
};

/* The lowest code.  The table's codes run -1, -2, ... without a gap
 * (native/common/bn_error.c asserts it), so the lowest is minus the number
 * of entries: one "- 1" per entry. */
enum {
    BITNET_E_MIN = 0
#define BITNET_ERROR(ID, CODE, CLASS_NAME, MESSAGE) - 1
#include "bitnet_errors.def"
#undef BITNET_ERROR
};

typedef struct bitnet_context_t bitnet_context_t;
typedef struct bitnet_session_t bitnet_session_t;

typedef struct {
    int has_avx2;   /* x86 AVX2 (runtime CPUID + OS support)  */
    int has_avx512; /* x86 AVX-512F                           */
    int has_neon;   /* ARM NEON                               */
    int has_cuda;   /* built with CUDA and a device present   */
    int has_metal;  /* built with Metal and a device present  */
    int has_hip;    /* built with ROCm and a device present   */
} bitnet_capabilities_t;

/* ---- Socket 1: persistent context ------------------------------------ */

/* Load model_path and create a context of n_ctx positions (n_ctx <= 0:
 * the model's training context length).  *out_ctx is set only on success. */
BITNET_API int bitnet_cpp_init_context(bitnet_context_t **out_ctx,
                                       const char *model_path, int32_t n_ctx,
                                       int32_t n_gpu_layers, char *err,
                                       int32_t err_len);

/* Free a context (NULL-safe).  Returns BITNET_E_INVALID_HANDLE for a handle
 * that is not live. */
BITNET_API int bitnet_cpp_free_context(bitnet_context_t *ctx);

/* ---- Socket 2: tokenize with a context -------------------------------- */

BITNET_API int bitnet_cpp_tokenize_with_context(
    const bitnet_context_t *ctx, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len);

/* The text of tokens[0..n_tokens), as bytes (not NUL-terminated; a
 * sequence may end inside a UTF-8 character), with llama_detokenize's
 * semantics: remove_special drops a leading BOS and a trailing EOS the
 * vocabulary adds; unparse_special renders control tokens' text (else they
 * give nothing).  Two passes like tokenize: out_text NULL sets *out_len to
 * the bytes needed.  A token id outside the vocabulary is
 * BITNET_E_INFERENCE naming it and its position.  An extension of seed
 * 003's Socket 2, optional: a library without it is served by the fallback
 * tier (ABI version unchanged). */
BITNET_API int bitnet_cpp_detokenize_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int remove_special, int unparse_special, char *out_text,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len);

/* ---- Socket 3: evaluate with a context -------------------------------- */

/* Appends tokens to sequence seq_id (its own KV cache and position) and
 * returns one row of n_vocab logits per token.  The query pass (out_logits
 * NULL) sets rows/cols and changes nothing.  A failed fill pass leaves the
 * sequence exactly as it was before the call. */
BITNET_API int bitnet_cpp_eval_with_context(
    const bitnet_context_t *ctx, const int32_t *tokens, int32_t n_tokens,
    int32_t seq_id, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len);

/* ---- Socket 4: session (context + tokenizer in one handle) ------------- */

BITNET_API int bitnet_cpp_session_create(bitnet_session_t **out_session,
                                         const char *model_path,
                                         const char *tokenizer_path,
                                         int32_t n_ctx, int32_t n_gpu_layers,
                                         char *err, int32_t err_len);
BITNET_API int bitnet_cpp_session_free(bitnet_session_t *session);
BITNET_API int bitnet_cpp_session_tokenize(
    const bitnet_session_t *session, const char *prompt, int add_bos,
    int parse_special, int32_t *out_tokens, int32_t out_capacity,
    int32_t *out_len, char *err, int32_t err_len);
BITNET_API int bitnet_cpp_session_eval(const bitnet_session_t *session,
                                       const int32_t *tokens, int32_t n_tokens,
                                       float *out_logits,
                                       int32_t logits_capacity,
                                       int32_t *out_rows, int32_t *out_cols,
                                       char *err, int32_t err_len);

/* ---- Socket 5: GPU evaluation ----------------------------------------- */

/* In a build without GPU support: BITNET_E_UNSUPPORTED, naming what is
 * missing. */
BITNET_API int bitnet_cpp_eval_gpu(const bitnet_context_t *ctx,
                                   const int32_t *tokens, int32_t n_tokens,
                                   float *out_logits, int32_t logits_capacity,
                                   int32_t *out_rows, int32_t *out_cols,
                                   char *err, int32_t err_len);

/* ---- Socket 6: capabilities ------------------------------------------- */

BITNET_API int bitnet_cpp_get_capabilities(bitnet_capabilities_t *out_caps);

/* ---- Per-call functions (load, work, free on every call) --------------- */

BITNET_API int crossval_bitnet_tokenize(const char *model_path,
                                        const char *prompt, int add_bos,
                                        int parse_special, int32_t *out_tokens,
                                        int32_t out_capacity, int32_t *out_len,
                                        char *err, int32_t err_len);
BITNET_API int crossval_bitnet_eval_with_tokens(
    const char *model_path, const int32_t *tokens, int32_t n_tokens,
    int32_t n_ctx, float *out_logits, int32_t logits_capacity,
    int32_t *out_rows, int32_t *out_cols, char *err, int32_t err_len);

/* ---- Context helpers (extensions to the seed) -------------------------- */

/* Number of positions already evaluated in seq_id (its n_past). */
BITNET_API int bitnet_cpp_get_n_past(const bitnet_context_t *ctx,
                                     int32_t seq_id, int32_t *out_n_past);
/* Forget sequence seq_id (seq_id < 0: every sequence). */
BITNET_API int bitnet_cpp_reset_context(bitnet_context_t *ctx, int32_t seq_id);
/* Model facts: vocabulary size and the context size actually allocated. */
BITNET_API int bitnet_cpp_get_model_info(const bitnet_context_t *ctx,
                                         int32_t *out_n_vocab,
                                         int32_t *out_n_ctx);

/* ---- Version, last error, live counters ------------------------------- */

/* BITNET_ABI_VERSION of the library (compared by loaders before use). */
BITNET_API int32_t bitnet_cpp_abi_version(void);
/* Human-readable version string, static storage. */
BITNET_API const char *bitnet_cpp_version(void);

/* Copies the calling thread's last error message into buf (NUL-terminated,
 * truncated to buf_len - 1 bytes) and returns the full message length in
 * bytes, without the NUL.  buf == NULL is a size query.  Returns 0 when no
 * error was recorded on this thread. */
BITNET_API int32_t bitnet_cpp_get_last_error(char *buf, int32_t buf_len);
/* The native code of the thread's last error (BITNET_OK if none). */
BITNET_API int32_t bitnet_cpp_get_last_error_code(void);

/* Live objects and memory, for leak checks: every native allocation goes
 * through one counted allocator.  All counters return to their baseline
 * when everything created has been freed. */
typedef struct {
    int64_t contexts;    /* live bitnet_context_t                    */
    int64_t sessions;    /* live bitnet_session_t                    */
    int64_t models;      /* models loaded and not yet freed          */
    int64_t bytes;       /* bytes held by the counted allocator      */
    int64_t allocations; /* blocks held by the counted allocator     */
    int64_t model_loads; /* models loaded since start (monotonic)    */
    int64_t peak_bytes;  /* high-water mark of bytes (monotonic)     */
} bitnet_counters_t;
BITNET_API int bitnet_cpp_get_counters(bitnet_counters_t *out);

#ifdef __cplusplus
}
#endif
#endif /* BITNET_H */
