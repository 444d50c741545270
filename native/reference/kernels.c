/*
 * kernels.c — matrix kernels of the reference engine.  See kernels.h.
 *
 * Prepared-activation layouts (identical for both implementations, so a
 * buffer prepared under one can be multiplied under the other):
 *
 *   F32    float    x[n_tokens][ncols]                     (a copy)
 *   F16    float    x[n_tokens][ncols]  rounded to fp16 (RNE) and held
 *          as floats (exact), so no path converts them again per row
 *   TQ2_0  bn_q8k   b[n_tokens][ncols/256]  (292 bytes each, the layout of
 *          ggml's block_q8_K)
 *   I2_S   per token: { float s; int32_t sum; pad to 32 } then int8 q[ncols]
 *          (token stride 32 + ncols, so every q vector is 32-byte aligned
 *          relative to the buffer)
 *
 * In every case bn_act_size(w, n) == n * bn_act_size(w, 1).  The buffer
 * must be at least 4-byte aligned (bn_malloc / bn_aligned_alloc are).
 *
 * Activation preparation is one scalar implementation shared by both paths
 * (it is O(ncols) per token against O(ncols * nrows) for the product), so
 * both paths multiply exactly the same integers.  The matrix products have a
 * portable C version and an AVX2 (+FMA, F16C) version compiled with
 * function-level target attributes: the file builds with plain -O2 and the
 * AVX2 code only runs when bn_cpu_has_avx2() says the CPU and OS support it.
 *
 * Integer sums (TQ2_0 per 256-block, I2_S per row) are exact in both paths.
 * I2_S results are therefore bit-identical between the paths; TQ2_0, F16 and
 * F32 results differ only by float summation order.  For TQ2_0 each path
 * follows the matching ggml kernel operation for operation: the AVX2 one
 * gives bit-for-bit the results of ggml_vec_dot_tq2_0_q8_K (AVX2 build),
 * the portable one those of ggml_vec_dot_tq2_0_q8_K_generic, and the Q8_K
 * blocks are byte-identical to quantize_row_q8_K's (checked against the
 * libggml-cpu of llama-cpp-python 0.3.36; ggml leaves bsums of an all-zero
 * block unset, here they are 0).
 *
 * Limits: I2_S rows are summed in int32 lanes, exact for ncols < 2^22
 * (far beyond any real model; the loader bounds shapes).
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "bn_cpu.h"
#include "gguf.h"

#define QK_K 256
#define TQ2_BLOCK_BYTES 66 /* uint8 qs[64]; fp16 d */
#define I2S_BLOCK 128      /* weights per 32-byte I2_S block */
#define I2S_HDR 32         /* per-token header of the I2_S activations */
#define TILE 4             /* tokens per weight-row pass */

/* One block of 256 activations quantized to Q8_K, laid out as ggml's
 * block_q8_K.  The sums of 16 give the -1 offset of the ternary codes; the
 * AVX2 kernel subtracts them lane by lane exactly as ggml's does, so its
 * float lanes hold the same values as ggml's. */
typedef struct {
    float d;       /* 1/iscale: value = d * qs[i] */
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* bsums[j] = sum of qs[16j .. 16j+15] */
} bn_q8k;

typedef struct {
    float s;       /* 127 / max|x| */
    int32_t sum;   /* sum of q */
} bn_i8hdr;

_Static_assert(sizeof(bn_q8k) == 292, "bn_q8k layout");
_Static_assert(sizeof(bn_i8hdr) <= I2S_HDR, "bn_i8hdr layout");

/* ------------------------------------------------------------------------
 * fp16 <-> fp32
 * ---------------------------------------------------------------------- */

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Branch-free (masks, no selects) so that loops over it vectorize. */
static inline float h2f(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1F;
    const uint32_t mant = h & 0x3FF;
    /* zero or subnormal: mant * 2^-24, exact in float */
    const uint32_t sub = f32_bits((float)(int32_t)mant * 0x1p-24f);
    /* inf, or NaN made quiet (as vcvtph2ps does) */
    const uint32_t special =
        0x7F800000u | (mant << 13) | ((uint32_t)(mant != 0) << 22);
    const uint32_t normal = ((exp + 112) << 23) | (mant << 13);
    const uint32_t m_sub = 0u - (uint32_t)(exp == 0);
    const uint32_t m_special = 0u - (uint32_t)(exp == 31);
    return f32_from_bits(sign | (sub & m_sub) | (special & m_special) |
                         (normal & ~(m_sub | m_special)));
}

float bn_fp16_to_fp32(uint16_t h)
{
    return h2f(h);
}

