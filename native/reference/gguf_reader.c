/*
 * gguf_reader.c — strict GGUF v2/v3 reader: parsing and validation.  See
 * gguf.h for the contract; the type tables are gguf_types.c, the typed
 * getters gguf_getters.c.
 *
 * The file is read with pread() through a small window buffer from the
 * counted allocator, so every byte of memory the reader holds shows up in
 * the live counters.  Every read is checked against the size fstat()
 * reported before it happens; every count from the file is checked against
 * the bytes that remain before anything is allocated for it, and arrays
 * that hold parsed entries grow geometrically with what was actually read,
 * so a hostile header cannot make the reader allocate more than a small
 * multiple of the file size.
 *
 * Error messages: "'<path>': <what> ... at offset <n> ... (<expected>)".
 * Later code greps for the fixed phrases "not a GGUF file", "truncated",
 * "unsupported GGUF version", "duplicate key", "duplicate tensor" and
 * "unknown tensor type"; keep them when rewording.
 */
#define _POSIX_C_SOURCE 200809L
#define _FILE_OFFSET_BITS 64

#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bn_alloc.h"
#include "bn_error.h"
#include "bn_fault.h"
#include "bn_never.h"
#include "gguf_internal.h"

/* GGUF is little-endian and so is every host this project builds for;
 * values and tensor data are copied as they are. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf_reader.c assumes a little-endian host"
#endif

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

/* llama.cpp's limits (GGUF_MAX_STRING_LENGTH, GGUF_MAX_ARRAY_ELEMENTS,
 * GGML_MAX_NAME, GGML_MAX_DIMS, GGUF_DEFAULT_ALIGNMENT). */
#define MAX_STRING_LEN ((uint64_t)1 << 30)
#define MAX_ARRAY_LEN ((uint64_t)1 << 30)
#define MAX_NAME 64
#define MAX_DIMS 4
#define DEFAULT_ALIGNMENT 32
#define MIN_ALIGNMENT 8 /* the GGUF specification: a multiple of 8 */

/* The smallest encodings a valid file can use, to bound the header counts
 * by the file size: a kv pair is a u64 key length, a key of >= 1 byte, a
 * u32 value type and a value of >= 1 byte; a tensor info is a u64 name
 * length, a name of >= 1 byte, u32 n_dims (>= 1), one u64 ne, a u32 type
 * and a u64 offset. */
#define MIN_KV_BYTES 14
#define MIN_TENSOR_INFO_BYTES 33

#define HEADER_BYTES 24            /* magic, version, tensor and kv counts */
#define WINDOW_BYTES (64u * 1024)  /* metadata read-ahead */
#define DATA_CHUNK (4u * 1024 * 1024)
#define STEP_EVERY 256             /* kv pairs / tensor infos between steps */
/* Elements of one array, or names, between two deadline checks (poll):
 * an array of a billion strings is one kv pair, so the step of every
 * STEP_EVERY pairs alone would let it run unchecked for seconds. */
#define POLL_EVERY 4096

/* ------------------------------------------------------------------ */
/* messages                                                            */

const char *bn_gguf_quote(char *dst, size_t cap, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap || o >= 80) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '\\';
            dst[o++] = 'x';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = '\0';
    return dst;
}

/* The reader: the open file, the read position and the window, and what is
 * being read, so that any failure can name the field. */
typedef struct {
    int fd;
    const uint8_t *mem;     /* the file's bytes when parsing from memory
                               (bn_gguf_open_memory; fd is then -1) */
    const char *path;
    uint64_t size;          /* file size from fstat */
    uint64_t pos;           /* file offset of the next byte to consume */
    uint8_t *win;           /* read-ahead window (WINDOW_BYTES) */
    uint64_t win_off;       /* file offset of win[0] */
    size_t win_len;         /* valid bytes in win */
    bn_gguf_step_fn step;
    void *step_user;
    /* message context: "key"/"tensor" (NULL in the header), the entry's
     * name once known (else its index), and the string array element */
    const char *kind;
    const char *name;
    uint64_t index;
    int64_t elem;           /* -1: not inside an array */
} reader;

static int fail(const reader *r, const char *fmt, ...) BN_PRINTF(2, 3);
static int fail(const reader *r, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bn_error(BITNET_E_MODEL_LOAD, "'%s': %s", r->path, msg);
}

/* The allocator recorded the OOM; say which file was being loaded. */
static int oom(const reader *r)
{
    bn_error_prefix("'%s': ", r->path);
    return BITNET_E_OOM;
}

/* "key 'general.name' value", "key #3 name length", "tensor 'x' ne[1]",
 * "key 'tokenizer.ggml.tokens' element 7 length", "version". */
static const char *describe(const reader *r, const char *field, char *buf,
                            size_t cap)
{
    char name[128], elem[48] = "";
    if (!r->kind) {
        snprintf(buf, cap, "%s", field);
        return buf;
    }
    if (r->elem >= 0)
        snprintf(elem, sizeof elem, " element %" PRId64, r->elem);
    if (r->name)
        snprintf(buf, cap, "%s '%s'%s%s%s", r->kind,
                 bn_gguf_quote(name, sizeof name, r->name, strlen(r->name)),
                 elem, *field ? " " : "", field);
    else
        snprintf(buf, cap, "%s #%" PRIu64 "%s%s%s", r->kind, r->index, elem,
                 *field ? " " : "", field);
    return buf;
}

static uint64_t left(const reader *r) { return r->size - r->pos; }

