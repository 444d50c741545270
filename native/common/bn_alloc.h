/*
 * bn_alloc.h — the one counted allocator every native allocation goes
 * through, and the live counters tests read.
 *
 * Each block carries a small header with its size so bytes can be
 * subtracted on free without the caller passing the size.  Counters are
 * atomics: reading them never takes a lock.
 */
#ifndef BN_ALLOC_H
#define BN_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include "bitnet.h"

/* Returns NULL on failure (or an injected one) after recording a
 * BITNET_E_OOM last error naming `what` and the size. */
void *bn_malloc(size_t size, const char *what);
void *bn_calloc(size_t n, size_t size, const char *what);
/* Like realloc; on failure the old block is untouched. */
void *bn_realloc(void *p, size_t size, const char *what);
void bn_free(void *p);
char *bn_strdup(const char *s, const char *what);

/* 64-byte aligned blocks for weights and activations (SIMD loads). */
void *bn_aligned_alloc(size_t size, const char *what);
void bn_aligned_free(void *p);

/* Object counters, moved by the code that creates and frees the object. */
typedef enum {
    BN_COUNTER_CONTEXTS,
    BN_COUNTER_SESSIONS,
    BN_COUNTER_MODELS,
    BN_COUNTER_MODEL_LOADS,
    BN_COUNTER__N
} bn_counter;
void bn_counter_add(bn_counter c, int64_t delta);

void bn_counters_read(bitnet_counters_t *out);

#endif
