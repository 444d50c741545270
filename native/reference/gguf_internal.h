/*
 * gguf_internal.h — what the GGUF files of native/reference share:
 * gguf_types.c (the type tables), gguf_reader.c (the parser),
 * gguf_getters.c (lookups, typed getters).  Nothing else includes it.
 */
#ifndef BN_GGUF_INTERNAL_H
#define BN_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* GGUF value types: "u8" ... "f64" ("invalid" for an unknown type), and
 * the bytes of one value in a file (0 for strings, arrays, unknown types). */
const char *bn_gguf_value_type_name(uint32_t t);
size_t bn_gguf_value_size(uint32_t t);
/* A kv's type for messages: "u32", "arr[str]" ... (buf holds array types). */
const char *bn_gguf_kv_type_name(const bn_gguf_kv *kv, char *buf, size_t cap);

/* ggml type ids run 0..count-1; not every id is known (bn_ggml_type_known). */
uint32_t bn_ggml_type_count(void);

/* Copies s[0..len) into dst for a message: printable ASCII as is,
 * everything else as \xNN (so a hostile name cannot put invalid UTF-8 or
 * control bytes in an error string), cut with "..." after about 80
 * characters.  Returns dst. */
const char *bn_gguf_quote(char *dst, size_t cap, const char *s, size_t len);

#endif