static int truncated(const reader *r, uint64_t need, const char *field)
{
    char what[256];
    return fail(r,
                "truncated file: %s at offset %" PRIu64 " needs %" PRIu64
                " bytes but only %" PRIu64 " remain (file size %" PRIu64 ")",
                describe(r, field, what, sizeof what), r->pos, need, left(r),
                r->size);
}

/* ------------------------------------------------------------------ */
/* low-level reads                                                     */

/* Reads exactly n bytes at file offset off. */
static int pread_all(const reader *r, void *dst, size_t n, uint64_t off)
{
    uint8_t *p = dst;
    if (r->mem) {
        /* the same bound a short pread would hit */
        if (off > r->size || n > r->size - off)
            return fail(r, "truncated file: it ends at offset %" PRIu64
                           " (reading %zu bytes at offset %" PRIu64 ")",
                        r->size, n, off);
        memcpy(p, r->mem + off, n);
        return BITNET_OK;
    }
    while (n > 0) {
        size_t chunk = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
        ssize_t got = pread(r->fd, p, chunk, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return fail(r, "read error at offset %" PRIu64 ": %s", off,
                        strerror(errno));
        if (got == 0)
            return fail(r,
                        "truncated file: it ends at offset %" PRIu64
                        " although its size was %" PRIu64
                        " bytes when it was opened (was it modified while "
                        "loading?)",
                        off, r->size);
        p += got;
        off += (uint64_t)got;
        n -= (size_t)got;
    }
    return BITNET_OK;
}

/* Consumes n bytes at the read position; the caller has checked n <=
 * left(r).  Small reads go through the window, large ones directly. */
static int copy(reader *r, void *dst, size_t n)
{
    uint8_t *p = dst;
    while (n > 0) {
        if (r->pos >= r->win_off && r->pos < r->win_off + r->win_len) {
            size_t at = (size_t)(r->pos - r->win_off);
            size_t k = r->win_len - at < n ? r->win_len - at : n;
            memcpy(p, r->win + at, k);
            p += k;
            n -= k;
            r->pos += k;
            continue;
        }
        if (n >= WINDOW_BYTES) {
            int rc = pread_all(r, p, n, r->pos);
            if (rc)
                return rc;
            r->pos += n;
            return BITNET_OK;
        }
        uint64_t avail = left(r);
        size_t want = avail < WINDOW_BYTES ? (size_t)avail : WINDOW_BYTES;
        int rc = pread_all(r, r->win, want, r->pos);
        if (rc)
            return rc;
        r->win_off = r->pos;
        r->win_len = want;
    }
    return BITNET_OK;
}

static int read_bytes(reader *r, void *dst, size_t n, const char *field)
{
    if (n > left(r))
        return truncated(r, n, field);
    return copy(r, dst, n);
}

static int read_u32(reader *r, uint32_t *v, const char *field)
{
    return read_bytes(r, v, sizeof *v, field);
}

static int read_u64(reader *r, uint64_t *v, const char *field)
{
    return read_bytes(r, v, sizeof *v, field);
}

/* Reads a string length and checks that the string fits the file. */
static int read_strlen(reader *r, uint64_t *len, const char *field)
{
    uint64_t at = r->pos;
    char what[256];
    int rc = read_u64(r, len, field);
    if (rc)
        return rc;
    if (*len > MAX_STRING_LEN)
        return fail(r,
                    "%s %" PRIu64 " at offset %" PRIu64
                    " exceeds the maximum string length of %" PRIu64
                    " bytes (llama.cpp's GGUF_MAX_STRING_LENGTH)",
                    describe(r, field, what, sizeof what), *len, at,
                    MAX_STRING_LEN);
    if (*len > left(r))
        return fail(r,
                    "truncated or corrupt file: %s %" PRIu64
                    " at offset %" PRIu64 " is more than the %" PRIu64
                    " bytes left in the file (file size %" PRIu64 ")",
                    describe(r, field, what, sizeof what), *len, at,
                    left(r), r->size);
    return BITNET_OK;
}

/* Calls the step callback (the deadline check) only: inside loops whose
 * length the file decides, between two steps.  A non-zero return aborts
 * the load with that code: the callback's own message is kept (with this
 * file and position in front) when it recorded one, else one is written
 * here. */
static int poll(const reader *r, const char *doing)
{
    if (!r->step)
        return BITNET_OK;
    bn_error_clear();
    int rc = r->step(r->step_user);
    if (rc == 0)
        return BITNET_OK;
    if (NEVER(bn_error_code() != rc || !bn_error_message()[0], "the step callbacks (the loader's, the llama check's) are bn_deadline_check, which reports its code through bn_error"))
        return bn_error(rc,
                        "'%s': load aborted by the step callback (code %d, "
                        "%s) while reading %s at offset %" PRIu64,
                        r->path, rc, bn_error_name(rc), doing, r->pos);
    return bn_error_prefix("'%s': load aborted while reading %s at offset "
                           "%" PRIu64 ": ",
                           r->path, doing, r->pos);
}

/* A step of the load: the `load.step` fault point, then the callback.
 * Steps are where hit counts are counted (the header, every STEP_EVERY kv
 * pairs and tensor infos, every data chunk), so that polls added inside
 * loops do not change them. */
static int step(const reader *r, const char *doing)
{
    int rc = BN_FAULT(LOAD_STEP);
    if (rc)
        return bn_error_prefix("'%s': load aborted while reading %s at "
                               "offset %" PRIu64 ": ",
                               r->path, doing, r->pos);
    return poll(r, doing);
}

/* ------------------------------------------------------------------ */
/* freeing                                                             */

static void free_kv(bn_gguf_kv *kv)
{
    bn_free(kv->key);
    if (kv->data && kv->type == BN_GGUF_STRING) {
        bn_free(((bn_gguf_str *)kv->data)->data);
    } else if (kv->data && kv->type == BN_GGUF_ARRAY &&
               kv->arr_type == BN_GGUF_STRING && kv->n > 0) {
        /* the strings of an array share one block, starting at [0] */
        bn_free(((bn_gguf_str *)kv->data)[0].data);
    }
    bn_free(kv->data);
}

void bn_gguf_free(bn_gguf *g)
{
    if (!g)
        return;
    for (uint64_t i = 0; i < g->n_kv; i++)
        free_kv(&g->kv[i]);
    bn_free(g->kv);
    bn_free(g->tensors);
    bn_aligned_free(g->data);
    bn_free(g);
}

/* ------------------------------------------------------------------ */
/* header                                                              */

static int read_header(reader *r, bn_gguf *g, uint64_t *n_tensors,
                       uint64_t *n_kv)
{
    unsigned char magic[4];
    char q[32];
    if (r->size == 0)
        return fail(r, "not a GGUF file: the file is empty (expected the "
                       "magic 'GGUF' at offset 0)");
    if (r->size < 4)
        return fail(r,
                    "not a GGUF file: the file is only %" PRIu64
                    " bytes long (expected the 4-byte magic 'GGUF' at "
                    "offset 0)",
                    r->size);
    int rc = read_bytes(r, magic, 4, "magic");
    if (rc)
        return rc;
    if (memcmp(magic, "GGUF", 4) != 0)
        return fail(r,
                    "not a GGUF file: bad magic 0x%02x%02x%02x%02x ('%s') at "
                    "offset 0 (expected 'GGUF')",
                    magic[0], magic[1], magic[2], magic[3],
                    bn_gguf_quote(q, sizeof q, (const char *)magic, 4));

    uint32_t v;
    if ((rc = read_u32(r, &v, "version")))
        return rc;
    if (v == 1)
        return fail(r,
                    "unsupported GGUF version 1 at offset 4 (supported: 2, "
                    "3); GGUF v1 is obsolete: convert the model again with a "
                    "current llama.cpp or gguf-py");
    if (v != 2 && v != 3)
        return fail(r,
                    "unsupported GGUF version %" PRIu32
                    " at offset 4 (supported: 2, 3)%s",
                    v,
                    v == 0 ? ""
                    : (v & 0xFFFFu) == 0 ? "; the value looks byte-swapped: "
                                           "a big-endian GGUF file cannot be "
                                           "read here"
                                         : "; the file is newer than this "
                                           "reader");
    g->version = v;

    if ((rc = read_u64(r, n_tensors, "tensor count")))
        return rc;
    if ((rc = read_u64(r, n_kv, "kv count")))
        return rc;
    uint64_t room = left(r);
    if (*n_tensors > room / MIN_TENSOR_INFO_BYTES)
        return fail(r,
                    "truncated or corrupt file: tensor count %" PRIu64
                    " at offset 8 does not fit the file: each tensor info takes at least %d bytes and only "
                    "%" PRIu64 " bytes follow the header (file size %" PRIu64
                    ")",
                    *n_tensors, MIN_TENSOR_INFO_BYTES, room, r->size);
    room -= *n_tensors * MIN_TENSOR_INFO_BYTES;
    if (*n_kv > room / MIN_KV_BYTES)
        return fail(r,
                    "truncated or corrupt file: kv count %" PRIu64
                    " at offset 16 does not fit the file: each kv pair takes at least %d bytes and only %" PRIu64
                    " bytes follow the header and the %" PRIu64
                    " tensor infos (file size %" PRIu64 ")",
                    *n_kv, MIN_KV_BYTES, room, *n_tensors, r->size);
    return BITNET_OK;
}

/* ------------------------------------------------------------------ */
/* kv pairs                                                            */

/* Returns arr (*cap elements of es bytes) grown geometrically, up to
 * limit, to hold at least n + 1 elements, new ones zeroed; or NULL on OOM
 * (arr is then untouched and still the caller's). */
static void *grow(void *arr, uint64_t *cap, uint64_t n, size_t es,
                  uint64_t limit, const char *what)
{
    if (n < *cap)
        return arr;
    uint64_t c = *cap ? *cap * 2 : 16;
    if (c > limit)
        c = limit;
    if (c <= n)
        c = n + 1;
    char *p = bn_realloc(arr, (size_t)c * es, what);
    if (!p)
        return NULL;
    memset(p + (size_t)*cap * es, 0, (size_t)(c - *cap) * es);
    *cap = c;
    return p;
}

/* Reads n strings into one block: elems[i].data point into it. */
static int read_string_array(reader *r, bn_gguf_str *elems, uint64_t n)
{
    char *pool = NULL;
    size_t used = 0, cap = 0;
    int rc = BITNET_OK;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        r->elem = (int64_t)i;
        if ((i % POLL_EVERY == POLL_EVERY - 1 && (rc = poll(r, "kv pairs"))) ||
            (rc = read_strlen(r, &len, "length")))
            goto fail;
        /* len <= left(r) < file size, so used + len + 1 cannot overflow */
        if (used + len + 1 > cap) {
            size_t c = cap ? cap * 2 : 256;
            while (c < used + len + 1)
                c *= 2;
            char *p = bn_realloc(pool, c, "GGUF string array");
            if (!p) {
                rc = oom(r);
                goto fail;
            }
            pool = p;
            cap = c;
        }
        if ((rc = read_bytes(r, pool + used, (size_t)len, "bytes")))
            goto fail;
        pool[used + len] = '\0';
        elems[i].len = len;
        used += (size_t)len + 1;
    }
    for (uint64_t i = 0, at = 0; i < n; i++) {
        elems[i].data = pool + at;
        at += elems[i].len + 1;
    }
    r->elem = -1;
    return BITNET_OK;
fail:
    bn_free(pool);
    return rc;
}

