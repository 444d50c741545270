/*
 * gguf.h — a strict reader of GGUF v2/v3 model files.
 *
 * Strict means: everything llama.cpp's own reader (ggml/src/gguf.cpp)
 * rejects is rejected here too, with a BITNET_E_MODEL_LOAD error whose
 * message names the field, the tensor (when there is one) and the byte
 * offset in the file where the problem was found.  A file that does not
 * exist is BITNET_E_MODEL_NOT_FOUND.
 *
 * Checked: magic "GGUF"; version 2 or 3 (1 is refused as too old);
 * tensor and kv counts that fit the file; string lengths that fit the file
 * (and llama.cpp's 2^30 limits on string and array lengths); empty or
 * duplicate keys; value types; nested arrays; array lengths whose byte size
 * overflows or exceeds the file; tensor names empty, >= 64 bytes or
 * duplicated; n_dims 1..4; every ne >= 1 and the element count not
 * overflowing int64; tensor types known to ggml (plus BitNet.cpp's I2_S,
 * type 36); rows a whole number of blocks; general.alignment of type u32
 * and a power of two that is a multiple of 8 (the GGUF specification);
 * tensor offsets multiples of the alignment and equal to the running
 * total of padded sizes (no gaps, no overlap);
 * tensor data, including the last tensor's padding, lying within the file
 * (as llama.cpp's gguf_init_from_file requires when it reads the data).
 * Stricter than llama.cpp: n_dims 0, ne 0, empty tensor names, and keys or
 * tensor names containing NUL bytes are refused (llama.cpp accepts them).
 *
 * Names from the file appear in messages with non-printable bytes escaped
 * as \xNN, so messages are always ASCII.
 *
 * Limits: all metadata is held in memory; tensor data is read into one
 * 64-byte aligned block from the counted allocator (so "bytes" counts it).
 * The file is read with POSIX open/fstat/pread (or from memory with
 * bn_gguf_open_memory); little-endian hosts only.
 */
#ifndef BN_GGUF_H
#define BN_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* GGUF value types (gguf_type in ggml). */
typedef enum {
    BN_GGUF_UINT8 = 0,
    BN_GGUF_INT8 = 1,
    BN_GGUF_UINT16 = 2,
    BN_GGUF_INT16 = 3,
    BN_GGUF_UINT32 = 4,
    BN_GGUF_INT32 = 5,
    BN_GGUF_FLOAT32 = 6,
    BN_GGUF_BOOL = 7,
    BN_GGUF_STRING = 8,
    BN_GGUF_ARRAY = 9,
    BN_GGUF_UINT64 = 10,
    BN_GGUF_INT64 = 11,
    BN_GGUF_FLOAT64 = 12,
    BN_GGUF_TYPE_COUNT
} bn_gguf_type;

/* ggml tensor types the reference engine computes with.  Every other type
 * known to ggml passes the reader's checks and is refused by the model
 * loader with the list of supported types. */
enum {
    BN_TYPE_F32 = 0,
    BN_TYPE_F16 = 1,
    BN_TYPE_TQ2_0 = 35,
    BN_TYPE_I2_S = 36 /* BitNet.cpp; removed from upstream ggml */
};

typedef struct {
    uint64_t len;
    char *data; /* NUL-terminated copy (len bytes + NUL); the strings of
                   one array share a single block */
} bn_gguf_str;

typedef struct {
    char *key;              /* NUL-terminated */
    uint32_t type;          /* bn_gguf_type */
    uint32_t arr_type;      /* element type when type == ARRAY */
    uint64_t n;             /* element count (1 for scalars) */
    void *data;             /* scalar value, or n elements (NULL when
                               n == 0); strings are bn_gguf_str; BOOL is
                               one byte, any non-zero value is true */
    uint64_t file_offset;   /* offset of the key in the file, for messages */
} bn_gguf_kv;

typedef struct {
    char name[64];
    uint32_t n_dims;
    int64_t ne[4];          /* ne[0] = row length (elements), 1 past n_dims */
    uint32_t type;          /* ggml type */
    uint64_t offset;        /* relative to the data section */
    uint64_t size;          /* bytes */
    const uint8_t *data;    /* into bn_gguf.data; NULL if not loaded */
} bn_gguf_tensor;

