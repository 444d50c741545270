/*
 * bridge.h — what the files of native/bridge share (nothing outside the
 * bridge layer includes it).
 *
 * The bridge is the socket ABI (bitnet.h) as callers see it, and the
 * extensions of bitnet_bridge.h.  Every handle given out is a bridge object
 * wrapping backend contexts.  The bridge owns what must hold whatever the
 * backend: handle validation (a freed or foreign pointer is
 * BITNET_E_INVALID_HANDLE, never a crash), the one-call-at-a-time guard
 * (BITNET_E_THREAD_SAFETY), the fallback chain, deadlines and cancellation,
 * the live counters of contexts and sessions, and the error buffer contract.
 *
 *   options.c    what the bridge is told: bitnet_bridge_options resolved
 *                against the environment, and the process-wide settings
 *   routing.c    the fallback tier, and which tier serves each operation
 *   handles.c    the live-handle registry: validation, the busy guard
 *   calls.c      what every entry point does around a backend call
 *   sockets.c    Sockets 1-6 and the context helpers over those handles
 *   session_tier.c  a library's own Socket 4 serving a context, when it
 *                has no Socket 1
 *   percall.c    the per-call functions, the same chain one call long
 *   describe.c   the discovery report (bitnet_bridge_describe)
 *   tables.c     the .def tables for callers to enumerate
 *   host.c       both ends of bitnet_host.h
 *   loader.c     finding and loading libraries (loader.h)
 *   reference_backend.c, stub_backend.c   the embedded backends
 */
#ifndef BN_BRIDGE_H
#define BN_BRIDGE_H

#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>

#include "backend.h"
#include "bitnet_bridge.h"
#include "bn_deadline.h"
#include "bn_fault.h"

typedef enum { KIND_CONTEXT = 1, KIND_SESSION = 2 } handle_kind;

/* Which tier serves an operation of a context. */
typedef struct {
    const bn_backend *be;
    void *impl;
    char label[PATH_MAX + 200]; /* what bitnet_bridge_served_by reports */
} tier;

/* What a bitnet_context_t handle names.  A handle is not a pointer to it
 * (handles.c): bitnet_context_t stays an incomplete type in the bridge, so
 * no code can dereference a handle instead of looking it up. */
typedef struct {
    const bn_backend *be;   /* the selected backend (what a load handed out) */
    const bn_backend *ops;  /* what impl answers to: be, or the Socket 4
                               shim over be's session API (session_tier.c) */
    void *impl;             /* its context (or session, through ops) */
    const bn_backend *fb;   /* fallback tier (llama.cpp or reference), or NULL */
    void *fb_impl;          /* its context: the model stays loaded */
    tier tok, eval;         /* who serves tokenize / eval (and n_past...) */
    tier detok;             /* who serves detokenize */
    int32_t n_vocab, n_ctx; /* the eval tier's model info, checked at create
                               (0: it does not report them) */
    atomic_int busy;        /* 1 while a call runs on this handle */
    atomic_int cancel;      /* set by bitnet_bridge_cancel */
    int torn;               /* a failed free released one tier and kept the
                               other: only free_context may be retried
                               (written with busy held) */
} bn_context;

/* What a bitnet_session_t handle names. */
typedef struct {
    bitnet_context_t *ctx; /* the handle of its context (plus its tokenizer) */
} bn_session;

/* ---- options.c ----------------------------------------------------------- */

/* The backends of bitnet_backends.def, by index. */
typedef enum {
#define BITNET_BACKEND(ID, NAME, DESCRIPTION) BN_BACKEND_##ID,
#include "bitnet_backends.def"
#undef BITNET_BACKEND
    BN_BACKEND__N
} bn_backend_kind;

/* Options with the defaults and the environment applied. */
typedef struct {
    bn_backend_kind kind;
    const char *backend; /* its name, static */
    const char *library_path;
    int force_fallback;
    int fallback_allowed;
    const char *fallback; /* "auto" | "llama" | "reference" | "none" */
} resolved;

/* The options of one call, defaults and environment applied and checked:
 * BITNET_E_INVALID_ARG naming the bad value and where it came from. */
int bn_bridge_resolve(const bitnet_bridge_options *o, resolved *r);
/* The backend for resolved options (loading a library for dlopen / llama);
 * the caller releases it (bn_backend_release, loader.h) when done. */
int bn_select_backend(const resolved *r, const bn_backend **out);

/* ---- routing.c ----------------------------------------------------------- */

/* The fallback tier for `serving` (which never is its own fallback). */
int bn_fallback_backend(const resolved *r, const bn_backend *serving,
                        const bn_backend **out);
/* The tier's name for messages: "llama.cpp" or "reference engine". */
const char *bn_tier_name(const bn_backend *be);
/* What bitnet_bridge_served_by reports for a tier: the backend's name, or
 * "fallback:<name> (<why>)" when why is not NULL. */