uint16_t bn_fp32_to_fp16(float f)
{
    const uint32_t x = f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7FFFFFFFu;
    const uint32_t e = ax >> 23; /* biased fp32 exponent */

    if (e == 0xFF) /* inf, or NaN quietened with its payload truncated */
        return (uint16_t)(sign | 0x7C00 |
                          ((ax & 0x7FFFFF) ? 0x200 | ((ax >> 13) & 0x3FF) : 0));
    if (e > 142) /* >= 2^16: overflows to inf */
        return (uint16_t)(sign | 0x7C00);
    if (e >= 113) {
        /* normal half: rebias, keep 10 mantissa bits, round half to even;
         * a carry into the exponent is the correct result (up to inf). */
        uint32_t q = (ax - (112u << 23)) >> 13;
        uint32_t rem = ax & 0x1FFF;
        if (rem > 0x1000 || (rem == 0x1000 && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    if (e < 102) /* below 2^-25: rounds to zero */
        return sign;
    /* subnormal half: value in units of 2^-24 is m * 2^(e-126) */
    {
        const uint32_t m = (ax & 0x7FFFFF) | 0x800000;
        const uint32_t sh = 126 - e; /* 14..24 */
        uint32_t q = m >> sh;
        const uint32_t rem = m & ((1u << sh) - 1);
        const uint32_t half = 1u << (sh - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
}

/* ------------------------------------------------------------------------
 * Activation preparation (shared by both paths)
 * ---------------------------------------------------------------------- */

/* ggml's nearest_int: round half to even via the 1.5 * 2^23 trick, valid
 * for |f| <= 2^22 (a NaN gives 0, as in ggml). */
static inline int nearest_int(float f)
{
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007FFFFF) - 0x00400000;
}

static size_t i2s_token_stride(const bn_weight *w)
{
    return I2S_HDR + (size_t)w->ncols;
}

size_t bn_act_size(const bn_weight *w, int64_t n_tokens)
{
    if (!w || n_tokens <= 0 || w->ncols <= 0)
        return 0;
    const size_t n = (size_t)n_tokens, nc = (size_t)w->ncols;
    switch (w->type) {
    case BN_TYPE_F32:
        return n * nc * sizeof(float);
    case BN_TYPE_F16:
        return n * nc * sizeof(float);
    case BN_TYPE_TQ2_0:
        return n * (nc / QK_K) * sizeof(bn_q8k);
    case BN_TYPE_I2_S:
        return n * i2s_token_stride(w);
    default:
        return 0;
    }
}

/* ggml's quantize_row_q8_K_ref for one block of 256. */
static void quantize_q8k_block(const float *x, bn_q8k *y)
{
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < QK_K; j++) {
        const float ax = fabsf(x[j]);
        if (ax > amax) { /* first element of largest magnitude; NaN skipped */
            amax = ax;
            max = x[j];
        }
    }
    if (amax == 0.0f) {
        y->d = 0.0f;
        memset(y->qs, 0, sizeof y->qs);
        memset(y->bsums, 0, sizeof y->bsums);
        return;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < QK_K; j++) {
        int v = nearest_int(iscale * x[j]);
        if (v > 127)
            v = 127;
        /* v >= -127 for finite input; beyond that (only with a subnormal
         * max, where iscale overflows) keep ggml's int8 truncation */
        y->qs[j] = (int8_t)(uint8_t)((unsigned)v & 0xFFu);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        int sum = 0;
        for (int k = 0; k < 16; k++)
            sum += y->qs[16 * j + k];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1.0f / iscale;
}

/* BitNet.cpp's quantize_row_i8_s for one vector of n. */
static void quantize_i8s_row(const float *x, int64_t n, bn_i8hdr *hdr,
                             int8_t *q)
{
    /* max|x| in double, floored at 1e-5, as BitNet.cpp does (so an
     * all-zero vector gives all-zero q); unlike BitNet.cpp, whose result
     * then depends on where a NaN sits, a NaN anywhere makes the scale NaN
     * and so every output NaN */
    double amax = 0.00001;
    int nan = 0;
    for (int64_t i = 0; i < n; i++) {
        const double ax = fabs((double)x[i]);
        if (ax > amax)
            amax = ax;
        nan |= ax != ax;
    }
    const float s = nan ? NAN : (float)(127.0 / amax);
    int32_t sum = 0;
    for (int64_t i = 0; i < n; i++) {
        int v = nearest_int(x[i] * s); /* |x*s| <= 127 (or NaN -> 0) */
        v = v > 127 ? 127 : v < -128 ? -128 : v;
        q[i] = (int8_t)v;
        sum += v;
    }
    hdr->s = s;
    hdr->sum = sum;
}

void bn_act_prepare(const bn_weight *w, const float *x, int64_t n_tokens,
                    void *act)
{
    if (!w || !x || !act || n_tokens <= 0 || w->ncols <= 0)
        return;
    const int64_t nc = w->ncols;
    switch (w->type) {
    case BN_TYPE_F32:
        memcpy(act, x, (size_t)(n_tokens * nc) * sizeof(float));
        break;
    case BN_TYPE_F16: {
        float *h = act;
        for (int64_t i = 0; i < n_tokens * nc; i++)
            h[i] = h2f(bn_fp32_to_fp16(x[i]));
        break;
    }
    case BN_TYPE_TQ2_0: {
        const int64_t nb = nc / QK_K;
        bn_q8k *y = act;
        for (int64_t t = 0; t < n_tokens; t++)
            for (int64_t b = 0; b < nb; b++)
                quantize_q8k_block(x + t * nc + b * QK_K, y + t * nb + b);
        break;
    }
    case BN_TYPE_I2_S: {
        const size_t stride = i2s_token_stride(w);
        for (int64_t t = 0; t < n_tokens; t++) {
            unsigned char *p = (unsigned char *)act + (size_t)t * stride;
            quantize_i8s_row(x + t * nc, nc, (bn_i8hdr *)p,
                             (int8_t *)(p + I2S_HDR));
        }
        break;
    }
    default:
        break;
    }
}

static inline float i2s_finish(int32_t dot, const bn_i8hdr *h, float scale)
{
    /* BitNet.cpp: (float)(sum code*q) - (float)(sum q), / s, * scale; both
     * integers are exact in float for any real row length */
    return (float)(dot - h->sum) / h->s * scale;
}

/* ------------------------------------------------------------------------
 * Portable products
 * ---------------------------------------------------------------------- */

static float dot_f32_portable(const float *w, const float *x, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += w[i + k] * x[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
              ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += w[i] * x[i];
    return s;
}

static float dot_f16_portable(const uint16_t *w, const float *x, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += h2f(w[i + k]) * x[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) +
              ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        s += h2f(w[i]) * x[i];
    return s;
}

static float dot_tq2_portable(const uint8_t *wrow, const bn_q8k *a,
                              int64_t nb)
{
    float sumf = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *qs = wrow + b * TQ2_BLOCK_BYTES;
        const int8_t *q = a[b].qs;
        /* 16-bit partial sums (8 products of at most 3*127 each) keep
         * the loops narrow enough to vectorize well */
        int16_t p[32];
        for (int k = 0; k < 32; k++) {
            const int v = qs[k], u = qs[32 + k];
            p[k] = (int16_t)(q[k] * (v & 3) + q[32 + k] * ((v >> 2) & 3) +
                             q[64 + k] * ((v >> 4) & 3) +
                             q[96 + k] * ((v >> 6) & 3) +
                             q[128 + k] * (u & 3) +
                             q[160 + k] * ((u >> 2) & 3) +
                             q[192 + k] * ((u >> 4) & 3) +
                             q[224 + k] * ((u >> 6) & 3));
        }
        int32_t sumi = 0;
        for (int k = 0; k < 32; k++)
            sumi += p[k];
        for (int k = 0; k < QK_K / 16; k++)
            sumi -= a[b].bsums[k]; /* codes are q+1 */
        uint16_t dh;
        memcpy(&dh, qs + 64, sizeof dh);
        sumf += (float)sumi * (a[b].d * bn_fp16_to_fp32(dh));
    }
    return sumf;
}

static int32_t dot_i2s_portable(const uint8_t *wrow, const int8_t *q,
                                int64_t ncols)
{
    const int64_t nblk = ncols / I2S_BLOCK;
    int32_t sum = 0;
    /* 16-bit partial sums over 16 blocks (16 * 4 * 3*128 < 2^15) */
    for (int64_t b0 = 0; b0 < nblk; b0 += 16) {
        const int64_t b1 = b0 + 16 < nblk ? b0 + 16 : nblk;
        int16_t p[32] = {0};
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t *c = wrow + b * 32;
            const int8_t *qq = q + b * I2S_BLOCK;
            for (int k = 0; k < 32; k++) {
                const int v = c[k];
                p[k] = (int16_t)(p[k] + qq[k] * (v >> 6) +
                                 qq[32 + k] * ((v >> 4) & 3) +
                                 qq[64 + k] * ((v >> 2) & 3) +
                                 qq[96 + k] * (v & 3));
            }
        }
        for (int k = 0; k < 32; k++)
            sum += p[k];
    }
    return sum;
}

/* Computes out[0..nt) = row . token (t0 + t) for one weight row. */
typedef void (*bn_group_fn)(const bn_weight *w, const uint8_t *row,
                            const void *act, int64_t t0, int nt, float *out);

static void group_portable(const bn_weight *w, const uint8_t *row,
                           const void *act, int64_t t0, int nt, float *out)
{
    const int64_t nc = w->ncols;
    for (int i = 0; i < nt; i++) {
        const int64_t t = t0 + i;
        switch (w->type) {
        case BN_TYPE_F32:
            out[i] = dot_f32_portable((const float *)row,
                                      (const float *)act + t * nc, nc);
            break;
        case BN_TYPE_F16:
            out[i] = dot_f16_portable((const uint16_t *)row,
                                      (const float *)act + t * nc, nc);
            break;
        case BN_TYPE_TQ2_0:
            out[i] = dot_tq2_portable(
                row, (const bn_q8k *)act + t * (nc / QK_K), nc / QK_K);
            break;
        default: { /* I2_S */
            const unsigned char *p =
                (const unsigned char *)act + (size_t)t * i2s_token_stride(w);
            out[i] = i2s_finish(
                dot_i2s_portable(row, (const int8_t *)(p + I2S_HDR), nc),
                (const bn_i8hdr *)p, w->scale);
            break;
        }
        }
    }
}

/* The same for two rows at once (out0: row0, out1: row1); optional. */
typedef void (*bn_pair_fn)(const bn_weight *w, const uint8_t *row0,
                           const uint8_t *row1, const void *act, int64_t t0,
                           int nt, float *out0, float *out1);

/* Rows [r0, r1) for every token.  Rows go in blocks of about 256 KiB of
 * weights; within a block, each group of TILE tokens runs over every row.
 * So weights come from memory once per call, a group kernel unpacks a
 * weight row once for all its tokens, and the group's activations are
 * reused across the rows of a block from L1 (int8 ones) or L2.  Float
 * weights with several tokens go two rows at a time (`pair`), which halves
 * the activation traffic that otherwise bounds them. */
static void matmul_driver(const bn_weight *w, const void *act,
                          int64_t n_tokens, float *y, int64_t r0, int64_t r1,
                          bn_group_fn fn, bn_pair_fn pair)
{
    const int64_t nr = w->nrows;
    const uint8_t *data = w->data;
    int64_t rb = w->row_bytes ? (int64_t)((size_t)256 * 1024 / w->row_bytes)
                              : 64;
    rb = rb < 2 ? 2 : rb > 64 ? 64 : rb;
    if (n_tokens == 1)
        pair = NULL;
    for (int64_t rs = r0; rs < r1; rs += rb) {
        const int64_t re = rs + rb < r1 ? rs + rb : r1;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TILE) {
            const int nt = (int)(n_tokens - t0 < TILE ? n_tokens - t0 : TILE);
            int64_t r = rs;
            if (pair) {
                for (; r + 2 <= re; r += 2) {
                    float o0[TILE], o1[TILE];
                    pair(w, data + (size_t)r * w->row_bytes,
                         data + (size_t)(r + 1) * w->row_bytes, act, t0, nt,
                         o0, o1);
                    for (int t = 0; t < nt; t++) {
                        y[(t0 + t) * nr + r] = o0[t];
                        y[(t0 + t) * nr + r + 1] = o1[t];
                    }
                }
            }
            for (; r < re; r++) {
                float out[TILE];
                fn(w, data + (size_t)r * w->row_bytes, act, t0, nt, out);
                for (int t = 0; t < nt; t++)
                    y[(t0 + t) * nr + r] = out[t];
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * AVX2 products
 * ---------------------------------------------------------------------- */

/* -DBN_NO_SIMD builds the portable path only. */
#if !defined(BN_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define BN_HAVE_AVX2_CODE 1
#include <immintrin.h>

#define BN_AVX2 __attribute__((target("avx2,fma,f16c")))
/* full unrolling of the per-token loops keeps the accumulators in registers */
#if defined(__clang__)
#define BN_UNROLL4 _Pragma("unroll 4")
#else
#define BN_UNROLL4 _Pragma("GCC unroll 4")
#endif
#define BN_AVX2_INLINE \
    static inline __attribute__((always_inline, target("avx2,fma,f16c")))

BN_AVX2_INLINE float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
                          _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

BN_AVX2_INLINE int32_t hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
                              _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* --- TQ2_0 x Q8_K ---------------------------------------------------- */

/* One weight row against NT tokens (NT a constant after inlining): the
 * 2-bit codes of each 256-block are unpacked once to unsigned bytes 0..2
 * and multiplied (maddubs) with each token's int8 activations; 16-bit lanes
 * cannot overflow (8 products of at most 2*3*127 each, minus a sum of 16
 * activations).  The -1 offset: bsums subtracted lane by lane, as ggml. */
BN_AVX2_INLINE void tq2_tile_avx2(const uint8_t *wrow, int64_t nb,
                                  const bn_q8k *const *a, int NT, float *out)
{
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        acc[t] = _mm256_setzero_ps();

    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = wrow + b * TQ2_BLOCK_BYTES;
        uint16_t dh;
        memcpy(&dh, blk + 64, sizeof dh);
        const float dw = _cvtsh_ss(dh);
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)blk);
        const __m256i x1 = _mm256_loadu_si256((const __m256i *)(blk + 32));
        const __m256i c0 = _mm256_and_si256(x0, m3);
        const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(x0, 2), m3);
        const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(x0, 4), m3);
        const __m256i c3 = _mm256_and_si256(_mm256_srli_epi16(x0, 6), m3);
        const __m256i c4 = _mm256_and_si256(x1, m3);
        const __m256i c5 = _mm256_and_si256(_mm256_srli_epi16(x1, 2), m3);
        const __m256i c6 = _mm256_and_si256(_mm256_srli_epi16(x1, 4), m3);
        const __m256i c7 = _mm256_and_si256(_mm256_srli_epi16(x1, 6), m3);
BN_UNROLL4
        for (int t = 0; t < NT; t++) {
            const bn_q8k *y = a[t] + b;
            const __m256i *q = (const __m256i *)y->qs;
            __m256i s0 = _mm256_add_epi16(
                _mm256_maddubs_epi16(c0, _mm256_loadu_si256(q + 0)),
                _mm256_maddubs_epi16(c1, _mm256_loadu_si256(q + 1)));
            __m256i s1 = _mm256_add_epi16(
                _mm256_maddubs_epi16(c2, _mm256_loadu_si256(q + 2)),
                _mm256_maddubs_epi16(c3, _mm256_loadu_si256(q + 3)));
            __m256i s2 = _mm256_add_epi16(
                _mm256_maddubs_epi16(c4, _mm256_loadu_si256(q + 4)),
                _mm256_maddubs_epi16(c5, _mm256_loadu_si256(q + 5)));
            __m256i s3 = _mm256_add_epi16(
                _mm256_maddubs_epi16(c6, _mm256_loadu_si256(q + 6)),
                _mm256_maddubs_epi16(c7, _mm256_loadu_si256(q + 7)));
            __m256i s = _mm256_add_epi16(_mm256_add_epi16(s0, s1),
                                         _mm256_add_epi16(s2, s3));
            s = _mm256_sub_epi16(
                s, _mm256_loadu_si256((const __m256i *)y->bsums));
            const __m256i si = _mm256_madd_epi16(s, ones);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si),
                                     _mm256_set1_ps(y->d * dw), acc[t]);
        }
    }
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        out[t] = hsum_ps(acc[t]);
}

