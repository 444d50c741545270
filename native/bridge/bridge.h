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

struct bitnet_context_t {
    const bn_backend *be;   /* the selected backend */
    void *impl;             /* its context */
    const bn_backend *fb;   /* fallback tier (llama.cpp or reference), or NULL */
    void *fb_impl;          /* its context: the model stays loaded */
    tier tok, eval;         /* who serves tokenize / eval (and n_past...) */
    atomic_int busy;        /* 1 while a call runs on this handle */
    atomic_int cancel;      /* set by bitnet_bridge_cancel */
};

struct bitnet_session_t {
    bitnet_context_t *ctx; /* a session is a context plus its tokenizer */
};

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
int bn_route(bitnet_context_t *c, const resolved *r, const char *path,
             int32_t n_ctx, int32_t n_gpu_layers, char *err, int32_t err_len);

/* ---- handles.c ----------------------------------------------------------- */

/* Registers a live handle; BITNET_E_OOM if the registry cannot grow. */
int bn_live_add(const void *p, handle_kind kind);
/* Validates ctx and marks it busy (BITNET_E_INVALID_HANDLE /
 * BITNET_E_THREAD_SAFETY otherwise).  remove != 0 also unregisters it
 * (free). */
int bn_handle_enter(const bitnet_context_t *ctx, int remove);
void bn_handle_leave(const bitnet_context_t *ctx);
/* The session's context, or NULL with an INVALID_HANDLE error; remove != 0
 * also unregisters the session. */
bitnet_context_t *bn_session_ctx(const bitnet_session_t *s, int remove);

/* ---- calls.c ------------------------------------------------------------- */

/* The calling thread's deadline (bitnet_bridge_set_call_timeout) and the
 * cancel flag of the handle, for the duration of one call. */
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

/* ---- sockets.c ----------------------------------------------------------- */

/* The `grow` fault: the error of a fill pass that needs more than the query
 * said (both sizes, nothing written), its out_* set to the grown size. */
int bn_grow_tokens_error(int32_t n, int32_t cap, int32_t *out_len,
                         const bn_fault_special *fs);
int bn_grow_logits_error(int32_t rows, int32_t cols, int32_t cap,
                         int32_t *out_rows, int32_t *out_cols,
                         const bn_fault_special *fs);

#endif
