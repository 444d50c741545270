/*
 * bitnet_bridge.h — what the bridge offers beyond the socket ABI: backend
 * selection and the fallback chain, deadlines and cancellation, logging,
 * and discovery reports.  Only the bridge implements these; a backend
 * library does not export them.
 *
 * Backends ("modes", listed in bitnet_backends.def):
 *   reference  the embedded engine, linked in (default)
 *   dlopen     a library exporting bitnet.h, found by discovery:
 *              BITNET_CPP_LIBDIR/libbitnet.so, then
 *              BITNET_CPP_DIR/build/bin/libbitnet.so, then the system loader
 *              path ("libbitnet.so"), then -- only when neither variable is
 *              set -- the reference library bundled with the package
 *   llama      llama.cpp (a libllama.so, e.g. llama-cpp-python's) through the
 *              adapter set with bitnet_bridge_set_llama_library
 *   stub       no backend: every call fails with BITNET_E_NOT_AVAILABLE
 *
 * Fallback chain (seed 003 section 2): tokenize and eval are served by the
 * backend's optional socket when it exports it, else by the fallback tier
 * (holding the model for the context's whole life), else
 * BITNET_E_NOT_AVAILABLE naming both tiers.  The fallback tier is
 * llama.cpp when its adapter is configured, else the embedded reference
 * engine; BITNET_FALLBACK=auto (default) | llama | reference | none picks
 * or disables it.  BITNET_FORCE_LLAMA_FALLBACK=1 sends every call to the
 * fallback tier.
 */
#ifndef BITNET_BRIDGE_H
#define BITNET_BRIDGE_H

#include "bitnet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *backend;      /* "reference" | "dlopen" | "llama" | "stub"; NULL:
                                 BITNET_BACKEND, else "reference" */
    const char *library_path; /* dlopen: this file; NULL: discovery */
    int force_fallback;       /* 1/0; -1: BITNET_FORCE_LLAMA_FALLBACK */
    const char *fallback;     /* "auto" | "llama" | "reference" | "none";
                                 NULL: BITNET_FALLBACK, else "auto" */
} bitnet_bridge_options;

/* bitnet_cpp_init_context with explicit options (NULL: all defaults). */
BITNET_API int bitnet_bridge_init_context(bitnet_context_t **out_ctx,
                                          const char *model_path,
                                          int32_t n_ctx, int32_t n_gpu_layers,
                                          const bitnet_bridge_options *opts,
                                          char *err, int32_t err_len);
/* The per-call functions with explicit options. */
BITNET_API int bitnet_bridge_percall_tokenize(
    const bitnet_bridge_options *opts, const char *model_path,
    const char *prompt, int add_bos, int parse_special, int32_t *out_tokens,
    int32_t out_capacity, int32_t *out_len, char *err, int32_t err_len);
BITNET_API int bitnet_bridge_percall_eval(
    const bitnet_bridge_options *opts, const char *model_path,
    const int32_t *tokens, int32_t n_tokens, int32_t n_ctx,
    float *out_logits, int32_t logits_capacity, int32_t *out_rows,
    int32_t *out_cols, char *err, int32_t err_len);

/* Which tier served the calling thread's last per-call function, as
 * bitnet_bridge_served_by says it ("" before the first, or when it failed
 * before a tier was chosen), copied into buf (NUL-terminated, truncated to
 * buf_len - 1 bytes).  Returns the full length without the NUL, like the
 * two below: buf NULL is a size query. */
BITNET_API int32_t bitnet_bridge_percall_served_by(char *buf, int32_t buf_len);

/* Name of the backend serving ctx ("reference", "dlopen:/path", "stub").
 * Which tier serves `operation` ("tokenize" or "evaluate") for ctx: the
 * backend's name, or "fallback:<name> (<why>)".
 *
 * Both copy the text into buf (NUL-terminated, truncated to buf_len - 1
 * bytes) while the handle is held, so a free on another thread cannot pull
 * it away; buf NULL is a size query.  They return the full length without
 * the NUL, or BITNET_E_INVALID_HANDLE (BITNET_E_INVALID_ARG for an unknown
 * operation). */
BITNET_API int32_t bitnet_bridge_backend_name(const bitnet_context_t *ctx,
                                              char *buf, int32_t buf_len);
