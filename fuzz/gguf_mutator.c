/*
 * gguf_mutator.c — the structure-aware mode of the GGUF fuzzer
 * (fuzz/run.sh --mode structure): a libFuzzer custom mutator.
 *
 * Random bytes break a GGUF file's layout long before they reach the
 * values it carries: a changed tensor type or shape, string length or
 * array count shifts every later offset, the reader rightly refuses the
 * file at its layout checks, and the model loader, tokenizer and forward
 * pass see few mutants.  So this mutator parses the input (leniently),
 * changes what a file *says* — hyperparameters and their types, tensor
 * shapes, types, names and data, strings, array lengths and element types,
 * vocabulary entries, whole keys and tensors — and writes it back with the
 * layout recomputed: every length and count, the alignment padding, each
 * tensor's offset and the size of its data (bn_ggml_tensor_size) agree
 * with what the file now says.  The values are hostile; the layout is
 * valid, unless a mutation deliberately breaks one rule (a duplicate name,
 * an alignment that is not a power of two, n_dims 0).
 *
 * An input it cannot parse, and one mutation in eight, goes to libFuzzer's
 * own byte mutator, so the byte-level paths stay reachable from this mode
 * too.  Built into fuzz/build/gguf_fuzzer_structure with gguf_fuzzer.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);

/* ---- randomness and scratch memory --------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void)
{
    /* xorshift64*: libFuzzer hands us a seed per call, runs reproduce */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

/* Everything one mutation allocates, freed when it returns. */
typedef struct block {
    struct block *next;
    uint8_t data[];
} block;

static block *arena;

static void *scratch(size_t n)
{
    block *b = malloc(sizeof *b + (n ? n : 1));
    if (!b)
        abort(); /* the fuzzer's own memory: nothing to recover */
    b->next = arena;
    arena = b;
    return b->data;
}

static void scratch_free(void)
{
    while (arena) {
        block *next = arena->next;
        free(arena);
        arena = next;
    }
}

/* ---- the file as values --------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    uint64_t n;
} span; /* bytes of the input or of scratch memory */

typedef struct {
    span key;
    uint32_t type;
    uint32_t arr_type; /* arrays */
    uint64_t n;        /* arrays: element count */
    span raw;          /* scalar or string bytes; fixed-size array elements */
    span *strs;        /* string arrays: n strings */
} kv;

typedef struct {
    span name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    span data; /* may be shorter than the type and shape need: see put_data */
} tensor;

#define MAX_KV 4096
#define MAX_TENSORS 4096
#define MAX_MUTATIONS 3 /* per call */
#define MAX_ADDED MAX_MUTATIONS

typedef struct {
    uint32_t version;
    kv *kvs;
    uint64_t n_kv;
    tensor *ts;
    uint64_t n_t;
} file;

static const uint64_t fixed_size[BN_GGUF_TYPE_COUNT] = {
    [BN_GGUF_UINT8] = 1,  [BN_GGUF_INT8] = 1,    [BN_GGUF_UINT16] = 2,
    [BN_GGUF_INT16] = 2,  [BN_GGUF_UINT32] = 4,  [BN_GGUF_INT32] = 4,
    [BN_GGUF_FLOAT32] = 4, [BN_GGUF_BOOL] = 1,   [BN_GGUF_UINT64] = 8,
    [BN_GGUF_INT64] = 8,  [BN_GGUF_FLOAT64] = 8,
};

static int is_fixed(uint32_t t) { return t < BN_GGUF_TYPE_COUNT && fixed_size[t]; }

/* ---- parsing (lenient: any layout the writer below can reproduce) -------- */

typedef struct {
    const uint8_t *p;
    uint64_t n, pos;
} cursor;

static int take(cursor *c, uint64_t n, const uint8_t **out)
{
    if (n > c->n - c->pos)
        return 0;
    *out = c->p + c->pos;
    c->pos += n;
    return 1;
}

static int u32(cursor *c, uint32_t *v)
{
    const uint8_t *p;
    if (!take(c, 4, &p))
        return 0;
    memcpy(v, p, 4);
    return 1;
}

static int u64(cursor *c, uint64_t *v)
{
    const uint8_t *p;
    if (!take(c, 8, &p))
        return 0;
    memcpy(v, p, 8);
    return 1;
}

static int str(cursor *c, span *s)
{
    const uint8_t *p;
    if (!u64(c, &s->n) || !take(c, s->n, &p))
        return 0;
    s->p = p;
    return 1;
}