/* Reads n bytes of a numeric array (up to GiBs) in chunks, polling. */
static int read_array_data(reader *r, uint8_t *dst, size_t n)
{
    for (size_t done = 0; done < n;) {
        size_t k = n - done < DATA_CHUNK ? n - done : DATA_CHUNK;
        int rc;
        if ((done && (rc = poll(r, "kv pairs"))) ||
            (rc = read_bytes(r, dst + done, k, "array data")))
            return rc;
        done += k;
    }
    return BITNET_OK;
}

/* Reads the value type and value of kv (whose key is read). */
static int read_value(reader *r, bn_gguf_kv *kv)
{
    uint64_t at = r->pos;
    uint32_t type, et;
    char what[256];
    int rc;
    if ((rc = read_u32(r, &type, "value type")))
        return rc;
    if (type >= BN_GGUF_TYPE_COUNT)
        return fail(r,
                    "%s %" PRIu32 " at offset %" PRIu64
                    " is invalid (expected 0..12: u8, i8, u16, i16, u32, "
                    "i32, f32, bool, str, arr, u64, i64, f64)",
                    describe(r, "value type", what, sizeof what), type, at);

    if (type != BN_GGUF_ARRAY) {
        size_t es = type == BN_GGUF_STRING ? sizeof(bn_gguf_str)
                                           : bn_gguf_value_size(type);
        void *v = bn_calloc(1, es, "GGUF value");
        if (!v)
            return oom(r);
        if (type == BN_GGUF_STRING) {
            bn_gguf_str *s = v;
            uint64_t len;
            if ((rc = read_strlen(r, &len, "string length"))) {
                bn_free(v);
                return rc;
            }
            s->data = bn_malloc((size_t)len + 1, "GGUF string value");
            if (!s->data) {
                bn_free(v);
                return oom(r);
            }
            if ((rc = read_bytes(r, s->data, (size_t)len, "string"))) {
                bn_free(s->data);
                bn_free(v);
                return rc;
            }
            s->data[len] = '\0';
            s->len = len;
        } else if ((rc = read_bytes(r, v, es, "value"))) {
            bn_free(v);
            return rc;
        }
        kv->type = type;
        kv->n = 1;
        kv->data = v;
        return BITNET_OK;
    }

    at = r->pos;
    if ((rc = read_u32(r, &et, "array element type")))
        return rc;
    if (et == BN_GGUF_ARRAY)
        return fail(r,
                    "%s is an array of arrays (element type 9 at offset "
                    "%" PRIu64 "): GGUF does not allow nested arrays",
                    describe(r, "", what, sizeof what), at);
    if (et >= BN_GGUF_TYPE_COUNT)
        return fail(r,
                    "%s %" PRIu32 " at offset %" PRIu64
                    " is invalid (expected 0..12 except 9: u8, i8, u16, "
                    "i16, u32, i32, f32, bool, str, u64, i64, f64)",
                    describe(r, "array element type", what, sizeof what),
                    et, at);
    uint64_t n;
    at = r->pos;
    if ((rc = read_u64(r, &n, "array length")))
        return rc;
    /* a string takes at least its 8-byte length in the file */
    size_t fes = et == BN_GGUF_STRING ? 8 : bn_gguf_value_size(et);
    if (n > MAX_ARRAY_LEN)
        return fail(r,
                    "%s %" PRIu64 " at offset %" PRIu64
                    " exceeds the maximum of %" PRIu64
                    " elements (llama.cpp's GGUF_MAX_ARRAY_ELEMENTS)",
                    describe(r, "array length", what, sizeof what), n, at,
                    MAX_ARRAY_LEN);
    if (n * fes > left(r))
        return fail(r,
                    "truncated or corrupt file: %s %" PRIu64
                    " at offset %" PRIu64 " needs at least %" PRIu64
                    " bytes (%s elements of %zu bytes) but only %" PRIu64
                    " remain (file size %" PRIu64 ")",
                    describe(r, "array length", what, sizeof what), n, at,
                    n * fes, bn_gguf_value_type_name(et), fes, left(r),
                    r->size);
    void *v = NULL;
    if (n > 0) {
        size_t es = et == BN_GGUF_STRING ? sizeof(bn_gguf_str) : fes;
        v = bn_calloc((size_t)n, es, "GGUF array");
        if (!v)
            return oom(r);
        rc = et == BN_GGUF_STRING ? read_string_array(r, v, n)
                                  : read_array_data(r, v, (size_t)(n * es));
        if (rc) {
            bn_free(v);
            return rc;
        }
    }
    kv->type = BN_GGUF_ARRAY;
    kv->arr_type = et;
    kv->n = n;
    kv->data = v;
    return BITNET_OK;
}

