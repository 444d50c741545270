/*
 * gguf_getters.c — lookups in a parsed GGUF file and its typed getters.
 * See gguf.h for the contract.
 */
#include <float.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "bn_error.h"
#include "bn_never.h"
#include "gguf.h"
#include "gguf_internal.h"

const bn_gguf_kv *bn_gguf_find_kv(const bn_gguf *g, const char *key)
{
    if (!g || !key)
        return NULL;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0)
            return &g->kv[i];
    return NULL;
}

const bn_gguf_tensor *bn_gguf_find_tensor(const bn_gguf *g, const char *name)
{
    if (NEVER(!g || !name, "its one caller, the loader (model.c), passes the file it opened and a name it wrote"))
        return NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

/* Finds key for a getter: BITNET_OK with *kv NULL when it is absent and not
 * required. */
static int lookup(const bn_gguf *g, const char *key, int required,
                  const bn_gguf_kv **kv)
{
    if (!g || !key)
        return bn_error(BITNET_E_INVALID_ARG, "GGUF getter: %s is NULL",
                        !g ? "the model" : "the key");
    *kv = bn_gguf_find_kv(g, key);
    if (!*kv && required)
        return bn_error(BITNET_E_MODEL_LOAD,
                        "required key '%s' is missing from the GGUF metadata",
                        key);
    return BITNET_OK;
}

static int wrong_type(const bn_gguf_kv *kv, const char *expected)
{
    char tn[32], q[128];
    return bn_error(BITNET_E_MODEL_LOAD,
                    "key '%s' at offset %" PRIu64 " has type %s, expected %s",
                    bn_gguf_quote(q, sizeof q, kv->key, strlen(kv->key)),
                    kv->file_offset, bn_gguf_kv_type_name(kv, tn, sizeof tn),
                    expected);
}

/* The value of an integer-typed scalar kv as a signed or unsigned 64-bit
 * number (*is_signed says which).  0 if kv is not an integer scalar. */
static int int_value(const bn_gguf_kv *kv, int64_t *s, uint64_t *u,
                     int *is_signed)
{
    const void *d = kv->data;
    *is_signed = 1;
    switch (kv->type) {
    case BN_GGUF_UINT8: *u = *(const uint8_t *)d; break;
    case BN_GGUF_UINT16: *u = *(const uint16_t *)d; break;
    case BN_GGUF_UINT32: *u = *(const uint32_t *)d; break;
    case BN_GGUF_UINT64: *u = *(const uint64_t *)d; break;
    case BN_GGUF_INT8: *s = *(const int8_t *)d; return 1;
    case BN_GGUF_INT16: *s = *(const int16_t *)d; return 1;
    case BN_GGUF_INT32: *s = *(const int32_t *)d; return 1;
    case BN_GGUF_INT64: *s = *(const int64_t *)d; return 1;
    default: return 0;
    }
    *is_signed = 0;
    return 1;
}

/* Fetches an integer kv checked against [lo, hi]. */
static int get_int(const bn_gguf *g, const char *key, int required,
                   int64_t lo, uint64_t hi, const char *target, int *found,
                   int64_t *s, uint64_t *u, int *is_signed)
{
    const bn_gguf_kv *kv = NULL;
    int rc = lookup(g, key, required, &kv);
    *found = 0;
    if (rc || !kv)
        return rc;
    if (!int_value(kv, s, u, is_signed)) {
        char want[48];
        snprintf(want, sizeof want, "an integer type (for %s)", target);
        return wrong_type(kv, want);
    }
    int fits = *is_signed ? *s >= lo && (*s < 0 || (uint64_t)*s <= hi)
                          : *u <= hi;
    if (!fits) {
        char tn[32], q[128], val[32];
        if (*is_signed)
            snprintf(val, sizeof val, "%" PRId64, *s);
        else
            snprintf(val, sizeof val, "%" PRIu64, *u);
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' at offset %" PRIu64 " has value %s (type "
                        "%s), which does not fit %s",
                        bn_gguf_quote(q, sizeof q, kv->key, strlen(kv->key)),
                        kv->file_offset, val,
                        bn_gguf_kv_type_name(kv, tn, sizeof tn), target);
    }
    *found = 1;
    return BITNET_OK;
}

int bn_gguf_get_u32(const bn_gguf *g, const char *key, int required,
                    uint32_t *out)
{
    int64_t s = 0;
    uint64_t u = 0;
    int found, is_signed;
    int rc = get_int(g, key, required, 0, UINT32_MAX, "u32",
                     &found, &s, &u, &is_signed);
    if (!rc && found)
        *out = is_signed ? (uint32_t)s : (uint32_t)u;
    return rc;
}

int bn_gguf_get_i32(const bn_gguf *g, const char *key, int required,
                    int32_t *out)
{
    int64_t s = 0;
    uint64_t u = 0;
    int found, is_signed;
    int rc = get_int(g, key, required, INT32_MIN, INT32_MAX, "i32", &found,
                     &s, &u, &is_signed);
    if (!rc && found)
        *out = is_signed ? (int32_t)s : (int32_t)u;
    return rc;
}

int bn_gguf_get_f32(const bn_gguf *g, const char *key, int required,
                    float *out)
{
    const bn_gguf_kv *kv = NULL;
    int rc = lookup(g, key, required, &kv);
    if (rc || !kv)
        return rc;
    if (kv->type == BN_GGUF_FLOAT32) {
        memcpy(out, kv->data, sizeof *out);
        return BITNET_OK;
    }
    if (kv->type != BN_GGUF_FLOAT64)
        return wrong_type(kv, "f32 or f64");
    double d;
    memcpy(&d, kv->data, sizeof d);
    if (d == d && (d > FLT_MAX || d < -FLT_MAX) && d - d == 0) {
        char q[128];
        return bn_error(BITNET_E_MODEL_LOAD,
                        "key '%s' at offset %" PRIu64 " has value %g (f64), "
                        "which does not fit f32",
                        bn_gguf_quote(q, sizeof q, kv->key, strlen(kv->key)),
                        kv->file_offset, d);
    }
    *out = (float)d;
    return BITNET_OK;
}

int bn_gguf_get_bool(const bn_gguf *g, const char *key, int required,
                     int *out)
{
    const bn_gguf_kv *kv = NULL;
    int rc = lookup(g, key, required, &kv);
    if (rc || !kv)
        return rc;
    if (kv->type != BN_GGUF_BOOL)
        return wrong_type(kv, "bool");
    *out = *(const uint8_t *)kv->data != 0;
    return BITNET_OK;
}

int bn_gguf_get_str(const bn_gguf *g, const char *key, int required,
                    const char **out)
{
    const bn_gguf_kv *kv = NULL;
    int rc = lookup(g, key, required, &kv);
    if (rc || !kv)
        return rc;
    if (kv->type != BN_GGUF_STRING)
        return wrong_type(kv, "str");
    *out = ((const bn_gguf_str *)kv->data)->data;
    return BITNET_OK;
}

int bn_gguf_get_arr(const bn_gguf *g, const char *key, int required,
                    uint32_t elem_type, const void **data_out,
                    uint64_t *n_out)
{
    const bn_gguf_kv *kv = NULL;
    int rc = lookup(g, key, required, &kv);
    if (rc || !kv)
        return rc;
    if (kv->type != BN_GGUF_ARRAY || kv->arr_type != elem_type) {
        char want[32];
        snprintf(want, sizeof want, "arr[%s]",
                 bn_gguf_value_type_name(elem_type));
        return wrong_type(kv, want);
    }
    *data_out = kv->data;
    *n_out = kv->n;
    return BITNET_OK;
}