static uint32_t alignment_of(const file *f)
{
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const kv *k = &f->kvs[i];
        if (k->key.n == 17 && !memcmp(k->key.p, "general.alignment", 17) &&
            k->type == BN_GGUF_UINT32 && k->raw.n == 4) {
            uint32_t a;
            memcpy(&a, k->raw.p, 4);
            /* as the writer lays it out; the reader judges the value */
            if (a && !(a & (a - 1)) && a <= 4096)
                return a;
        }
    }
    return 32;
}

static int parse(const uint8_t *data, size_t size, file *f)
{
    cursor c = {data, size, 0};
    const uint8_t *magic;
    if (!take(&c, 4, &magic) || memcmp(magic, "GGUF", 4) || !u32(&c, &f->version) ||
        !u64(&c, &f->n_t) || !u64(&c, &f->n_kv) || f->n_kv > MAX_KV ||
        f->n_t > MAX_TENSORS)
        return 0;
    /* room for the entries the mutations of one call may add */
    f->kvs = scratch((f->n_kv + MAX_ADDED) * sizeof *f->kvs);
    f->ts = scratch((f->n_t + MAX_ADDED) * sizeof *f->ts);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        kv *k = &f->kvs[i];
        memset(k, 0, sizeof *k);
        if (!str(&c, &k->key) || !u32(&c, &k->type))
            return 0;
        if (is_fixed(k->type)) {
            k->raw.n = fixed_size[k->type];
            if (!take(&c, k->raw.n, &k->raw.p))
                return 0;
        } else if (k->type == BN_GGUF_STRING) {
            if (!str(&c, &k->raw))
                return 0;
        } else if (k->type == BN_GGUF_ARRAY) {
            if (!u32(&c, &k->arr_type) || !u64(&c, &k->n))
                return 0;
            if (is_fixed(k->arr_type)) {
                if (k->n > (c.n - c.pos) / fixed_size[k->arr_type])
                    return 0;
                k->raw.n = k->n * fixed_size[k->arr_type];
                if (!take(&c, k->raw.n, &k->raw.p))
                    return 0;
            } else if (k->arr_type == BN_GGUF_STRING) {
                if (k->n > (c.n - c.pos) / 8)
                    return 0;
                k->strs = scratch((k->n + 1) * sizeof *k->strs);
                for (uint64_t j = 0; j < k->n; j++)
                    if (!str(&c, &k->strs[j]))
                        return 0;
            } else {
                return 0; /* nested arrays, unknown types: bytes only */
            }
        } else {
            return 0;
        }
    }
    for (uint64_t i = 0; i < f->n_t; i++) {
        tensor *t = &f->ts[i];
        memset(t, 0, sizeof *t);
        uint64_t offset;
        if (!str(&c, &t->name) || !u32(&c, &t->n_dims) || t->n_dims > 4)
            return 0;
        for (uint32_t d = 0; d < 4; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if (!u64(&c, &t->ne[d]))
                return 0;
        if (!u32(&c, &t->type) || !u64(&c, &offset))
            return 0;
        t->data.n = offset; /* resolved below, once the data section is known */
    }
    uint64_t align = alignment_of(f);
    uint64_t start = (c.pos + align - 1) / align * align;
    for (uint64_t i = 0; i < f->n_t; i++) {
        tensor *t = &f->ts[i];
        uint64_t off = t->data.n;
        int64_t ne[4];
        for (int d = 0; d < 4; d++)
            ne[d] = t->ne[d] > INT64_MAX ? -1 : (int64_t)t->ne[d];
        uint64_t need = bn_ggml_tensor_size(t->type, ne);
        t->data.p = data;
        t->data.n = 0;
        if (start <= size && off <= size - start) {
            t->data.p = data + start + off;
            t->data.n = size - start - off < need ? size - start - off : need;
        }
    }
    return 1;
}