static int read_kvs(reader *r, bn_gguf *g, uint64_t n_kv)
{
    uint64_t cap = 0;
    char q[128];
    int rc;
    r->kind = "key";
    for (uint64_t i = 0; i < n_kv; i++) {
        if (i > 0 && i % STEP_EVERY == 0 && (rc = step(r, "kv pairs")))
            return rc;
        bn_gguf_kv *kvs = grow(g->kv, &cap, g->n_kv, sizeof *g->kv, n_kv,
                               "GGUF kv pairs");
        if (!kvs)
            return oom(r);
        g->kv = kvs;
        r->name = NULL;
        r->index = i;
        bn_gguf_kv *kv = &g->kv[g->n_kv];
        uint64_t at = r->pos, len;
        if ((rc = read_strlen(r, &len, "name length")))
            return rc;
        if (len == 0)
            return fail(r,
                        "key #%" PRIu64 " at offset %" PRIu64
                        " is empty (GGUF keys must be non-empty)",
                        i, at);
        char *key = bn_malloc((size_t)len + 1, "GGUF key");
        if (!key)
            return oom(r);
        if ((rc = read_bytes(r, key, (size_t)len, "name"))) {
            bn_free(key);
            return rc;
        }
        key[len] = '\0';
        kv->key = key;
        kv->type = BN_GGUF_UINT8; /* no value yet: data stays NULL */
        kv->file_offset = at;
        g->n_kv++;
        if (memchr(key, '\0', (size_t)len))
            return fail(r,
                        "key #%" PRIu64 " '%s' at offset %" PRIu64
                        " contains a NUL byte (keys must be plain strings)",
                        i, bn_gguf_quote(q, sizeof q, key, (size_t)len), at);
        r->name = key;
        if ((rc = read_value(r, kv)))
            return rc;
    }
    r->name = NULL;
    return BITNET_OK;
}