typedef struct bn_gguf {
    uint32_t version;
    uint64_t n_kv;
    bn_gguf_kv *kv;
    uint64_t n_tensors;
    bn_gguf_tensor *tensors;
    uint64_t alignment;
    uint64_t data_offset;   /* file offset of the tensor data section
                               (aligned when there are tensors) */
    uint64_t data_size;     /* bytes of tensor data (padded total) */
    uint64_t file_size;
    uint8_t *data;          /* tensor data, or NULL with BN_GGUF_NO_DATA */
} bn_gguf;

/* Flags for bn_gguf_open. */
#define BN_GGUF_NO_DATA 1u /* validate offsets against the file size but do
                              not read tensor data */

/* Called after the header, every 256 kv pairs / tensor infos, after each
 * metadata section and before each 4 MiB chunk of tensor data; a non-zero
 * return aborts the load with that code (everything is freed).  The last
 * error is cleared before each call: if the callback records its own error
 * with the code it returns, that message is kept, prefixed with the file and
 * position; otherwise the reader writes one.  May be NULL. */
typedef int (*bn_gguf_step_fn)(void *user);

/* Opens and validates path.  On success *out owns everything (free with
 * bn_gguf_free); on failure *out is NULL, nothing is leaked and the last
 * error says what and where.  Codes: BITNET_E_MODEL_NOT_FOUND (no such
 * path, or a directory), BITNET_E_MODEL_LOAD (anything malformed, not a
 * regular file, I/O errors), BITNET_E_OOM, BITNET_E_INVALID_ARG (NULL path
 * or out, unknown flags), or the step callback's code. */
int bn_gguf_open(const char *path, unsigned flags, bn_gguf_step_fn step,
                 void *step_user, bn_gguf **out);
/* The same parser over size bytes at data (the tests and the fuzzer,
 * fuzz/gguf_fuzzer.c, feed inputs without a file); name stands for the
 * path in messages.  data must stay valid until it returns (the tensor data
 * is copied). */
int bn_gguf_open_memory(const void *data, size_t size, const char *name,
                        unsigned flags, bn_gguf_step_fn step, void *step_user,
                        bn_gguf **out);
void bn_gguf_free(bn_gguf *g);

/* Lookups; NULL / -1 when absent. */
const bn_gguf_kv *bn_gguf_find_kv(const bn_gguf *g, const char *key);
const bn_gguf_tensor *bn_gguf_find_tensor(const bn_gguf *g, const char *name);

/* Typed getters.  Return BITNET_OK, or BITNET_E_MODEL_LOAD naming the key
 * when it is missing (required != 0) or has an incompatible type; when the
 * key is missing and required == 0 they return BITNET_OK leaving *out as
 * is (the caller's default).  Integer getters accept any integer type whose
 * value fits; the float getter accepts FLOAT32/FLOAT64 (a finite f64 beyond
 * the f32 range is refused).  The messages name the key, its offset and
 * its type but not the file (bn_gguf does not keep the path): callers add
 * it with bn_error_prefix. */
int bn_gguf_get_u32(const bn_gguf *g, const char *key, int required,
                    uint32_t *out);
int bn_gguf_get_i32(const bn_gguf *g, const char *key, int required,
                    int32_t *out);
int bn_gguf_get_f32(const bn_gguf *g, const char *key, int required,
                    float *out);
int bn_gguf_get_bool(const bn_gguf *g, const char *key, int required,
                     int *out);
int bn_gguf_get_str(const bn_gguf *g, const char *key, int required,
                    const char **out);
/* Array of the given element type; *n_out = element count. */
int bn_gguf_get_arr(const bn_gguf *g, const char *key, int required,
                    uint32_t elem_type, const void **data_out,
                    uint64_t *n_out);

/* ggml type facts: block size in elements and bytes per block; 0 for a type
 * ggml does not know (or removed).  name is "F32", "TQ2_0", "I2_S" ... or
 * NULL. */
int bn_ggml_type_known(uint32_t type);
int64_t bn_ggml_blck_size(uint32_t type);
size_t bn_ggml_type_size(uint32_t type);
const char *bn_ggml_type_name(uint32_t type);
/* Bytes of one row of ne0 elements / of a whole tensor (I2_S: codes + the
 * 32-byte scale trailer; its block is 128 weights in 32 bytes).  0 if the
 * type is unknown, ne0 is not a whole number of blocks, any ne < 1 (whole
 * tensor) or the size overflows size_t. */
size_t bn_ggml_row_size(uint32_t type, int64_t ne0);
size_t bn_ggml_tensor_size(uint32_t type, const int64_t ne[4]);

#endif