static BN_AVX2 void group_tq2_avx2(const bn_weight *w, const uint8_t *row,
                                   const void *act, int64_t t0, int nt,
                                   float *out)
{
    const int64_t nb = w->ncols / QK_K;
    const bn_q8k *a[TILE];
    for (int t = 0; t < nt; t++)
        a[t] = (const bn_q8k *)act + (t0 + t) * nb;
    switch (nt) { /* one inlined copy per group size */
    case 1: tq2_tile_avx2(row, nb, a, 1, out); break;
    case 2: tq2_tile_avx2(row, nb, a, 2, out); break;
    case 3: tq2_tile_avx2(row, nb, a, 3, out); break;
    default: tq2_tile_avx2(row, nb, a, 4, out); break;
    }
}

/* --- I2_S x int8 ------------------------------------------------------ */

/* Same scheme: codes 0..2 unpacked once per 128-block, maddubs with each
 * token's int8 q; 16-bit lanes take 8 blocks (8 * 4 * 2*3*128 < 2^15)
 * before widening to 32 bits. */
BN_AVX2_INLINE void i2s_tile_avx2(const uint8_t *wrow, int64_t nblk,
                                  const int8_t *const *qv, int NT,
                                  int32_t *out)
{
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[TILE];
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        acc[t] = _mm256_setzero_si256();

    for (int64_t b0 = 0; b0 < nblk; b0 += 8) {
        const int64_t b1 = b0 + 8 < nblk ? b0 + 8 : nblk;
        __m256i s16[TILE];
BN_UNROLL4
        for (int t = 0; t < NT; t++)
            s16[t] = _mm256_setzero_si256();
        for (int64_t b = b0; b < b1; b++) {
            const __m256i x =
                _mm256_loadu_si256((const __m256i *)(wrow + b * 32));
            const __m256i c0 = _mm256_and_si256(_mm256_srli_epi16(x, 6), m3);
            const __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(x, 4), m3);
            const __m256i c2 = _mm256_and_si256(_mm256_srli_epi16(x, 2), m3);
            const __m256i c3 = _mm256_and_si256(x, m3);
BN_UNROLL4
            for (int t = 0; t < NT; t++) {
                const __m256i *q = (const __m256i *)(qv[t] + b * I2S_BLOCK);
                __m256i p0 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c0, _mm256_loadu_si256(q + 0)),
                    _mm256_maddubs_epi16(c1, _mm256_loadu_si256(q + 1)));
                __m256i p1 = _mm256_add_epi16(
                    _mm256_maddubs_epi16(c2, _mm256_loadu_si256(q + 2)),
                    _mm256_maddubs_epi16(c3, _mm256_loadu_si256(q + 3)));
                s16[t] = _mm256_add_epi16(s16[t], _mm256_add_epi16(p0, p1));
            }
        }