/* ------------------------------------------------------------------ */
/* duplicate names                                                     */

typedef const char *(*name_at_fn)(const bn_gguf *g, uint64_t i);
static const char *key_at(const bn_gguf *g, uint64_t i) { return g->kv[i].key; }
static const char *tensor_at(const bn_gguf *g, uint64_t i)
{
    return g->tensors[i].name;
}

/* Finds the first name equal to an earlier one: *dup is its index and
 * *first the earlier one's, or *dup = n when all differ.  An open-addressing
 * table of indices keeps hostile files with millions of entries linear. */
static int find_duplicate(const reader *r, const bn_gguf *g, uint64_t n,
                          name_at_fn name_at, uint64_t *dup, uint64_t *first)
{
    *dup = n;
    if (n < 2)
        return BITNET_OK;
    uint64_t size = 16;
    while (size < 2 * n)
        size *= 2;
    uint64_t *slots = bn_calloc((size_t)size, sizeof *slots,
                                "GGUF name table");
    if (!slots)
        return oom(r);
    for (uint64_t i = 0; i < n; i++) {
        if (i % POLL_EVERY == POLL_EVERY - 1) {
            int rc = poll(r, "names");
            if (rc) {
                bn_free(slots);
                return rc;
            }
        }
        const char *s = name_at(g, i);
        uint64_t h = 1469598103934665603u; /* FNV-1a */
        for (const unsigned char *p = (const unsigned char *)s; *p; p++)
            h = (h ^ *p) * 1099511628211u;
        for (uint64_t j = h & (size - 1);; j = (j + 1) & (size - 1)) {
            if (slots[j] == 0) {
                slots[j] = i + 1;
                break;
            }
            if (strcmp(name_at(g, slots[j] - 1), s) == 0) {
                *dup = i;
                *first = slots[j] - 1;
                bn_free(slots);
                return BITNET_OK;
            }
        }
    }
    bn_free(slots);
    return BITNET_OK;
}

static int check_keys(reader *r, bn_gguf *g)
{
    uint64_t dup, first = 0;
    char q[128], tn[32];
    int rc = find_duplicate(r, g, g->n_kv, key_at, &dup, &first);
    if (rc)
        return rc;
    if (dup < g->n_kv)
        return fail(r,
                    "duplicate key '%s' at offset %" PRIu64
                    " (kv pair #%" PRIu64 "; first defined at offset %" PRIu64
                    " by kv pair #%" PRIu64 "); every key must be unique",
                    bn_gguf_quote(q, sizeof q, g->kv[dup].key,
                           strlen(g->kv[dup].key)),
                    g->kv[dup].file_offset, dup, g->kv[first].file_offset,
                    first);

    g->alignment = DEFAULT_ALIGNMENT;
    const bn_gguf_kv *a = bn_gguf_find_kv(g, "general.alignment");
    if (a) {
        if (a->type != BN_GGUF_UINT32)
            return fail(r,
                        "key 'general.alignment' at offset %" PRIu64
                        " must be of type u32 but is %s",
                        a->file_offset, bn_gguf_kv_type_name(a, tn, sizeof tn));
        uint32_t v;
        memcpy(&v, a->data, sizeof v);
        if (v == 0 || (v & (v - 1)) != 0)
            return fail(r,
                        "key 'general.alignment' at offset %" PRIu64
                        " has value %" PRIu32 ", which is not a power of "
                        "two (expected a non-zero power of two; the default "
                        "is %d)",
                        a->file_offset, v, DEFAULT_ALIGNMENT);
        /* The GGUF specification asks a multiple of 8.  Smaller ones would
         * let tensor data start at addresses its element type cannot be
         * loaded from (an F32 norm after a TQ2_0 tensor of an odd number
         * of 66-byte blocks lies at 2 mod 4), and llama.cpp aborts on
         * such files. */
        if (v % MIN_ALIGNMENT != 0)
            return fail(r,
                        "key 'general.alignment' at offset %" PRIu64
                        " has value %" PRIu32 ", which is not a multiple "
                        "of %d: GGUF requires the alignment of tensor data "
                        "to be a power of two and a multiple of %d (the "
                        "default is %d); rewrite the file with a valid "
                        "general.alignment, or without the key",
                        a->file_offset, v, MIN_ALIGNMENT, MIN_ALIGNMENT,
                        DEFAULT_ALIGNMENT);
        g->alignment = v;
    }
    return BITNET_OK;
}