BITNET_API int32_t bitnet_bridge_served_by(const bitnet_context_t *ctx,
                                           const char *operation, char *buf,
                                           int32_t buf_len);

/* Whether the caller's deadline and cancellation (below) reach inside the
 * calls of the libraries serving ctx: "" (length 0) when they do -- the
 * embedded engines, and a loaded library that took the bridge's table
 * through bitnet_host_attach (bitnet_host.h) -- else why not, one clause
 * naming the library ("/x/libbitnet.so does not export bitnet_host_attach
 * ...").  A call into such a library returns when the library returns,
 * whatever the deadline.  The same copy contract as the two above. */
BITNET_API int32_t bitnet_bridge_deadlines(const bitnet_context_t *ctx,
                                           char *buf, int32_t buf_len);

/* Socket 6 of a backend: what the library serving ctx (the backend it was
 * created with), or the backend the options select (loaded if need be),
 * reports it can use; bitnet_cpp_get_capabilities is the latter with
 * default options.  BITNET_E_UNSUPPORTED for a library without Socket 6,
 * BITNET_E_NOT_AVAILABLE in STUB mode, BITNET_E_INFERENCE for a report
 * that is not 0/1 flags. */
BITNET_API int bitnet_bridge_get_capabilities(const bitnet_bridge_options *opts,
                                              bitnet_capabilities_t *out_caps);
BITNET_API int bitnet_bridge_context_capabilities(
    const bitnet_context_t *ctx, bitnet_capabilities_t *out_caps);

/* Deadline for the bridge calls this thread makes from now on:
 * timeout_ns > 0 sets one (measured from the start of each call), 0 clears
 * it.  Checked at step points (load chunks, tokenizer chunks, every layer). */
BITNET_API void bitnet_bridge_set_call_timeout(int64_t timeout_ns);
/* The same with one absolute deadline for every call until it is changed:
 * deadline_ns on the clock of bitnet_bridge_now_ns (CLOCK_MONOTONIC), 0
 * clears it; a time already past fails each call at its first check.  For
 * an operation made of several calls (query pass, then fill pass) that must
 * end by one time.  Each of the two setters replaces what the other set. */
BITNET_API void bitnet_bridge_set_call_deadline(int64_t deadline_ns);
/* The bridge's clock (CLOCK_MONOTONIC), in ns. */
BITNET_API int64_t bitnet_bridge_now_ns(void);
/* Asks the call running on ctx (from another thread) to stop: it returns
 * BITNET_E_TIMEOUT at its next step point, leaving ctx usable. */
BITNET_API int bitnet_bridge_cancel(const bitnet_context_t *ctx);

/* Logging: lines "[time] [LEVEL] [component] message" go to sink (NULL:
 * stderr).  Levels 0=error .. 4=trace; lines above the level are dropped
 * before formatting. */
BITNET_API void bitnet_bridge_set_log_sink(void (*sink)(int level,
                                                        const char *component,
                                                        const char *line));
BITNET_API void bitnet_bridge_set_log_level(int level);
BITNET_API int bitnet_bridge_get_log_level(void);
/* An invalid BITNET_CPP_LOG_LEVEL is reported once, naming the valid
 * levels: as a WARN line at the first line logged or when a sink is set,
 * unless a binding takes the report first to raise it its own way (Python:
 * a warning).  Copies it into buf (NUL-terminated, truncated) and returns
 * its length, 0 when there is none (or it was already reported). */
BITNET_API int32_t bitnet_bridge_take_log_config_error(char *buf,
                                                       int32_t buf_len);

/* Where the dlopen mode's last-resort bundled library lives (set by the
 * binding at load time). */
BITNET_API void bitnet_bridge_set_bundled_library(const char *path);

/* The llama.cpp adapter (a library exporting bitnet.h over libllama,
 * native/llama/adapter.c, built by the binding) and the libllama.so it
 * links; or adapter_path NULL and `unavailable` saying why (the message of
 * the BITNET_E_LIBRARY_NOT_FOUND a llama backend request then returns).
 * Set by the binding at load time. */
BITNET_API void bitnet_bridge_set_llama_library(const char *adapter_path,
                                                const char *libllama_path,
                                                const char *unavailable);