BN_UNROLL4
        for (int t = 0; t < NT; t++)
            acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s16[t], ones));
    }
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        out[t] = hsum_epi32(acc[t]);
}

static BN_AVX2 void group_i2s_avx2(const bn_weight *w, const uint8_t *row,
                                   const void *act, int64_t t0, int nt,
                                   float *out)
{
    const int64_t nblk = w->ncols / I2S_BLOCK;
    const size_t stride = i2s_token_stride(w);
    const int8_t *a[TILE];
    int32_t dot[TILE];
    for (int t = 0; t < nt; t++)
        a[t] = (const int8_t *)((const unsigned char *)act +
                                (size_t)(t0 + t) * stride + I2S_HDR);
    switch (nt) {
    case 1: i2s_tile_avx2(row, nblk, a, 1, dot); break;
    case 2: i2s_tile_avx2(row, nblk, a, 2, dot); break;
    case 3: i2s_tile_avx2(row, nblk, a, 3, dot); break;
    default: i2s_tile_avx2(row, nblk, a, 4, dot); break;
    }
    for (int t = 0; t < nt; t++)
        out[t] = i2s_finish(dot[t],
                            (const bn_i8hdr *)((const unsigned char *)act +
                                               (size_t)(t0 + t) * stride),
                            w->scale);
}