/* ------------------------------------------------------------------ */
/* tensor infos                                                        */

/* Reads one tensor info into t; *expected is the running total of padded
 * sizes (the offset this tensor must have), advanced past t. */
static int read_tensor_info(reader *r, const bn_gguf *g, bn_gguf_tensor *t,
                            uint64_t *expected)
{
    char what[256], q[128];
    uint64_t at = r->pos, len;
    int rc;
    if ((rc = read_strlen(r, &len, "name length")))
        return rc;
    if (len == 0)
        return fail(r,
                    "tensor #%" PRIu64 " name at offset %" PRIu64
                    " is empty (tensor names must be non-empty)",
                    r->index, at);
    if (len >= MAX_NAME) {
        char head[MAX_NAME];
        if ((rc = read_bytes(r, head, sizeof head, "name")))
            return rc;
        return fail(r,
                    "tensor #%" PRIu64 " name '%s%s' at offset %" PRIu64
                    " is %" PRIu64 " bytes long (expected fewer than %d: "
                    "ggml's GGML_MAX_NAME)",
                    r->index, bn_gguf_quote(q, sizeof q, head, sizeof head),
                    len > sizeof head ? "..." : "", at, len, MAX_NAME);
    }
    if ((rc = read_bytes(r, t->name, (size_t)len, "name")))
        return rc;
    t->name[len] = '\0';
    if (memchr(t->name, '\0', (size_t)len))
        return fail(r,
                    "tensor #%" PRIu64 " name '%s' at offset %" PRIu64
                    " contains a NUL byte (names must be plain strings)",
                    r->index, bn_gguf_quote(q, sizeof q, t->name, (size_t)len),
                    at);
    r->name = t->name;

    at = r->pos;
    if ((rc = read_u32(r, &t->n_dims, "n_dims")))
        return rc;
    if (t->n_dims < 1 || t->n_dims > MAX_DIMS)
        return fail(r,
                    "%s %" PRIu32 " at offset %" PRIu64
                    " is out of range (expected 1..%d)",
                    describe(r, "n_dims", what, sizeof what), t->n_dims, at,
                    MAX_DIMS);
    static const char *const ne_field[MAX_DIMS] = {"ne[0]", "ne[1]", "ne[2]",
                                                   "ne[3]"};
    for (uint32_t j = 0; j < MAX_DIMS; j++) {
        t->ne[j] = 1;
        if (j >= t->n_dims)
            continue;
        uint64_t v;
        at = r->pos;
        if ((rc = read_u64(r, &v, ne_field[j])))
            return rc;
        if (v == 0 || v > INT64_MAX)
            return fail(r,
                        "%s = %" PRId64 " at offset %" PRIu64
                        " is out of range (expected >= 1)",
                        describe(r, ne_field[j], what, sizeof what),
                        (int64_t)v, at);
        t->ne[j] = (int64_t)v;
    }
    int64_t count = t->ne[0];
    for (int j = 1; j < MAX_DIMS; j++) {
        if (count > INT64_MAX / t->ne[j])
            return fail(r,
                        "tensor '%s' shape [%" PRId64 ", %" PRId64 ", %" PRId64
                        ", %" PRId64 "] (dimensions at offset %" PRIu64
                        ") has more than INT64_MAX elements",
                        bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                        t->ne[0], t->ne[1], t->ne[2], t->ne[3], at);
        count *= t->ne[j];
    }

    at = r->pos;
    if ((rc = read_u32(r, &t->type, "type")))
        return rc;
    if (!bn_ggml_type_known(t->type)) {
        char known[512];
        size_t o = 0;
        for (uint32_t k = 0; k < bn_ggml_type_count(); k++)
            if (bn_ggml_type_known(k) && o < sizeof known)
                o += (size_t)snprintf(known + o, sizeof known - o, " %s=%u",
                                      bn_ggml_type_name(k), k);
        return fail(r,
                    "unknown tensor type %" PRIu32 " for tensor '%s' at "
                    "offset %" PRIu64 " (not a type ggml knows, or one it "
                    "removed; known types:%s)",
                    t->type,
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)), at,
                    known);
    }
    int64_t blck = bn_ggml_blck_size(t->type);
    if (t->ne[0] % blck != 0)
        return fail(r,
                    "tensor '%s' of type %s has ne[0] = %" PRId64
                    " elements per row, not a multiple of the type's block "
                    "size %" PRId64 " (type at offset %" PRIu64 ")",
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                    bn_ggml_type_name(t->type), t->ne[0], blck, at);
    size_t size = bn_ggml_tensor_size(t->type, t->ne);
    if (size == 0 || size > UINT64_MAX - (g->alignment - 1))
        return fail(r,
                    "tensor '%s' of type %s and shape [%" PRId64 ", %" PRId64
                    ", %" PRId64 ", %" PRId64 "] has a byte size that "
                    "overflows (type at offset %" PRIu64 ")",
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                    bn_ggml_type_name(t->type), t->ne[0], t->ne[1], t->ne[2],
                    t->ne[3], at);
    t->size = size;

    at = r->pos;
    if ((rc = read_u64(r, &t->offset, "data offset")))
        return rc;
    if (t->offset % g->alignment != 0)
        return fail(r,
                    "tensor '%s' data offset %" PRIu64 " at offset %" PRIu64
                    " is not a multiple of the alignment %" PRIu64,
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                    t->offset, at, g->alignment);
    if (t->offset != *expected)
        return fail(r,
                    "tensor '%s' data offset %" PRIu64 " at offset %" PRIu64
                    " is not where the previous tensors end: expected %" PRIu64
                    " (tensor data must be packed in file order, each tensor "
                    "padded to the alignment %" PRIu64 ", no gaps, no "
                    "overlaps)",
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                    t->offset, at, *expected, g->alignment);
    uint64_t padded = (t->size + g->alignment - 1) / g->alignment *
                      g->alignment;
    if (padded > UINT64_MAX - *expected)
        return fail(r,
                    "tensor '%s' at offset %" PRIu64 ": the tensor data "
                    "section size overflows (%" PRIu64 " + %" PRIu64 ")",
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)), at,
                    *expected, padded);
    *expected += padded;
    return BITNET_OK;
}

