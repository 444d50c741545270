/*
 * gguf_types.c — the type tables a GGUF file refers to: GGUF's value types
 * (names, sizes) and ggml's tensor types (block sizes, bytes per block,
 * names).  Facts only; the reader (gguf_reader.c) checks files against them.
 */
#include <stdio.h>

#include "gguf.h"
#include "gguf_internal.h"

/* ---- GGUF value types ---------------------------------------------------- */

static const char *const value_type_names[BN_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32",
    "bool", "str", "arr", "u64", "i64", "f64",
};

/* Bytes of one value in the file; strings and arrays have no fixed size
 * (0). */
static const uint8_t value_type_size[BN_GGUF_TYPE_COUNT] = {
    1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8,
};

const char *bn_gguf_value_type_name(uint32_t t)
{
    return t < BN_GGUF_TYPE_COUNT ? value_type_names[t] : "invalid";
}

const char *bn_gguf_kv_type_name(const bn_gguf_kv *kv, char *buf, size_t cap)
{
    if (kv->type != BN_GGUF_ARRAY)
        return bn_gguf_value_type_name(kv->type);
    snprintf(buf, cap, "arr[%s]", bn_gguf_value_type_name(kv->arr_type));
    return buf;
}

size_t bn_gguf_value_size(uint32_t t)
{
    return t < BN_GGUF_TYPE_COUNT ? value_type_size[t] : 0;
}

/* ---- ggml tensor types --------------------------------------------------- */

/* ggml's type_traits (ggml/src/ggml.c) as of ggml type count 43: block
 * size in elements and bytes per block.  Absent entries (blck 0) are ids
 * ggml never had or removed (4, 5, 31-33, 37, 38); 36 is BitNet.cpp's I2_S
 * (removed upstream as IQ4_NL_4_4): 128 weights in 32 bytes, plus a
 * 32-byte trailer per tensor (see bn_ggml_tensor_size). */
static const struct {
    const char *name;
    uint16_t blck;
    uint16_t size;
} ggml_types[] = {
    [0] = {"F32", 1, 4},         [1] = {"F16", 1, 2},
    [2] = {"Q4_0", 32, 18},      [3] = {"Q4_1", 32, 20},
    [6] = {"Q5_0", 32, 22},      [7] = {"Q5_1", 32, 24},
    [8] = {"Q8_0", 32, 34},      [9] = {"Q8_1", 32, 36},
    [10] = {"Q2_K", 256, 84},    [11] = {"Q3_K", 256, 110},
    [12] = {"Q4_K", 256, 144},   [13] = {"Q5_K", 256, 176},
    [14] = {"Q6_K", 256, 210},   [15] = {"Q8_K", 256, 292},
    [16] = {"IQ2_XXS", 256, 66}, [17] = {"IQ2_XS", 256, 74},
    [18] = {"IQ3_XXS", 256, 98}, [19] = {"IQ1_S", 256, 50},
    [20] = {"IQ4_NL", 32, 18},   [21] = {"IQ3_S", 256, 110},
    [22] = {"IQ2_S", 256, 82},   [23] = {"IQ4_XS", 256, 136},
    [24] = {"I8", 1, 1},         [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},        [27] = {"I64", 1, 8},
    [28] = {"F64", 1, 8},        [29] = {"IQ1_M", 256, 56},
    [30] = {"BF16", 1, 2},       [34] = {"TQ1_0", 256, 54},
    [35] = {"TQ2_0", 256, 66},   [36] = {"I2_S", 128, 32},
    [39] = {"MXFP4", 32, 17},    [40] = {"NVFP4", 64, 36},
    [41] = {"Q1_0", 128, 18},    [42] = {"Q2_0", 64, 18},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])
#define I2_S_TRAILER 32

uint32_t bn_ggml_type_count(void) { return (uint32_t)N_GGML_TYPES; }

int bn_ggml_type_known(uint32_t type)
{
    return type < N_GGML_TYPES && ggml_types[type].blck != 0;
}

int64_t bn_ggml_blck_size(uint32_t type)
{
    return bn_ggml_type_known(type) ? ggml_types[type].blck : 0;
}

size_t bn_ggml_type_size(uint32_t type)
{
    return bn_ggml_type_known(type) ? ggml_types[type].size : 0;
}

const char *bn_ggml_type_name(uint32_t type)
{
    return bn_ggml_type_known(type) ? ggml_types[type].name : NULL;
}

size_t bn_ggml_row_size(uint32_t type, int64_t ne0)
{
    if (!bn_ggml_type_known(type) || ne0 < 0 ||
        ne0 % ggml_types[type].blck != 0)
        return 0;
    uint64_t blocks = (uint64_t)ne0 / ggml_types[type].blck;
    if (blocks > SIZE_MAX / ggml_types[type].size)
        return 0;
    return (size_t)blocks * ggml_types[type].size;
}

size_t bn_ggml_tensor_size(uint32_t type, const int64_t ne[4])
{
    size_t row = bn_ggml_row_size(type, ne[0]);
    if (row == 0)
        return 0;
    uint64_t rows = 1;
    for (int i = 1; i < 4; i++) {
        if (ne[i] < 1 || rows > UINT64_MAX / (uint64_t)ne[i])
            return 0;
        rows *= (uint64_t)ne[i];
    }
    if (rows > SIZE_MAX / row)
        return 0;
    size_t size = (size_t)rows * row;
    if (type == BN_TYPE_I2_S) {
        if (size > SIZE_MAX - I2_S_TRAILER)
            return 0;
        size += I2_S_TRAILER;
    }
    return size;
}