/* --- F32 / F16 --------------------------------------------------------- */

BN_AVX2_INLINE __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
BN_AVX2_INLINE __m256 load8_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
BN_AVX2_INLINE float scalar_f32(const float *p) { return *p; }
BN_AVX2_INLINE float scalar_f16(const uint16_t *p) { return _cvtsh_ss(*p); }

/* One row against NT tokens: 32 elements per step (4 accumulators) for a
 * single token, 16 (2 per token) for a group.  Tails in scalar float. */
#define BN_FLOAT_TILE(sfx, T)                                                 \
    BN_AVX2_INLINE void tile_##sfx(const T *w, const float *const *x,        \
                                   int64_t n,                                 \
                                   int NT, float *out)                        \
    {                                                                         \
        int64_t i = 0;                                                        \
        if (NT == 1) {                                                        \
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;       \
            const float *x0 = x[0];                                           \
            for (; i + 32 <= n; i += 32) {                                    \
                a0 = _mm256_fmadd_ps(load8_##sfx(w + i),                      \
                                     load8_f32(x0 + i), a0);                \
                a1 = _mm256_fmadd_ps(load8_##sfx(w + i + 8),                  \
                                     load8_f32(x0 + i + 8), a1);            \
                a2 = _mm256_fmadd_ps(load8_##sfx(w + i + 16),                 \
                                     load8_f32(x0 + i + 16), a2);           \
                a3 = _mm256_fmadd_ps(load8_##sfx(w + i + 24),                 \
                                     load8_f32(x0 + i + 24), a3);           \
            }                                                                 \
            for (; i + 8 <= n; i += 8)                                        \
                a0 = _mm256_fmadd_ps(load8_##sfx(w + i),                      \
                                     load8_f32(x0 + i), a0);                \
            float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1),            \
                                            _mm256_add_ps(a2, a3)));          \
            for (; i < n; i++)                                                \
                s += scalar_##sfx(w + i) * x0[i];              \
            out[0] = s;                                                       \
            return;                                                           \
        }                                                                     \
        __m256 a[TILE][2];                                                    \
        BN_UNROLL4 for (int t = 0; t < NT; t++) a[t][0] =        \
            a[t][1] = _mm256_setzero_ps();                                    \
        for (; i + 16 <= n; i += 16) {                                        \
            const __m256 w0 = load8_##sfx(w + i);                             \
            const __m256 w1 = load8_##sfx(w + i + 8);                         \
            BN_UNROLL4 for (int t = 0; t < NT; t++) {            \
                a[t][0] = _mm256_fmadd_ps(w0, load8_f32(x[t] + i), a[t][0]); \
                a[t][1] =                                                     \
                    _mm256_fmadd_ps(w1, load8_f32(x[t] + i + 8), a[t][1]);  \
            }                                                                 \
        }                                                                     \
        for (; i + 8 <= n; i += 8) {                                          \
            const __m256 w0 = load8_##sfx(w + i);                             \
            BN_UNROLL4 for (int t = 0; t < NT; t++) a[t][0] =    \
                _mm256_fmadd_ps(w0, load8_f32(x[t] + i), a[t][0]);          \
        }                                                                     \
        BN_UNROLL4 for (int t = 0; t < NT; t++) {                \
            float s = hsum_ps(_mm256_add_ps(a[t][0], a[t][1]));               \
            for (int64_t k = i; k < n; k++)                                   \
                s += scalar_##sfx(w + k) * x[t][k];            \
            out[t] = s;                                                       \
        }                                                                     \
    }