static int read_tensor_infos(reader *r, bn_gguf *g, uint64_t n_tensors,
                             uint64_t **info_off)
{
    uint64_t cap = 0, off_cap = 0, total = 0;
    int rc;
    r->kind = "tensor";
    for (uint64_t i = 0; i < n_tensors; i++) {
        if (i > 0 && i % STEP_EVERY == 0 && (rc = step(r, "tensor infos")))
            return rc;
        bn_gguf_tensor *ts = grow(g->tensors, &cap, g->n_tensors,
                                  sizeof *g->tensors, n_tensors,
                                  "GGUF tensor infos");
        if (!ts)
            return oom(r);
        g->tensors = ts;
        uint64_t *offs = grow(*info_off, &off_cap, g->n_tensors,
                              sizeof **info_off, n_tensors,
                              "GGUF tensor offsets");
        if (!offs)
            return oom(r);
        *info_off = offs;
        r->name = NULL;
        r->index = i;
        (*info_off)[i] = r->pos;
        if ((rc = read_tensor_info(r, g, &g->tensors[i], &total)))
            return rc;
        g->n_tensors++;
    }
    r->kind = NULL;
    r->name = NULL;
    g->data_size = total;

    uint64_t dup, first = 0;
    char q[128];
    if ((rc = find_duplicate(r, g, g->n_tensors, tensor_at, &dup, &first)))
        return rc;
    if (dup < g->n_tensors)
        return fail(r,
                    "duplicate tensor '%s' at offset %" PRIu64
                    " (tensor #%" PRIu64 "; first defined at offset %" PRIu64
                    " by tensor #%" PRIu64 "); tensor names must be unique",
                    bn_gguf_quote(q, sizeof q, g->tensors[dup].name,
                           strlen(g->tensors[dup].name)),
                    (*info_off)[dup], dup, (*info_off)[first], first);
    return BITNET_OK;
}

/* ------------------------------------------------------------------ */
/* data section                                                        */

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* Places the data section and checks every tensor lies within the file. */
static int check_layout(reader *r, bn_gguf *g)
{
    char q[128];
    uint64_t a = g->alignment, end = r->pos;
    /* llama.cpp pads to the alignment only when there are tensors */
    g->data_offset = g->n_tensors ? (end + a - 1) / a * a : end;
    if (g->data_offset > r->size)
        return fail(r,
                    "truncated file: the tensor data section starts at offset "
                    "%" PRIu64 " (the tensor infos end at %" PRIu64
                    ", padded to the alignment %" PRIu64
                    ") but the file ends at %" PRIu64,
                    g->data_offset, end, a, r->size);
    uint64_t room = r->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const bn_gguf_tensor *t = &g->tensors[i];
        if (t->offset > room || t->size > room - t->offset)
            return fail(r,
                        "truncated tensor data: tensor '%s' needs bytes "
                        "[%" PRIu64 ", %" PRIu64 ") but the file ends at "
                        "%" PRIu64 " (data section at offset %" PRIu64
                        ", tensor data offset %" PRIu64 ", %" PRIu64
                        " bytes)",
                        bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)),
                        sat_add(g->data_offset, t->offset),
                        sat_add(sat_add(g->data_offset, t->offset), t->size),
                        r->size, g->data_offset, t->offset, t->size);
    }
    if (g->data_size > room) {
        const bn_gguf_tensor *t = &g->tensors[g->n_tensors - 1];
        return fail(r,
                    "truncated tensor data: the data section at offset "
                    "%" PRIu64 " needs bytes [%" PRIu64 ", %" PRIu64 ") (the "
                    "last tensor '%s' padded to the alignment %" PRIu64
                    ") but the file ends at %" PRIu64,
                    g->data_offset, g->data_offset,
                    sat_add(g->data_offset, g->data_size),
                    bn_gguf_quote(q, sizeof q, t->name, strlen(t->name)), a,
                    r->size);
    }
    if (g->data_size > SIZE_MAX)
        return fail(r,
                    "the tensor data (%" PRIu64 " bytes) does not fit this "
                    "platform's address space",
                    g->data_size);
    return BITNET_OK;
}

