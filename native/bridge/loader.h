/*
 * loader.h — finding and loading a library that exports the socket ABI.
 *
 * Loaded libraries stay loaded until the process exits: contexts created
 * from them hold function pointers into them, and dlclose under a live
 * context would be a use-after-unmap.  One library object per library
 * (dlopen handle), cached; a load under an armed dlsym.<symbol> fault gets
 * a view of it instead, which its holder gives back with
 * bn_backend_release (loader.c).
 */
#ifndef BN_LOADER_H
#define BN_LOADER_H

#include "backend.h"
#include "bitnet_bridge.h"

/* One attempt of the discovery, kept for error messages and diagnostics. */
typedef struct {
    char path[512];
    char result[512];
} bn_attempt;

#define BN_MAX_ATTEMPTS 8

typedef struct {
    bn_attempt tried[BN_MAX_ATTEMPTS];
    int n_tried;
} bn_discovery;

/* The symbols the loader resolves in a library (BITNET_SYMBOL entries of
 * bitnet_symbols.def), by index. */
typedef enum {
#define BITNET_SYMBOL(NAME, SOCKET, NEED) BN_SYM_##NAME,
#include "bitnet_symbols.def"
#undef BITNET_SYMBOL
    BN_SYM__N
} bn_symbol;

typedef struct {
    const char *name; /* "bitnet_cpp_init_context" */
    int need;         /* BITNET_SYMBOL_REQUIRED, _FALLBACK or _OPTIONAL */
    int point;        /* its fault point, dlsym.<name> */
} bn_symbol_info;

extern const bn_symbol_info bn_socket_symbols[BN_SYM__N];

typedef struct bn_library bn_library;

/* Loads `path` (explicit_path != NULL) or discovers one, recording every
 * attempt in d.  BITNET_E_LIBRARY_NOT_FOUND / BITNET_E_SYMBOL_MISSING /
 * BITNET_E_ABI_MISMATCH with an actionable message on failure.  The caller
 * owns what it gets: bn_backend_release(bn_library_backend(lib)) when done
 * with it (a context: when it is freed). */
int bn_library_open(const char *explicit_path, bn_discovery *d,
                    bn_library **out);

/* Gives back a backend a load handed out: frees it when it is a view; the
 * cached libraries, the embedded backends and NULL are left alone. */
void bn_backend_release(const bn_backend *be);
/* 1 when a and b are the same library (a view is its cached library). */
int bn_backend_same_library(const bn_backend *a, const bn_backend *b);

const bn_backend *bn_library_backend(const bn_library *lib);
const char *bn_library_path(const bn_library *lib);
/* Address of a socket symbol in the library, NULL when missing. */
void *bn_library_symbol(const bn_library *lib, bn_symbol sym);
int32_t bn_library_abi(const bn_library *lib);     /* -1: not exported */
/* 1 when contexts of lib are served by its Socket 4 (it lacks Socket 1). */
int bn_library_uses_sessions(const bn_library *lib);
const char *bn_library_version(const bn_library *lib); /* "" if unknown */

/* Sums the counters of every loaded library that exports
 * bitnet_cpp_get_counters into *out. */
void bn_libraries_add_counters(bitnet_counters_t *out);

void bn_loader_set_bundled(const char *path);

/* The llama.cpp adapter (native/llama/adapter.c, built by the binding)
 * and the libllama it links, or NULL and why it is unavailable (shown when
 * the llama backend is asked for). */
void bn_loader_set_llama(const char *adapter, const char *libllama,
                         const char *unavailable);
int bn_llama_configured(void);
/* Why a library is loaded.  The dlsym.<symbol> points are about the
 * library a session asked for (backend "dlopen" or "llama"): they remove a
 * symbol from that load only.  The fallback tier's adapter, loaded through
 * the same loader to serve what that library lacks, is not reached by them:
 * a fault that removed the socket from both tiers would test the fallback
 * chain's refusal instead of its fallback. */
typedef enum {
    BN_LOAD_SESSION,  /* the backend a context or a call selected */
    BN_LOAD_FALLBACK, /* the fallback tier (routing.c) */
} bn_load_role;

/* Loads the configured adapter (backend name "llama.cpp:<libllama>"), or
 * BITNET_E_LIBRARY_NOT_FOUND saying why there is none. */
int bn_llama_open(bn_load_role role, bn_discovery *d, bn_library **out);

#endif