void bn_tier_label(char *buf, size_t cap, const bn_backend *be,
                   const char *why);
/* Decides who serves tokenize and eval for a new context, creating the
 * fallback context when one is needed. */
int bn_route(bn_context *c, const resolved *r, const char *path,
             int32_t n_ctx, int32_t n_gpu_layers, char *err, int32_t err_len);

/* ---- handles.c ----------------------------------------------------------- */

/* Registers obj under a new handle (*out); BITNET_E_OOM when the registry
 * cannot grow.  The handle stays valid until bn_handle_remove: a free that
 * fails leaves it registered, so there is nothing to register again. */
int bn_handle_add(void *obj, handle_kind kind, const void **out);
/* Unregisters a live handle and returns its object (NULL if it was not
 * live): from here on the handle is BITNET_E_INVALID_HANDLE, even once a
 * new object takes the memory. */
void *bn_handle_remove(const void *handle, handle_kind kind);
/* Validates a context handle and marks the context busy: the context, or
 * NULL with *rc BITNET_E_INVALID_HANDLE / BITNET_E_THREAD_SAFETY (another
 * call runs on it) / BITNET_E_CLEANUP (a torn context, unless `freeing`),
 * the error recorded. */
bn_context *bn_context_enter(const bitnet_context_t *handle, int freeing,
                             int *rc);
void bn_context_leave(bn_context *c);
/* The handle of a session's context, or NULL with an INVALID_HANDLE error. */
bitnet_context_t *bn_session_context(const bitnet_session_t *handle);

/* ---- calls.c ------------------------------------------------------------- */

/* The calling thread's deadline (bitnet_bridge_set_call_timeout or
 * bitnet_bridge_set_call_deadline) and the cancel flag of the handle, for
 * the duration of one call.  cancel is NULL when no other thread can reach
 * it (a call with neither a deadline nor a cancel flag refuses to hang). */
typedef struct {
    bn_deadline dl;
    const bn_deadline *prev;
} call_scope;
void bn_scope_enter(call_scope *s, atomic_int *cancel, const char *op);
void bn_scope_leave(call_scope *s);

/* Every error a socket returns leaves through bn_done: copied to the
 * caller's buffer, and logged.  bn_failed first makes the bridge's last
 * error a library's whole message.  Both return rc. */
int bn_done(int rc, char *err, int32_t err_len);
int bn_failed(const bn_backend *be, int rc, char *err, int32_t err_len);

/* What a backend reported, checked before a caller sees it (calls.c):
 * BITNET_OK, or BITNET_E_INFERENCE naming the library, the socket, the
 * pass and both values (recorded, not yet copied out: pass it to bn_done).
 * Tokens: 0..3*strlen(prompt)+5, and within cap on a fill.  Logits: n_tokens
 * rows of n_vocab columns (n_vocab <= 0: unknown, any >= 1), within cap on
 * a fill.  n_ctx <= 0: unknown. */
int bn_check_tokens(const bn_backend *be, const char *socket, int fill,
                    int32_t n, int32_t cap, const char *prompt);
/* Detokenize's byte count: >= 0, and within the fill's buffer. */
int bn_check_bytes(const bn_backend *be, const char *socket, int fill,
                   int32_t n, int32_t cap);
int bn_check_logits(const bn_backend *be, const char *socket, int fill,
                    int32_t rows, int32_t cols, int32_t n_tokens,
                    int32_t n_vocab, int32_t cap);
int bn_check_model_info(const bn_backend *be, int32_t n_vocab, int32_t n_ctx);
int bn_check_n_past(const bn_backend *be, int32_t seq_id, int32_t n_past,
                    int32_t n_ctx);
int bn_check_capabilities(const bn_backend *be, const bitnet_capabilities_t *c);

/* ---- session_tier.c ------------------------------------------------------ */

/* 1 when be exports the whole of Socket 4 (create, free, tokenize, eval). */
int bn_has_session_api(const bn_backend *be);
/* A context of a library without Socket 1 served through its Socket 4:
 * *impl a session wrapped for the table *ops (tokenize, eval on sequence 0,
 * free).  Errors leave through bn_failed / bn_done (copied to err). */
int bn_session_tier_open(const bn_backend *be, void **impl,
                         const bn_backend **ops, const char *model_path,
                         int32_t n_ctx, int32_t n_gpu_layers, char *err,
                         int32_t err_len);

/* ---- sockets.c ----------------------------------------------------------- */

/* The `grow` fault: the error of a fill pass that needs more than the query
 * said (both sizes, nothing written), its out_* set to the grown size. */
int bn_grow_tokens_error(int32_t n, int32_t cap, int32_t *out_len,
                         const bn_fault_special *fs);
int bn_grow_logits_error(int32_t rows, int32_t cols, int32_t cap,
                         int32_t *out_rows, int32_t *out_cols,
                         const bn_fault_special *fs);

#endif