static int read_data(reader *r, bn_gguf *g)
{
    if (g->data_size == 0)
        return BITNET_OK;
    g->data = bn_aligned_alloc((size_t)g->data_size, "GGUF tensor data");
    if (!g->data)
        return oom(r);
    for (uint64_t done = 0; done < g->data_size;) {
        r->pos = g->data_offset + done;
        int rc = step(r, "tensor data");
        if (rc)
            return rc;
        uint64_t n = g->data_size - done;
        if (n > DATA_CHUNK)
            n = DATA_CHUNK;
        if ((rc = pread_all(r, g->data + done, (size_t)n, r->pos)))
            return rc;
        done += n;
    }
    r->pos = g->data_offset + g->data_size;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        g->tensors[i].data = g->data + g->tensors[i].offset;
    return BITNET_OK;
}

/* ------------------------------------------------------------------ */
/* open                                                                */

static int open_file(reader *r)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is then
     * refused as not a regular file). */
    r->fd = open(r->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (r->fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return bn_error(BITNET_E_MODEL_NOT_FOUND,
                            "'%s': model file not found (%s); check the "
                            "path",
                            r->path, strerror(e));
        return bn_error(BITNET_E_MODEL_LOAD,
                        "'%s': cannot open the model file: %s", r->path,
                        strerror(e));
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0)
        return bn_error(BITNET_E_MODEL_LOAD, "'%s': cannot stat the model "
                        "file: %s", r->path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return bn_error(BITNET_E_MODEL_NOT_FOUND,
                        "'%s': model file not found: the path is a "
                        "directory; pass the path of the .gguf file",
                        r->path);
    if (!S_ISREG(st.st_mode))
        return bn_error(BITNET_E_MODEL_LOAD,
                        "'%s': not a regular file (a device, FIFO or "
                        "socket); pass the path of a .gguf file",
                        r->path);
    r->size = (uint64_t)st.st_size;
    return BITNET_OK;
}

/* Checks the arguments both entry points share. */
static int check_args(const char *path, unsigned flags, bn_gguf **out)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return bn_error(BITNET_E_INVALID_ARG, "bn_gguf_open: %s is NULL",
                        !path ? "path" : "out");
    if (NEVER(flags & ~BN_GGUF_NO_DATA, "every caller (the loader, the llama check, the fuzzer) passes 0 or BN_GGUF_NO_DATA"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "bn_gguf_open: unknown flags 0x%x (known: "
                        "BN_GGUF_NO_DATA)",
                        flags & ~BN_GGUF_NO_DATA);
    return BITNET_OK;
}

/* The parser proper, for a reader whose source (fd or memory) and size are
 * set; frees the window, closes the fd and frees everything on failure. */
static int parse(reader *r, unsigned flags, bn_gguf **out)
{
    bn_gguf *g = NULL;
    uint64_t *info_off = NULL, n_tensors = 0, n_kv = 0;
    int rc;
    r->win = bn_malloc(WINDOW_BYTES, "GGUF read buffer");
    g = bn_calloc(1, sizeof *g, "GGUF model");
    if (!r->win || !g) {
        rc = oom(r);
        goto done;
    }
    g->file_size = r->size;
    g->alignment = DEFAULT_ALIGNMENT;
    if ((rc = read_header(r, g, &n_tensors, &n_kv)) ||
        (rc = step(r, "the header")) ||
        (rc = read_kvs(r, g, n_kv)) ||
        (rc = check_keys(r, g)) ||
        (rc = step(r, "kv pairs")) ||
        (rc = read_tensor_infos(r, g, n_tensors, &info_off)) ||
        (rc = check_layout(r, g)) ||
        (rc = step(r, "tensor infos")))
        goto done;
    if (!(flags & BN_GGUF_NO_DATA))
        rc = read_data(r, g);
done:
    bn_free(info_off);
    bn_free(r->win);
    r->win = NULL;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    if (rc) {
        bn_gguf_free(g);
        return rc;
    }
    *out = g;
    return BITNET_OK;
}

int bn_gguf_open(const char *path, unsigned flags, bn_gguf_step_fn step_fn,
                 void *step_user, bn_gguf **out)
{
    int rc = check_args(path, flags, out);
    if (rc)
        return rc;
    reader r = {.fd = -1, .path = path, .step = step_fn,
                .step_user = step_user, .elem = -1};
    if ((rc = open_file(&r))) {
        if (r.fd >= 0)
            close(r.fd);
        return rc;
    }
    return parse(&r, flags, out);
}

int bn_gguf_open_memory(const void *data, size_t size, const char *name,
                        unsigned flags, bn_gguf_step_fn step_fn,
                        void *step_user, bn_gguf **out)
{
    int rc = check_args(name, flags, out);
    if (rc)
        return rc;
    if (NEVER(!data && size, "its one caller, the fuzzer (fuzz/gguf_fuzzer.c, also through bn_model_load_memory), passes libFuzzer's input"))
        return bn_error(BITNET_E_INVALID_ARG,
                        "bn_gguf_open_memory: data is NULL");
    /* a non-NULL pointer even for size 0, so mem marks the source */
    static const uint8_t empty[1];
    reader r = {.fd = -1, .mem = data ? data : empty, .path = name,
                .size = size, .step = step_fn, .step_user = step_user,
                .elem = -1};
    return parse(&r, flags, out);
}