BN_FLOAT_TILE(f32, float)
BN_FLOAT_TILE(f16, uint16_t)

/* Two rows against NT tokens: each activation load feeds both rows. */
#define BN_FLOAT_PAIR(sfx, T)                                                 \
    BN_AVX2_INLINE void pair_tile_##sfx(const T *w0, const T *w1,             \
                                        const float *const *x, int64_t n,     \
                                        int NT, float *o0, float *o1)         \
    {                                                                         \
        __m256 a0[TILE], a1[TILE];                                            \
        BN_UNROLL4 for (int t = 0; t < NT; t++) a0[t] = a1[t] =  \
            _mm256_setzero_ps();                                              \
        int64_t i = 0;                                                        \
        for (; i + 8 <= n; i += 8) {                                          \
            const __m256 wa = load8_##sfx(w0 + i), wb = load8_##sfx(w1 + i);  \
            BN_UNROLL4 for (int t = 0; t < NT; t++) {            \
                const __m256 xv = _mm256_loadu_ps(x[t] + i);                  \
                a0[t] = _mm256_fmadd_ps(wa, xv, a0[t]);                       \
                a1[t] = _mm256_fmadd_ps(wb, xv, a1[t]);                       \
            }                                                                 \
        }                                                                     \
        BN_UNROLL4 for (int t = 0; t < NT; t++) {                \
            float s0 = hsum_ps(a0[t]), s1 = hsum_ps(a1[t]);                   \
            for (int64_t k = i; k < n; k++) {                                 \
                s0 += scalar_##sfx(w0 + k) * x[t][k];                         \
                s1 += scalar_##sfx(w1 + k) * x[t][k];                         \
            }                                                                 \
            o0[t] = s0;                                                       \
            o1[t] = s1;                                                       \
        }                                                                     \
    }                                                                         \
    static BN_AVX2 void pair_##sfx##_avx2(                                    \
        const bn_weight *w, const uint8_t *row0, const uint8_t *row1,         \
        const void *act, int64_t t0, int nt, float *o0, float *o1)            \
    {                                                                         \
        const int64_t nc = w->ncols;                                          \
        const float *a[TILE];                                                 \
        for (int t = 0; t < nt; t++)                                          \
            a[t] = (const float *)act + (t0 + t) * nc;                        \
        const T *p0 = (const T *)row0, *p1 = (const T *)row1;                 \
        switch (nt) {                                                         \
        case 1: pair_tile_##sfx(p0, p1, a, nc, 1, o0, o1); break;             \
        case 2: pair_tile_##sfx(p0, p1, a, nc, 2, o0, o1); break;             \
        case 3: pair_tile_##sfx(p0, p1, a, nc, 3, o0, o1); break;             \
        default: pair_tile_##sfx(p0, p1, a, nc, 4, o0, o1); break;            \
        }                                                                     \
    }

