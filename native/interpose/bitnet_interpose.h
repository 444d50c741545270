/*
 * bitnet_interpose.h — what the interposing libllama exports beside
 * llama.cpp's own API.
 *
 * The interposer is a libllama.so built per real libllama (by
 * fault_inject/interpose/build.py).  An unmodified app loads it instead of
 * the real one; every function the real library exports is exported here
 * and reaches the real one unchanged (a generated trampoline), except the
 * functions of llama_points.def, which are C wrappers placing a fault point
 * each and keeping the live counters below.
 *
 * Until bitnet_interpose_attach, every wrapper is a plain forward (the
 * counters and the object hook still work: they cost nothing on the hot
 * paths, which make and free no objects).  After attach, while nothing is
 * armed, a wrapper costs one relaxed load and a predictable branch.
 */
#ifndef BITNET_INTERPOSE_H
#define BITNET_INTERPOSE_H

#include <stdint.h>

#include "bitnet_host.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Live llama.cpp objects made through the interposer and not yet freed.
 * A sampler added to a chain is owned by the chain and counted in it. */
typedef struct {
    int64_t llama_models;
    int64_t llama_contexts;
    int64_t llama_batches;
    int64_t llama_samplers;
    int64_t llama_adapters;
} bitnet_interpose_counters_t;

/* Registers the interposer's points through host->register_points and
 * takes deadlines and logging from the host, as a guest library does.
 * 0 = attached; < 0 (BITNET_E_*) refused (bad table); BITNET_HOST_DECLINED_
 * FAULTS = attached without fault points (the host has no register_points
 * or no engine).  Idempotent for the same host; another host is refused. */
BITNET_API int bitnet_interpose_attach(const bitnet_host_t *host);

/* Copies the live counters; 0. */
BITNET_API int bitnet_interpose_counters(bitnet_interpose_counters_t *out);

/* hook(user, kind, object, created) runs on the calling thread right after
 * an object is made (created = 1) or right before it is freed (0); kind is
 * the counter's name ("llama_models", ...), object the llama.cpp pointer
 * (a batch: its token or embd array).  NULL removes the hook. */
BITNET_API void bitnet_interpose_set_object_hook(
    void (*hook)(void *user, const char *kind, const void *object,
                 int created),
    void *user);

/* The absolute path of the real libllama this interposer forwards to. */
BITNET_API const char *bitnet_interpose_real_library(void);

/* The deadline of an interposed call in which delay / hang fire, from the
 * call's start (process-wide); 0 = none, and then a hang is refused (it
 * could never end): the call fails in its own terms instead. */
BITNET_API void bitnet_interpose_set_timeout_ns(int64_t ns);

#ifdef __cplusplus
}
#endif
#endif /* BITNET_INTERPOSE_H */