/* ---- writing, with the layout recomputed --------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int full;
} out;

static void put(out *o, const void *p, uint64_t n)
{
    if (o->full || n > o->cap - o->n) {
        o->full = 1;
        return;
    }
    if (n)
        memcpy(o->p + o->n, p, n);
    o->n += n;
}

static void put_u32(out *o, uint32_t v) { put(o, &v, 4); }
static void put_u64(out *o, uint64_t v) { put(o, &v, 8); }
static void put_str(out *o, span s)
{
    put_u64(o, s.n);
    put(o, s.p, s.n);
}

static void pad(out *o, uint64_t align)
{
    static const uint8_t zeros[4096];
    uint64_t n = (align - o->n % align) % align;
    put(o, zeros, n);
}

static uint64_t tensor_bytes(const tensor *t)
{
    int64_t ne[4];
    for (int d = 0; d < 4; d++)
        ne[d] = d < (int)t->n_dims ? (t->ne[d] > INT64_MAX ? -1 : (int64_t)t->ne[d]) : 1;
    return bn_ggml_tensor_size(t->type, ne); /* 0 when the reader refuses it */
}

/* A tensor's data at the size its type and shape now need: its old bytes,
 * repeated when it grew (weights stay weights, not zeros), in doubling
 * copies of what is already written. */
static void put_data(out *o, const tensor *t, uint64_t need)
{
    if (need > o->cap - o->n) {
        o->full = 1;
        return;
    }
    uint8_t *start = o->p + o->n;
    uint64_t done = t->data.n < need ? t->data.n : need;
    if (done)
        memcpy(start, t->data.p, done);
    else
        memset(start, 0, done = need);
    while (done < need) {
        uint64_t n = done < need - done ? done : need - done;
        memcpy(start + done, start, n);
        done += n;
    }
    o->n += need;
}

static size_t write_file(const file *f, uint8_t *dst, size_t cap)
{
    out o = {dst, 0, cap, 0};
    put(&o, "GGUF", 4);
    put_u32(&o, f->version);
    put_u64(&o, f->n_t);
    put_u64(&o, f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const kv *k = &f->kvs[i];
        put_str(&o, k->key);
        put_u32(&o, k->type);
        if (k->type == BN_GGUF_STRING) {
            put_str(&o, k->raw);
        } else if (k->type == BN_GGUF_ARRAY) {
            put_u32(&o, k->arr_type);
            put_u64(&o, k->n);
            if (k->arr_type == BN_GGUF_STRING)
                for (uint64_t j = 0; j < k->n; j++)
                    put_str(&o, k->strs[j]);
            else
                put(&o, k->raw.p, k->raw.n);
        } else {
            put(&o, k->raw.p, k->raw.n);
        }
    }
    uint64_t align = alignment_of(f), offset = 0;
    for (uint64_t i = 0; i < f->n_t; i++) {
        const tensor *t = &f->ts[i];
        put_str(&o, t->name);
        put_u32(&o, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && d < 5; d++) /* 5: refused */
            put_u64(&o, d < 4 ? t->ne[d] : 1);
        put_u32(&o, t->type);
        put_u64(&o, offset);
        offset += (tensor_bytes(t) + align - 1) / align * align;
    }
    pad(&o, align);
    for (uint64_t i = 0; i < f->n_t; i++) {
        put_data(&o, &f->ts[i], tensor_bytes(&f->ts[i]));
        pad(&o, align);
    }
    return o.full ? 0 : o.n;
}

/* ---- values worth trying --------------------------------------------------- */

static const int64_t interesting_ints[] = {
    0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 100, 127, 128, 255,
    256, 257, 299, 300, 301, 511, 512, 1000, 1024, 4095, 4096, 65535, 65536,
    1 << 20, INT32_MAX, (int64_t)INT32_MAX + 1, UINT32_MAX, -1, -2, -128,
    INT32_MIN, INT64_MAX, INT64_MIN,
};

static double interesting_float(double now)
{
    static const double table[] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-5,
                                   1e-6, 1e-30, 1e-45, 1e30, 3.4e38, 1e300,
                                   10000.0, 500000.0, -1e-5};
    switch (below(6)) {
    case 0: return NAN;
    case 1: return below(2) ? INFINITY : -INFINITY;
    case 2: return now * 2;
    case 3: return now / 2;
    case 4: return -now;
    default: return table[below(sizeof table / sizeof *table)];
    }
}

static int64_t interesting_int(int64_t now)
{
    uint64_t u = (uint64_t)now; /* wrapping, as a hostile writer's would */
    switch (below(5)) {
    case 0: return (int64_t)(u + 1);
    case 1: return (int64_t)(u - 1);
    case 2: return (int64_t)(u * 2);
    case 3: return now / 2;
    default:
        return interesting_ints[below(sizeof interesting_ints / sizeof *interesting_ints)];
    }
}