BN_FLOAT_PAIR(f32, float)
BN_FLOAT_PAIR(f16, uint16_t)

#define BN_FLOAT_GROUP(sfx, T)                                                \
    static BN_AVX2 void group_##sfx##_avx2(const bn_weight *w,                \
                                           const uint8_t *row,                \
                                           const void *act, int64_t t0,       \
                                           int nt, float *out)                \
    {                                                                         \
        const int64_t nc = w->ncols;                                          \
        const float *a[TILE];                                                 \
        for (int t = 0; t < nt; t++)                                          \
            a[t] = (const float *)act + (t0 + t) * nc;                        \
        switch (nt) {                                                         \
        case 1: tile_##sfx((const T *)row, a, nc, 1, out); break;             \
        case 2: tile_##sfx((const T *)row, a, nc, 2, out); break;             \
        case 3: tile_##sfx((const T *)row, a, nc, 3, out); break;             \
        default: tile_##sfx((const T *)row, a, nc, 4, out); break;            \
        }                                                                     \
    }

BN_FLOAT_GROUP(f32, float)
BN_FLOAT_GROUP(f16, uint16_t)

#endif /* BN_HAVE_AVX2_CODE */

/* ------------------------------------------------------------------------
 * Dispatch
 * ---------------------------------------------------------------------- */