/* The table of bitnet_host.h this bridge lends the libraries it loads (a
 * `const bitnet_host_t *`, opaque here so this header needs none of
 * bitnet_host.h), for a harness that loads a cooperating library itself
 * (an interposing libllama, loaded by an application rather than by the
 * bridge) and hands it the same services: deadlines, logging, the fault
 * engine and its registry.  Valid for the life of the process. */
BITNET_API const void *bitnet_bridge_host_table(void);

/* Discovery report for the given options, as text lines (two-pass: buf NULL
 * returns the size needed including the NUL):
 *   mode\t<backend>
 *   tried\t<path>\t<result>
 *   library\t<path>
 *   abi\t<found>\t<expected>
 *   version\t<text>
 *   deadlines\thonoured | deadlines\tnot honoured\t<why>  (as
 *            bitnet_bridge_deadlines says it; absent when nothing loaded)
 *   symbol\t<name>\t<required|optional>\t<found|missing>\t<served by>
 *   error\t<message>
 * Returns the length written (without NUL), or a negative code. */
BITNET_API int32_t bitnet_bridge_describe(const bitnet_bridge_options *opts,
                                          char *buf, int32_t buf_len);

/* The loader's library objects: `libraries` cached (one per library
 * loaded, kept until exit with the library itself) and `views` alive (a
 * library as a load under an armed dlsym.<symbol> fault sees it, counted
 * in the live bytes and freed with the context or call that loaded it).
 * Either pointer may be NULL. */
BITNET_API void bitnet_bridge_library_objects(int32_t *libraries,
                                              int32_t *views);

/* ---- the tables of native/include, for callers to enumerate ------------
 * Each returns BITNET_OK and fills *out with static strings, or
 * BITNET_E_INVALID_ARG for an index outside 0..count-1 or out NULL. */

/* bitnet_errors.def: one entry per error code (BITNET_OK is not one). */
typedef struct {
    int32_t code;           /* -5                                          */
    const char *name;       /* "BITNET_E_OOM"                              */
    const char *class_name; /* "OutOfMemory": the class of the taxonomy    */
    const char *message;    /* "allocation failed or refused"              */
} bitnet_error_info_t;
BITNET_API int32_t bitnet_bridge_error_count(void);
BITNET_API int bitnet_bridge_error_info(int32_t index,
                                        bitnet_error_info_t *out);

/* What the bridge does with a library lacking a symbol (bitnet_symbols.def's
 * NEED), and the symbols it never resolves (its BITNET_SYMBOL_UNRESOLVED
 * entries). */
enum {
    BITNET_SYMBOL_REQUIRED = 1, /* refuses the library                     */
    BITNET_SYMBOL_FALLBACK = 2, /* the fallback tier serves the call       */
    BITNET_SYMBOL_OPTIONAL = 3, /* does without it                         */
    BITNET_SYMBOL_EXPORTED = 4  /* never resolved: exported for callers    */
};

/* bitnet_symbols.def: every symbol of the socket ABI, in loader order. */
typedef struct {
    const char *name; /* "bitnet_cpp_init_context"                         */
    int32_t socket;   /* seed 003's socket 1..6; 0: outside the six         */
    int32_t need;     /* BITNET_SYMBOL_*                                    */
    int32_t required; /* 1 when need is BITNET_SYMBOL_REQUIRED              */
    int32_t point;    /* fault registry index of dlsym.<name>; -1 when
                         need is EXPORTED (the loader never resolves it)    */
} bitnet_symbol_info_t;
BITNET_API int32_t bitnet_bridge_symbol_count(void);
BITNET_API int bitnet_bridge_symbol_info(int32_t index,
                                         bitnet_symbol_info_t *out);

/* bitnet_backends.def: the backends, in the order every listing uses. */
typedef struct {
    const char *name;        /* "reference"                                */
    const char *description; /* one line: what serves the calls            */
} bitnet_backend_info_t;
BITNET_API int32_t bitnet_bridge_backend_count(void);
BITNET_API int bitnet_bridge_backend_info(int32_t index,
                                          bitnet_backend_info_t *out);

#ifdef __cplusplus
}
#endif
#endif
