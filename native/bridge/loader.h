/*
 * loader.h — finding and loading a library that exports the socket ABI.
 *
 * Loaded libraries stay loaded until the process exits: contexts created
 * from them hold function pointers into them, and dlclose under a live
 * context would be a use-after-unmap.  One library per resolved path.
 */
#ifndef BN_LOADER_H
#define BN_LOADER_H

#include "backend.h"

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

/* A socket symbol: required ones must resolve for the library to load. */
typedef struct {
    const char *name;
    int required;
} bn_symbol_info;

extern const bn_symbol_info bn_socket_symbols[];
extern const int bn_n_socket_symbols;

typedef struct bn_library bn_library;

/* Loads `path` (explicit_path != NULL) or discovers one, recording every
 * attempt in d.  BITNET_E_LIBRARY_NOT_FOUND / BITNET_E_SYMBOL_MISSING /
 * BITNET_E_ABI_MISMATCH with an actionable message on failure. */
int bn_library_open(const char *explicit_path, bn_discovery *d,
                    bn_library **out);

const bn_backend *bn_library_backend(const bn_library *lib);
const char *bn_library_path(const bn_library *lib);
/* Address of a socket symbol in the library, NULL when missing. */
void *bn_library_symbol(const bn_library *lib, const char *name);
int32_t bn_library_abi(const bn_library *lib);     /* -1: not exported */
const char *bn_library_version(const bn_library *lib); /* "" if unknown */

/* Sums the counters of every loaded library that exports
 * bitnet_cpp_get_counters into *out. */
void bn_libraries_add_counters(bitnet_counters_t *out);

void bn_loader_set_bundled(const char *path);

/* The llama.cpp adapter (native/llama/adapter.c, built by
 * pytest_bitnet/_llama.py) and the libllama it links, or NULL and why it
 * is unavailable (shown when the llama backend is asked for). */
void bn_loader_set_llama(const char *adapter, const char *libllama,
                         const char *unavailable);
int bn_llama_configured(void);
/* Loads the configured adapter (backend name "llama.cpp:<libllama>"), or
 * BITNET_E_LIBRARY_NOT_FOUND saying why there is none. */
int bn_llama_open(bn_discovery *d, bn_library **out);

#endif