/* The only mutable global: set by bn_kernels_force_portable (tests). */
static int g_force_portable;

static int use_avx2(void)
{
#ifdef BN_HAVE_AVX2_CODE
    return !__atomic_load_n(&g_force_portable, __ATOMIC_RELAXED) &&
           bn_cpu_has_avx2();
#else
    return 0;
#endif
}

const char *bn_kernels_impl(void)
{
    return use_avx2() ? "avx2" : "portable";
}

void bn_kernels_force_portable(int on)
{
    __atomic_store_n(&g_force_portable, on ? 1 : 0, __ATOMIC_RELAXED);
}

void bn_matmul_rows(const bn_weight *w, const void *act, int64_t n_tokens,
                    float *y, int64_t r0, int64_t r1)
{
    if (!w || !act || !y || !w->data || n_tokens <= 0 || w->ncols <= 0)
        return;
    if (r0 < 0)
        r0 = 0;
    if (r1 > w->nrows)
        r1 = w->nrows;
    if (r0 >= r1)
        return;
    if (w->type != BN_TYPE_F32 && w->type != BN_TYPE_F16 &&
        w->type != BN_TYPE_TQ2_0 && w->type != BN_TYPE_I2_S) {
        /* not reachable through the loader; make it visible, not silent */
        for (int64_t t = 0; t < n_tokens; t++)
            for (int64_t r = r0; r < r1; r++)
                y[t * w->nrows + r] = NAN;
        return;
    }
    bn_group_fn fn = group_portable;
    bn_pair_fn pair = NULL;
#ifdef BN_HAVE_AVX2_CODE
    if (use_avx2()) {
        switch (w->type) {
        case BN_TYPE_F32: fn = group_f32_avx2; pair = pair_f32_avx2; break;
        case BN_TYPE_F16: fn = group_f16_avx2; pair = pair_f16_avx2; break;
        case BN_TYPE_TQ2_0: fn = group_tq2_avx2; break;
        default: fn = group_i2s_avx2; break;
        }
    }
#endif
    matmul_driver(w, act, n_tokens, y, r0, r1, fn, pair);
}

/* ------------------------------------------------------------------------
 * Row dequantization (embedding lookups)
 * ---------------------------------------------------------------------- */

void bn_dequant_row(const bn_weight *w, int64_t row, float *out)
{
    if (!w || !out || !w->data || row < 0 || row >= w->nrows)
        return;
    const int64_t nc = w->ncols;
    const uint8_t *p = (const uint8_t *)w->data + (size_t)row * w->row_bytes;
    switch (w->type) {
    case BN_TYPE_F32:
        memcpy(out, p, (size_t)nc * sizeof(float));
        break;
    case BN_TYPE_F16:
        for (int64_t i = 0; i < nc; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, sizeof h);
            out[i] = bn_fp16_to_fp32(h);
        }
        break;
    case BN_TYPE_TQ2_0:
        for (int64_t b = 0; b < nc / QK_K; b++) {
            const uint8_t *blk = p + b * TQ2_BLOCK_BYTES;
            uint16_t dh;
            memcpy(&dh, blk + 64, sizeof dh);
            const float d = bn_fp16_to_fp32(dh);
            for (int e = 0; e < QK_K; e++) {
                const int c =
                    (blk[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                out[b * QK_K + e] = (float)(c - 1) * d;
            }
        }
        break;
    case BN_TYPE_I2_S:
        /* code 3 never occurs in valid data; it reads as +2, consistent
         * with the dot product (code - 1) */
        for (int64_t j = 0; j < nc; j++) {
            const int c = (p[(j / 128) * 32 + j % 32] >> (6 - 2 * ((j % 128) / 32))) & 3;
            out[j] = (float)(c - 1) * w->scale;
        }
        break;
    default:
        for (int64_t i = 0; i < nc; i++)
            out[i] = NAN;
        break;
    }
}