static int64_t get_int(uint32_t type, const uint8_t *p)
{
    switch (type) {
    case BN_GGUF_UINT8: case BN_GGUF_BOOL: return p[0];
    case BN_GGUF_INT8: return (int8_t)p[0];
    case BN_GGUF_UINT16: { uint16_t v; memcpy(&v, p, 2); return v; }
    case BN_GGUF_INT16: { int16_t v; memcpy(&v, p, 2); return v; }
    case BN_GGUF_UINT32: { uint32_t v; memcpy(&v, p, 4); return v; }
    case BN_GGUF_INT32: { int32_t v; memcpy(&v, p, 4); return v; }
    case BN_GGUF_FLOAT32: { float v; memcpy(&v, p, 4); return isfinite(v) && fabsf(v) < 9e18f ? (int64_t)v : 0; }
    case BN_GGUF_FLOAT64: { double v; memcpy(&v, p, 8); return isfinite(v) && fabs(v) < 9e18 ? (int64_t)v : 0; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

/* Writes v as `type` (truncating, as a C cast would). */
static void set_num(uint32_t type, uint8_t *p, int64_t v, double d, int is_float)
{
    if (type == BN_GGUF_FLOAT32) {
        float x = is_float ? (float)d : (float)v;
        memcpy(p, &x, 4);
    } else if (type == BN_GGUF_FLOAT64) {
        double x = is_float ? d : (double)v;
        memcpy(p, &x, 8);
    } else {
        if (is_float)
            v = isfinite(d) && fabs(d) < 9e18 ? (int64_t)d : INT64_MAX;
        memcpy(p, &v, fixed_size[type]); /* little-endian: the low bytes */
    }
}

/* A new value for one fixed-size element at p. */
static void mutate_number(uint32_t type, uint8_t *p)
{
    if (type == BN_GGUF_FLOAT32 || type == BN_GGUF_FLOAT64) {
        double now;
        if (type == BN_GGUF_FLOAT32) {
            float x;
            memcpy(&x, p, 4);
            now = x;
        } else {
            memcpy(&now, p, 8);
        }
        set_num(type, p, 0, interesting_float(now), 1);
    } else if (type == BN_GGUF_BOOL) {
        p[0] = below(4) ? !p[0] : (uint8_t)rnd();
    } else {
        set_num(type, p, interesting_int(get_int(type, p)), 0, 0);
    }
}

static span copy_span(const void *p, uint64_t n)
{
    uint8_t *q = scratch(n);
    if (n && p)
        memcpy(q, p, n);
    else if (n)
        memset(q, 0, n);
    return (span){q, n};
}

static span text(const char *s) { return copy_span(s, strlen(s)); }

/* A string worth trying in place of `now`, from the file's own strings
 * when `pool` has some. */
static span interesting_string(span now, const span *pool, uint64_t n_pool)
{
    static const char *const words[] = {
        "", "bitnet", "llama", "bitnet-b1.58", "BitnetForCausalLM", "gpt2",
        "llama-bpe", "bert", "t5", "<s>", "</s>", "<unk>", "<pad>", "<0x00>",
        "<0x0A>", "<0xFF>", "<0x100>", "<0x", "\xe2\x96\x81", "\xe2\x96\x81\xe2\x96\x81",
        " ", "a", "ab", "\xff\xfe", "\xc3", "token_embd.weight", "output.weight",
        "general.alignment",
    };
    char buf[80];
    switch (below(8)) {
    case 0:
        if (n_pool)
            return pool[below(n_pool)];
        break;
    case 1: { /* longer */
        uint64_t n = now.n * 2 + 1 + below(300);
        uint8_t *q = scratch(n);
        for (uint64_t i = 0; i < n; i++)
            q[i] = now.n ? now.p[i % now.n] : 'a';
        return (span){q, n};
    }
    case 2: /* shorter */
        return (span){now.p, now.n ? below(now.n) : 0};
    case 3: { /* a NUL or a byte flipped inside */
        span s = copy_span(now.p, now.n ? now.n : 1);
        uint8_t *q = (uint8_t *)s.p;
        q[below(s.n)] = below(2) ? 0 : (uint8_t)rnd();
        return s;
    }
    case 4:
        snprintf(buf, sizeof buf, "<0x%02X>", (unsigned)below(256));
        return text(buf);
    default:
        break;
    }
    return text(words[below(sizeof words / sizeof *words)]);
}

/* ---- mutations: each returns 0 when it does not apply ------------------- */

static kv *pick_kv(file *f, int (*want)(const kv *))
{
    if (!f->n_kv)
        return NULL;
    uint64_t start = below(f->n_kv);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        kv *k = &f->kvs[(start + i) % f->n_kv];
        if (!want || want(k))
            return k;
    }
    return NULL;
}

static int want_scalar(const kv *k) { return is_fixed(k->type); }
static int want_string(const kv *k) { return k->type == BN_GGUF_STRING; }
static int want_array(const kv *k) { return k->type == BN_GGUF_ARRAY; }
static int want_nonempty_array(const kv *k) { return k->type == BN_GGUF_ARRAY && k->n; }

/* the file's strings: a pool of plausible values */
static const span *string_pool(const file *f, uint64_t *n)
{
    const kv *k = NULL;
    for (uint64_t i = 0; i < f->n_kv && !k; i++)
        if (f->kvs[i].type == BN_GGUF_ARRAY && f->kvs[i].arr_type == BN_GGUF_STRING && f->kvs[i].n)
            k = &f->kvs[i];
    *n = k ? k->n : 0;
    return k ? k->strs : NULL;
}

static int m_scalar(file *f)
{
    kv *k = pick_kv(f, want_scalar);
    if (!k)
        return 0;
    span s = copy_span(k->raw.p, k->raw.n);
    if (below(4) == 0) { /* another scalar's value: head_count = embedding_length ... */
        const kv *o = pick_kv(f, want_scalar);
        set_num(k->type, (uint8_t *)s.p, get_int(o->type, o->raw.p), 0, 0);
    } else {
        mutate_number(k->type, (uint8_t *)s.p);
    }
    k->raw = s;
    return 1;
}

/* A scalar or string stored under another type (u32 as i64, f32 as f64,
 * an integer as a string...), its value carried over where it can be. */
static int m_retype(file *f)
{
    kv *k = pick_kv(f, want_scalar);
    if (!k)
        return 0;
    static const uint32_t types[] = {BN_GGUF_UINT8, BN_GGUF_INT8, BN_GGUF_UINT16,
                                     BN_GGUF_INT16, BN_GGUF_UINT32, BN_GGUF_INT32,
                                     BN_GGUF_FLOAT32, BN_GGUF_BOOL, BN_GGUF_UINT64,
                                     BN_GGUF_INT64, BN_GGUF_FLOAT64, BN_GGUF_STRING};
    uint32_t to = types[below(sizeof types / sizeof *types)];
    int64_t v = get_int(k->type, k->raw.p);
    if (to == BN_GGUF_STRING) {
        char buf[32];
        snprintf(buf, sizeof buf, "%lld", (long long)v);
        k->raw = text(buf);
    } else {
        span s = copy_span(NULL, fixed_size[to]);
        set_num(to, (uint8_t *)s.p, v, (double)v, 0);
        k->raw = s;
    }
    k->type = to;
    return 1;
}

static int m_string(file *f)
{
    kv *k = pick_kv(f, want_string);
    if (!k)
        return 0;
    uint64_t n;
    const span *pool = string_pool(f, &n);
    k->raw = interesting_string(k->raw, pool, n);
    return 1;
}

/* An array's count changed, its elements cut or repeated to match: the
 * vocabulary one entry short, the scores twice as long as the tokens. */
static int m_array_len(file *f)
{
    kv *k = pick_kv(f, want_array);
    if (!k)
        return 0;
    uint64_t n = k->n, to;
    switch (below(6)) {
    case 0: to = 0; break;
    case 1: to = n ? n - 1 : 1; break;
    case 2: to = n + 1; break;
    case 3: to = n / 2; break;
    case 4: to = n * 2 + 1; break;
    default: to = below(2 * n + 3); break;
    }
    if (to > (1u << 16))
        to = 1u << 16;
    if (k->arr_type != BN_GGUF_STRING && !is_fixed(k->arr_type))
        return 0;
    if (k->arr_type == BN_GGUF_STRING) {
        span *s = scratch((to + 1) * sizeof *s);
        for (uint64_t i = 0; i < to; i++)
            s[i] = n ? k->strs[i % n] : text("x");
        k->strs = s;
    } else {
        uint64_t es = fixed_size[k->arr_type];
        uint8_t *p = scratch(to * es);
        for (uint64_t i = 0; i < to; i++) {
            if (n)
                memcpy(p + i * es, k->raw.p + (i % n) * es, es);
            else
                memset(p + i * es, 0, es);
        }
        k->raw = (span){p, to * es};
    }
    k->n = to;
    return 1;
}

/* One element of an array: a token's text (a duplicate, a byte token, an
 * empty piece), a score (NaN, inf), a token type, a merge. */
static int m_array_elem(file *f)
{
    kv *k = pick_kv(f, want_nonempty_array);
    if (!k || (k->arr_type != BN_GGUF_STRING && !is_fixed(k->arr_type)))
        return 0;
    uint64_t times = 1 + below(4);
    if (k->arr_type == BN_GGUF_STRING) {
        span *s = scratch(k->n * sizeof *s);
        memcpy(s, k->strs, k->n * sizeof *s);
        for (uint64_t t = 0; t < times; t++)
            s[below(k->n)] = interesting_string(s[below(k->n)], k->strs, k->n);
        k->strs = s;
    } else {
        span raw = copy_span(k->raw.p, k->raw.n);
        uint64_t es = fixed_size[k->arr_type];
        for (uint64_t t = 0; t < times; t++)
            mutate_number(k->arr_type, (uint8_t *)raw.p + below(k->n) * es);
        k->raw = raw;
    }
    return 1;
}

/* An array's elements re-encoded as another fixed type, or as strings. */
static int m_array_type(file *f)
{
    kv *k = pick_kv(f, want_array);
    if (!k)
        return 0;
    static const uint32_t types[] = {BN_GGUF_UINT8, BN_GGUF_INT32, BN_GGUF_UINT32,
                                     BN_GGUF_FLOAT32, BN_GGUF_FLOAT64, BN_GGUF_INT64,
                                     BN_GGUF_BOOL, BN_GGUF_STRING, BN_GGUF_ARRAY};
    uint32_t to = types[below(sizeof types / sizeof *types)];
    if (to == k->arr_type || (k->arr_type != BN_GGUF_STRING && !is_fixed(k->arr_type)))
        return 0;
    if (to == BN_GGUF_ARRAY) { /* nested: the reader must refuse it */
        k->arr_type = to;
        k->n = 0;
        k->raw = (span){NULL, 0};
        return 1;
    }
    if (to == BN_GGUF_STRING) {
        span *s = scratch((k->n + 1) * sizeof *s);
        for (uint64_t i = 0; i < k->n; i++) {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld",
                     k->arr_type == BN_GGUF_STRING ? 0LL
                         : (long long)get_int(k->arr_type, k->raw.p + i * fixed_size[k->arr_type]));
            s[i] = text(buf);
        }
        k->strs = s;
    } else {
        uint64_t es = fixed_size[to];
        uint8_t *p = scratch(k->n * es);
        for (uint64_t i = 0; i < k->n; i++) {
            int64_t v = k->arr_type == BN_GGUF_STRING
                            ? (int64_t)k->strs[i].n
                            : get_int(k->arr_type, k->raw.p + i * fixed_size[k->arr_type]);
            set_num(to, p + i * es, v, (double)v, 0);
        }
        k->raw = (span){p, k->n * es};
    }
    k->arr_type = to;
    return 1;
}

static tensor *pick_tensor(file *f)
{
    return f->n_t ? &f->ts[below(f->n_t)] : NULL;
}

/* A tensor's shape: one dimension changed, two swapped, a dimension
 * taken from another tensor, or n_dims changed. */
static int m_dims(file *f)
{
    tensor *t = pick_tensor(f);
    if (!t)
        return 0;
    /* n_dims may already be out of range (case 2 writes 0 and 5 on purpose,
     * for the reader to refuse): index ne[] within its 4 entries. */
    uint32_t d = (uint32_t)below(t->n_dims && t->n_dims <= 4 ? t->n_dims : 4);
    switch (below(6)) {
    case 0:
        if (t->n_dims >= 2) {
            uint64_t x = t->ne[0];
            t->ne[0] = t->ne[1];
            t->ne[1] = x;
        }
        break;
    case 1: {
        const tensor *o = pick_tensor(f);
        t->ne[d] = o->ne[below(o->n_dims && o->n_dims <= 4 ? o->n_dims : 4)];
        break;
    }
    case 2: {
        static const uint32_t dims[] = {1, 2, 3, 4, 0, 5};
        uint32_t n = dims[below(4) ? below(4) : 4 + below(2)];
        for (uint32_t i = t->n_dims; i < n && i < 4; i++)
            t->ne[i] = 1;
        t->n_dims = n;
        break;
    }
    default: {
        int64_t v = interesting_int((int64_t)t->ne[d]);
        t->ne[d] = v < 0 && below(4) ? 1 : (uint64_t)v;
        break;
    }
    }
    return 1;
}

/* A tensor's type: another one the engine computes with, one ggml knows
 * but the engine does not, or one nobody knows. */
static int m_type(file *f)
{
    tensor *t = pick_tensor(f);
    if (!t)
        return 0;
    static const uint32_t types[] = {BN_TYPE_F32, BN_TYPE_F16, BN_TYPE_TQ2_0,
                                     BN_TYPE_I2_S, 2, 3, 8, 10, 12, 14, 24,
                                     26, 28, 30, 34, 39, 99, 4, 37};
    t->type = below(2) ? types[below(4)] : types[below(sizeof types / sizeof *types)];
    return 1;
}

/* A tensor's name: another tensor's (a duplicate), one the loader looks
 * for, a layer the hyperparameters do not have, or a broken one. */
static int m_name(file *f)
{
    tensor *t = pick_tensor(f);
    if (!t)
        return 0;
    static const char *const names[] = {
        "token_embd.weight", "output.weight", "output_norm.weight",
        "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
        "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.0.ffn_norm.weight",
        "blk.0.attn_sub_norm.weight", "blk.0.ffn_sub_norm.weight",
        "blk.0.attn_q.scale", "blk.1.attn_q.weight", "blk.9999.ffn_up.weight",
        "rope_freqs.weight", "",
    };
    switch (below(3)) {
    case 0:
        t->name = pick_tensor(f)->name;
        break;
    case 1:
        t->name = text(names[below(sizeof names / sizeof *names)]);
        break;
    default:
        t->name = interesting_string(t->name, NULL, 0);
        break;
    }
    return 1;
}

/* Weights: non-finite or huge values, or libFuzzer's byte mutations on a
 * window of the data. */
static int m_data(file *f)
{
    tensor *t = pick_tensor(f);
    if (!t || !t->data.n)
        return 0;
    span s = copy_span(t->data.p, t->data.n);
    uint8_t *p = (uint8_t *)s.p;
    if (t->type == BN_TYPE_F32 && s.n >= 4 && below(2)) {
        float v = (float)interesting_float(1.0);
        memcpy(p + below(s.n / 4) * 4, &v, 4);
    } else {
        uint64_t n = s.n < 256 ? s.n : 256;
        uint64_t at = below(s.n - n + 1);
        uint8_t win[256];
        memcpy(win, p + at, n);
        LLVMFuzzerMutate(win, n, n); /* same size: the layout holds */
        memcpy(p + at, win, n);
    }
    t->data = s;
    return 1;
}

/* Whole entries: a key or tensor removed, duplicated (same name) or
 * added under a key the loader reads, two swapped. */
static int m_entries(file *f)
{
    static const char *const keys[] = {
        "general.alignment", "general.architecture", "%s.context_length",
        "%s.embedding_length", "%s.block_count", "%s.feed_forward_length",
        "%s.attention.head_count", "%s.attention.head_count_kv",
        "%s.attention.layer_norm_rms_epsilon", "%s.rope.freq_base",
        "%s.rope.dimension_count", "%s.vocab_size", "tokenizer.ggml.model",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.merges", "tokenizer.ggml.pre",
    };
    switch (below(6)) {
    case 0: /* remove a key */
        if (!f->n_kv)
            return 0;
        f->kvs[below(f->n_kv)] = f->kvs[--f->n_kv];
        return 1;
    case 1: /* remove a tensor */
        if (!f->n_t)
            return 0;
        f->ts[below(f->n_t)] = f->ts[--f->n_t];
        return 1;
    case 2: /* a key twice, or a key the loader reads with a scalar's value */
        if (!f->n_kv || f->n_kv >= MAX_KV)
            return 0;
        f->kvs[f->n_kv] = f->kvs[below(f->n_kv)];
        if (below(2)) {
            char name[96];
            const char *arch = "bitnet";
            for (uint64_t i = 0; i < f->n_kv; i++)
                if (f->kvs[i].key.n == 20 && !memcmp(f->kvs[i].key.p, "general.architecture", 20) &&
                    f->kvs[i].type == BN_GGUF_STRING && f->kvs[i].raw.n < 32) {
                    static char a[32];
                    memcpy(a, f->kvs[i].raw.p, f->kvs[i].raw.n);
                    a[f->kvs[i].raw.n] = '\0';
                    arch = a;
                }
            const char *pattern = keys[below(sizeof keys / sizeof *keys)];
            if (strstr(pattern, "%s"))
                snprintf(name, sizeof name, "%s%s", arch, pattern + 2);
            else
                snprintf(name, sizeof name, "%s", pattern);
            kv *k = &f->kvs[f->n_kv];
            k->key = text(name);
            k->type = BN_GGUF_UINT32;
            k->raw = copy_span(NULL, 4);
            set_num(k->type, (uint8_t *)k->raw.p, interesting_int(1), 0, 0);
        }
        f->n_kv++;
        return 1;
    case 3: /* a tensor twice */
        if (!f->n_t || f->n_t >= MAX_TENSORS)
            return 0;
        f->ts[f->n_t] = f->ts[below(f->n_t)];
        f->n_t++;
        return 1;
    case 4: /* order */
        if (f->n_kv < 2)
            return 0;
        {
            uint64_t a = below(f->n_kv), b = below(f->n_kv);
            kv x = f->kvs[a];
            f->kvs[a] = f->kvs[b];
            f->kvs[b] = x;
        }
        return 1;
    default:
        if (f->n_t < 2)
            return 0;
        {
            uint64_t a = below(f->n_t), b = below(f->n_t);
            tensor x = f->ts[a];
            f->ts[a] = f->ts[b];
            f->ts[b] = x;
        }
        return 1;
    }
}

/* general.alignment, added when absent: the layout follows it when it is
 * a power of two (1 and 2 put F32 data at odd addresses), the reader
 * judges the rest. */
static int m_alignment(file *f)
{
    static const uint32_t values[] = {1, 2, 4, 8, 16, 64, 128, 4096, 0, 3, 24, 1u << 31};
    kv *k = NULL;
    for (uint64_t i = 0; i < f->n_kv && !k; i++)
        if (f->kvs[i].key.n == 17 && !memcmp(f->kvs[i].key.p, "general.alignment", 17))
            k = &f->kvs[i];
    if (!k) {
        if (f->n_kv >= MAX_KV)
            return 0;
        k = &f->kvs[f->n_kv++];
        memset(k, 0, sizeof *k);
        k->key = text("general.alignment");
    }
    uint32_t v = values[below(sizeof values / sizeof *values)];
    k->type = below(8) ? BN_GGUF_UINT32 : BN_GGUF_UINT64;
    k->raw = copy_span(NULL, fixed_size[k->type]);
    memcpy((uint8_t *)k->raw.p, &v, 4);
    return 1;
}

static int m_version(file *f)
{
    static const uint32_t versions[] = {2, 3, 1, 4, 0};
    f->version = versions[below(sizeof versions / sizeof *versions)];
    return 1;
}

typedef int (*mutation)(file *);

/* Weighted by what reaches deep code: values and shapes most often. */
static const mutation mutations[] = {
    m_scalar, m_scalar, m_scalar, m_scalar, m_retype, m_string, m_string,
    m_array_len, m_array_len, m_array_elem, m_array_elem, m_array_elem,
    m_array_type, m_dims, m_dims, m_dims, m_type, m_type, m_name, m_name,
    m_data, m_data, m_entries, m_entries, m_alignment, m_version,
};

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
                               unsigned int seed)
{
    rng_state = seed * 0x9E3779B97F4A7C15ULL + 1;
    size_t written = 0;
    if (below(8)) {
        for (int attempt = 0; attempt < 4 && !written; attempt++) {
            file f;
            if (!parse(data, size, &f))
                break;
            int applied = 0;
            for (uint64_t n = 1 + below(MAX_MUTATIONS); n > 0; n--)
                applied |= mutations[below(sizeof mutations / sizeof *mutations)](&f);
            if (!applied)
                continue;
            uint8_t *buf = scratch(max_size);
            written = write_file(&f, buf, max_size);
            if (written)
                memcpy(data, buf, written); /* after: f points into data */
        }
        scratch_free();
    }
    return written ? written : LLVMFuzzerMutate(data, size, max_size);
}
