/*
 * kernels.c — matrix kernels of the reference engine.  See kernels.h.
 *
 * Prepared-activation layouts (identical for all implementations, so a
 * buffer prepared under one can be multiplied under another):
 *
 *   F32    float    x[n_tokens][ncols]                     (a copy)
 *   F16    float    x[n_tokens][ncols]  rounded to fp16 (RNE) and held
 *          as floats (exact), so no path converts them again per row
 *   TQ2_0  bn_q8k   b[n_tokens][ncols/256]  (the fields of ggml's
 *          block_q8_K, reordered and padded to 320 bytes: see bn_q8k)
 *   I2_S   per token: { float s; int32_t sum; pad to 64 } then int8 q[ncols]
 *          (token stride 64 + ncols, so every q vector is 64-byte aligned
 *          relative to the buffer: a 512-bit load of it that crossed a
 *          cache line made the AVX-512 kernel slower than AVX2's for one
 *          token)
 *
 * In every case bn_act_size(w, n) == n * bn_act_size(w, 1).  The buffer
 * must be at least 4-byte aligned (bn_malloc / bn_aligned_alloc are; 64-byte
 * alignment, the engine's scratch, makes the TQ2_0 and I2_S loads aligned).
 *
 * Activation preparation has a scalar implementation and, for the two that
 * cost something per element (Q8_K and the fp16 rounding), AVX2 versions
 * that produce the same bytes, so every path multiplies exactly the same
 * numbers.  The matrix products have a portable C version, an AVX2 (+FMA,
 * F16C) version and AVX-512 ones (kernels_avx512.h: every type; TQ2_0 and
 * I2_S with and without VNNI, F32 / F16 without, having no use for it),
 * compiled with function-level target attributes: the file builds with
 * plain -O2 and the SIMD code only runs when the CPU and OS support it
 * (bn_cpu_has_avx2, bn_cpu_has_avx512 and the BW / DQ / VL / VNNI CPUID
 * bits).  The AVX-512 kernels give the AVX2 ones' bits for every (row,
 * token): each 8-lane float accumulator of the AVX2 code is one 256-bit
 * half of a zmm (one row per half, or two of a row's four one-token
 * accumulators), fed the same operations in the same order and reduced the
 * same way; only exact integer sums are regrouped.
 *
 * Work is split by a driver (matmul_driver) that hands a "rows function" a
 * block of rows and a group of up to TILE tokens; each call computes up to
 * ROWS_MAX rows for the whole group, so a weight row is read and unpacked
 * once per group and activations are reused across rows from L1.  The float
 * kernels go R rows x NT tokens at a time with all accumulators in
 * registers (and prefetch the weights, which stream from memory), the
 * ternary ones unpack a row's codes once for all NT tokens.
 *
 * Integer sums (TQ2_0 per 256-block, I2_S per row) are exact in all paths.
 * I2_S results are therefore bit-identical between the paths; portable
 * TQ2_0 results differ from the SIMD ones by float summation order only.
 * For TQ2_0 each path
 * follows the matching ggml kernel operation for operation: the AVX2 and
 * AVX-512 ones give bit-for-bit the results of ggml_vec_dot_tq2_0_q8_K (AVX2
 * build), the portable one those of ggml_vec_dot_tq2_0_q8_K_generic, and the
 * Q8_K fields are byte-identical to quantize_row_q8_K's (checked against the
 * libggml-cpu of llama-cpp-python 0.3.36; ggml leaves bsums of an all-zero
 * block unset, here they are 0).  Within a path, a (row, token) result does
 * not depend on the row range it was computed in, nor on how many tokens
 * went with it, except that F32 / F16 products of one token (or of rows
 * whose length is not a multiple of 8) take ggml_vec_dot's order and the
 * others tinyBLAS's, as ggml does (rows_vdot_portable, BN_FLOAT_BLOCK); the
 * F32 / F16 paths give the same bits portable, AVX2 and AVX-512 (issue 19).
 *
 * Limits: I2_S rows are summed in int32 lanes, exact for ncols < 2^22
 * (far beyond any real model; the loader bounds shapes).
 */
#include "kernels.h"

#include <math.h>
#include <string.h>

#include "bn_cpu.h"
#include "gguf.h"

/* The AVX2 code (function-level target attributes; -DBN_NO_SIMD builds the
 * portable path only). */
#if !defined(BN_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define BN_HAVE_AVX2_CODE 1
#include <immintrin.h>

#define BN_AVX2 __attribute__((target("avx2,fma,f16c")))
/* full unrolling of the per-token loops keeps the accumulators in registers */
#if defined(__clang__)
#define BN_UNROLL4 _Pragma("unroll 4")
#define BN_UNROLL8 _Pragma("unroll 8")
#else
#define BN_UNROLL4 _Pragma("GCC unroll 4")
#define BN_UNROLL8 _Pragma("GCC unroll 8")
#endif
#define BN_AVX2_INLINE \
    static inline __attribute__((always_inline, target("avx2,fma,f16c")))
/* The AVX-512 kernels (kernels_avx512.h), for CPUs with AVX-512 F, BW, VL
 * and DQ (and VNNI where present); -DBN_NO_AVX512 leaves them out */
#if !defined(BN_NO_AVX512) && (defined(__clang__) || __GNUC__ >= 8)
#define BN_HAVE_AVX512_CODE 1
#define BN_X512_TARGET_avx512 "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq"
#define BN_X512_TARGET_vnni BN_X512_TARGET_avx512 ",avx512vnni"
#endif
#endif

/* The test build of the AVX-512 kernels (tests/native/test_kernels_avx512.py):
 * the portable engine (-DBN_NO_SIMD) plus kernels_avx512.h on SIMDe's
 * portable intrinsics, run wherever bn_kernels_simde_level asks, so the
 * kernels are checked on any CPU.  Never part of the real build. */
#if defined(BN_SIMDE_AVX512) && defined(BN_NO_SIMD)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h> /* vcvtph2ps: the F16 kernels, TQ2_0's scales */
/* SIMDe 0.7.4's alias for _mm512_madd_epi16 names the masked form's four
 * arguments (simde/x86/avx512/madd.h); its function is the right one */
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)
#define BN_HAVE_AVX512_CODE 1
#define BN_SIMDE_BUILD 1
#define BN_UNROLL4
#define BN_UNROLL8
#endif

#define QK_K 256
#define TQ2_BLOCK_BYTES 66 /* uint8 qs[64]; fp16 d */
#define I2S_BLOCK 128      /* weights per 32-byte I2_S block */
#define I2S_HDR 64         /* per-token header of the I2_S activations */
#define TILE 4             /* tokens per weight-row pass */

#if defined(BN_HAVE_AVX2_CODE) || defined(BN_HAVE_AVX512_CODE)
/* Bytes ahead of the current weights that the F32 / F16 kernels (AVX2 and
 * AVX-512) prefetch (into L2) on a first pass: many rows of lookahead, so
 * the weights stream from memory while the FMAs run.  (The hardware prefetchers alone do poorly on several rows
 * read side by side: measured on Zen 4, 4 tokens x 32000 x 512 F16 took
 * about 3x longer without; prefetching into L1 instead was 1.5x slower.) */
#ifndef BN_PF_DIST
#define BN_PF_DIST 32768
#endif
#ifndef BN_PF_HINT
#define BN_PF_HINT _MM_HINT_T1
#endif

/* What a kernel prefetches, BN_PF_DIST ahead, at byte b of a block of R
 * rows (at row, rbytes apart; b a multiple of 64, one call per row k < R
 * at every 64 bytes): together the block's bytes, each line once.  Rows
 * of 4 KiB or more get one stream each, row k's line b, which the L2
 * streamer follows page by page.  Shorter rows share pages, where the
 * streamer keeps one forward stream per page and a pattern that hops
 * between rows defeats it, so they go in address order instead: line
 * b * R / 64 + k of the block.  (Measured on a Xeon, family 6 model 167,
 * 32000 x 512 F16 from memory, one thread: the AVX-512 kernels' one token
 * 0.86x -> 1.00x the AVX2 speed and four tokens 0.89x -> 0.97x; 2560
 * columns unchanged.)  Every line: one-token F32, which once prefetched
 * every other line of a row and left the rest to the hardware, ran
 * 1.09-1.33x faster with all of them on that Xeon (32000 x 512 and x 2560,
 * one thread, AVX-512 and AVX2 alike, each against the old form in one
 * process), and 1.00-1.15x on two threads. */
#define BN_PF_SWEEP_BELOW 4096
static inline const char *bn_pf_addr(const uint8_t *row, size_t rbytes,
                                     int R, int k, size_t b)
{
    const size_t off = rbytes < BN_PF_SWEEP_BELOW
                           ? b * (size_t)R + (size_t)k * 64
                           : (size_t)k * rbytes + b;
    return (const char *)row + BN_PF_DIST + off;
}
#endif

/* One block of 256 activations quantized to Q8_K: the fields of ggml's
 * block_q8_K, reordered and padded to 320 bytes so that in a 32-byte
 * aligned buffer every 32-byte load of qs and bsums is aligned (a load that
 * crosses a cache line costs two, and the multi-token TQ2_0 kernels are
 * bound by these loads).  The sums of 16 give the -1 offset of the ternary
 * codes; the AVX2 kernel subtracts them exactly as ggml's does, so its float
 * lanes hold the same values as ggml's. */
typedef struct {
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16]; /* bsums[j] = sum of qs[16j .. 16j+15] */
    float d;       /* 1/iscale: value = d * qs[i] */
    unsigned char pad[28];
} bn_q8k;

typedef struct {
    float s;       /* 127 / max|x| */
    int32_t sum;   /* sum of q */
} bn_i8hdr;

_Static_assert(sizeof(bn_q8k) == 320, "bn_q8k layout");
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

/* Tokens t0 .. t0 + nt of prepared I2_S activations: each one's header
 * and int8 q (the rows functions of every path take them so). */
static inline void i2s_tokens(const bn_weight *w, const void *act, int64_t t0,
                              int nt, const int8_t **q, const bn_i8hdr **h)
{
    const size_t stride = i2s_token_stride(w);
    for (int t = 0; t < nt; t++) {
        const unsigned char *p =
            (const unsigned char *)act + (size_t)(t0 + t) * stride;
        h[t] = (const bn_i8hdr *)p;
        q[t] = (const int8_t *)(p + I2S_HDR);
    }
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
    memset(y->pad, 0, sizeof y->pad);
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

#ifdef BN_HAVE_AVX2_CODE
/* AVX2 versions of the two preparations that cost something per element,
 * byte for byte the same as the scalar ones (the tests compare them).  Built
 * without FMA, and with the product kept separate in any case (an opaque
 * copy), so that iscale * x is rounded before the 1.5 * 2^23 is added, as in
 * ggml's quantize_row_q8_K_ref. */
#define BN_AVX2_NOFMA static __attribute__((target("avx2")))

BN_AVX2_NOFMA void quantize_q8k_block_avx2(const float *x, bn_q8k *y)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    /* amax: NaN lanes lose (maxps returns its second operand then) */
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < QK_K; j += 8)
        m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), absmask), m);
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m),
                           _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    memset(y->pad, 0, sizeof y->pad);
    if (amax == 0.0f) {
        y->d = 0.0f;
        memset(y->qs, 0, sizeof y->qs);
        memset(y->bsums, 0, sizeof y->bsums);
        return;
    }
    /* max: the first element of that magnitude */
    const __m256 am = _mm256_set1_ps(amax);
    float max = 0.0f;
    for (int j = 0; j < QK_K; j += 8) {
        const int hit = _mm256_movemask_ps(_mm256_cmp_ps(
            _mm256_and_ps(_mm256_loadu_ps(x + j), absmask), am, _CMP_EQ_OQ));
        if (hit) {
            max = x[j + __builtin_ctz((unsigned)hit)];
            break;
        }
    }
    const float iscale = -127.f / max;
    const __m256 vs = _mm256_set1_ps(iscale);
    const __m256 magic = _mm256_set1_ps(12582912.f);
    const __m256i mant = _mm256_set1_epi32(0x007FFFFF);
    const __m256i off = _mm256_set1_epi32(0x00400000);
    const __m256i c127 = _mm256_set1_epi32(127);
    const __m256i lowbyte = _mm256_set1_epi32(0xFF);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    for (int j = 0; j < QK_K; j += 32) {
        __m256i v[4];
        for (int k = 0; k < 4; k++) {
            __m256 p = _mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k));
            __asm__("" : "+x"(p));
            const __m256i bits = _mm256_castps_si256(_mm256_add_ps(p, magic));
            /* nearest_int, then min(127, v) and the low byte (as the
             * scalar code's int8 truncation) */
            const __m256i q = _mm256_min_epi32(
                _mm256_sub_epi32(_mm256_and_si256(bits, mant), off), c127);
            v[k] = _mm256_and_si256(q, lowbyte);
        }
        /* bytes 0..255, so the unsigned packs do not saturate */
        const __m256i b = _mm256_permutevar8x32_epi32(
            _mm256_packus_epi16(_mm256_packus_epi32(v[0], v[1]),
                                _mm256_packus_epi32(v[2], v[3])),
            order);
        _mm256_storeu_si256((__m256i *)(y->qs + j), b);
        /* sums of 16: sad of q + 128 gives sums of 8, each + 1024 */
        const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(b, bias),
                                            _mm256_setzero_si256());
        const __m128i lo = _mm256_castsi256_si128(sad);
        const __m128i hi = _mm256_extracti128_si256(sad, 1);
        const __m128i s16 = _mm_add_epi64(_mm_unpacklo_epi64(lo, hi),
                                          _mm_unpackhi_epi64(lo, hi));
        y->bsums[j / 16] = (int16_t)(_mm_cvtsi128_si32(s16) - 2048);
        y->bsums[j / 16 + 1] =
            (int16_t)(_mm_cvtsi128_si32(_mm_unpackhi_epi64(s16, s16)) - 2048);
    }
    y->d = 1.0f / iscale;
}

/* x rounded to fp16 (round to nearest even, NaN quietened, as
 * bn_fp32_to_fp16) and back. */
static __attribute__((target("avx2,f16c"))) void round_f16_avx2(
    const float *x, int64_t n, float *h)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(h + i,
                         _mm256_cvtph_ps(_mm256_cvtps_ph(
                             _mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++)
        h[i] = h2f(bn_fp32_to_fp16(x[i]));
}
#endif

static int use_avx2(void);

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
#ifdef BN_HAVE_AVX2_CODE
        if (use_avx2()) {
            round_f16_avx2(x, n_tokens * nc, h);
            break;
        }
#endif
        for (int64_t i = 0; i < n_tokens * nc; i++)
            h[i] = h2f(bn_fp32_to_fp16(x[i]));
        break;
    }
    case BN_TYPE_TQ2_0: {
        const int64_t nb = nc / QK_K;
        bn_q8k *y = act;
        void (*quantize)(const float *, bn_q8k *) = quantize_q8k_block;
#ifdef BN_HAVE_AVX2_CODE
        if (use_avx2())
            quantize = quantize_q8k_block_avx2;
#endif
        for (int64_t t = 0; t < n_tokens; t++)
            for (int64_t b = 0; b < nb; b++)
                quantize(x + t * nc + b * QK_K, y + t * nb + b);
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

/* F32 / F16 rows: 8 lanes of fused multiply-adds (lane k sums columns k,
 * k+8, ...), reduced ((0+4) + (2+6)) + ((1+5) + (3+7)), the tail of
 * ncols % 8 fused in order.  The lanes and their reduction are those of
 * llamafile's tinyBLAS on 256-bit vectors, which ggml's CPU backend uses
 * for these products (issue 19: the same bits as llama.cpp, not only the
 * same sum).  fmaf is one rounding, as the AVX2 kernel's vfmadd. */
static inline float dot_reduce8(const float acc[8])
{
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) +
           ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

static float dot_f32_portable(const float *w, const float *x, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(w[i + k], x[i + k], acc[k]);
    float s = dot_reduce8(acc);
    for (; i < n; i++)
        s = fmaf(w[i], x[i], s);
    return s;
}

static float dot_f16_portable(const uint16_t *w, const float *x, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] = fmaf(h2f(w[i + k]), x[i + k], acc[k]);
    float s = dot_reduce8(acc);
    for (; i < n; i++)
        s = fmaf(h2f(w[i]), x[i], s);
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

/* One token: ggml does not hand a single-column F32/F16 product to
 * tinyBLAS but to ggml_vec_dot_f32 / _f16, whose order differs: 4 x 8
 * lanes over 32 columns at a time, reduced (0+2, 1+3, 0+1, then low + high
 * half and pairwise), the tail's products rounded and added to the float
 * sum.  Following it keeps a one-token evaluation (every decode step)
 * bit-identical to llama.cpp's too.  The same holds for any number of
 * tokens when ncols is not a multiple of 8: tinyBLAS declines those. */
/* a * b rounded on its own, never fused into a following add (the
 * compiler fuses a*b + c where FMA is available unless told otherwise):
 * ggml_vec_dot_f32 adds its tail products that way. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
static inline float mul_rounded(float a, float b)
{
    float p = a * b;
    __asm__("" : "+x"(p));
    return p;
}
#else
static inline float mul_rounded(float a, float b)
{
    volatile float p = a * b;
    return p;
}
#endif

static inline float vdot_reduce(float acc[4][8])
{
    float a[8];
    for (int l = 0; l < 8; l++)
        a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

#define BN_VDOT_PORTABLE(sfx, T, CONV)                                        \
    static float vdot_##sfx##_portable(const T *w, const float *x, int64_t n) \
    {                                                                         \
        float acc[4][8] = {{0}};                                              \
        const int64_t np = n & ~(int64_t)31;                                  \
        for (int64_t i = 0; i < np; i += 32)                                  \
            for (int r = 0; r < 4; r++)                                       \
                for (int l = 0; l < 8; l++)                                   \
                    acc[r][l] = fmaf(CONV(w[i + 8 * r + l]),                  \
                                     x[i + 8 * r + l], acc[r][l]);            \
        float s = vdot_reduce(acc);                                           \
        for (int64_t i = np; i < n; i++)                                      \
            s += mul_rounded(CONV(w[i]), x[i]);                               \
        return s;                                                             \
    }
#define BN_AS_FLOAT(v) (v)
BN_VDOT_PORTABLE(f32, float, BN_AS_FLOAT)
BN_VDOT_PORTABLE(f16, uint16_t, h2f)

static int rows_vdot_portable(const bn_weight *w, const uint8_t *row,
                              int64_t nr, const void *act, int64_t t0, int nt,
                              int pf, float *out)
{
    (void)nr;
    (void)pf;
    const int64_t nc = w->ncols;
    for (int t = 0; t < nt; t++) {
        const float *x = (const float *)act + (t0 + t) * nc;
        out[t] = w->type == BN_TYPE_F32
                     ? vdot_f32_portable((const float *)row, x, nc)
                     : vdot_f16_portable((const uint16_t *)row, x, nc);
    }
    return 1;
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

/* Most rows a rows function handles per call. */
#define ROWS_MAX 8

/* Rows functions: compute out[k * TILE + t] = row k . token (t0 + t) for
 * k < the returned count (between 1 and nr; row k starts at
 * row + k * row_bytes) and t < nt.  `pf`: prefetch the weights that follow
 * (set on the first pass over a block of rows, which reads them from
 * memory).  Each (row, token) result is computed the same way whatever the
 * count, so it does not depend on how a row range is split. */
typedef int (*bn_rows_fn)(const bn_weight *w, const uint8_t *row, int64_t nr,
                          const void *act, int64_t t0, int nt, int pf,
                          float *out);

static int rows_portable(const bn_weight *w, const uint8_t *row, int64_t nr,
                         const void *act, int64_t t0, int nt, int pf,
                         float *out)
{
    (void)nr;
    (void)pf;
    group_portable(w, row, act, t0, nt, out);
    return 1;
}

/* y[t * nr + i] = out[i * TILE + t]: a rows function's results into the
 * token-major output.  One token (every generation step) is its own loop,
 * a stride-TILE copy, instead of the general pair of loops, whose
 * bookkeeping cost as much as the stores.  A whole group of four tokens is
 * a transpose: four rows' results in four vectors become each token's four
 * in one store (a pair of rows, each token's two in one), a quarter of the
 * stores; scalar, the stores were most of a 4-token product's time
 * outside the rows functions. */
static inline void scatter(float *y, int64_t nr, const float *out, int k,
                           int nt)
{
    if (nt == 1) {
        for (int i = 0; i < k; i++)
            y[i] = out[i * TILE];
        return;
    }
#if defined(BN_HAVE_AVX2_CODE) && defined(__SSE2__) && TILE == 4
    if (nt == 4) {
        int i = 0;
        for (; i + 4 <= k; i += 4) {
            __m128 r0 = _mm_loadu_ps(out + (i + 0) * TILE);
            __m128 r1 = _mm_loadu_ps(out + (i + 1) * TILE);
            __m128 r2 = _mm_loadu_ps(out + (i + 2) * TILE);
            __m128 r3 = _mm_loadu_ps(out + (i + 3) * TILE);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3); /* r_t: token t's rows i..i+3 */
            _mm_storeu_ps(y + i, r0);
            _mm_storeu_ps(y + nr + i, r1);
            _mm_storeu_ps(y + 2 * nr + i, r2);
            _mm_storeu_ps(y + 3 * nr + i, r3);
        }
        if (i + 2 <= k) {
            const __m128 r0 = _mm_loadu_ps(out + (i + 0) * TILE);
            const __m128 r1 = _mm_loadu_ps(out + (i + 1) * TILE);
            const __m128 lo = _mm_unpacklo_ps(r0, r1); /* tokens 0, 1 */
            const __m128 hi = _mm_unpackhi_ps(r0, r1); /* tokens 2, 3 */
            _mm_storel_pi((__m64 *)(y + i), lo);
            _mm_storeh_pi((__m64 *)(y + nr + i), lo);
            _mm_storel_pi((__m64 *)(y + 2 * nr + i), hi);
            _mm_storeh_pi((__m64 *)(y + 3 * nr + i), hi);
            i += 2;
        }
        for (; i < k; i++)
            for (int t = 0; t < 4; t++)
                y[t * nr + i] = out[i * TILE + t];
        return;
    }
#endif
    for (int t = 0; t < nt; t++)
        for (int i = 0; i < k; i++)
            y[t * nr + i] = out[i * TILE + t];
}

/* Rows [r0, r1) for every token.  Rows go in blocks of about 256 KiB of
 * weights; within a block, each group of TILE tokens runs over every row.
 * So weights come from memory once per call, a rows function unpacks a
 * weight row once for all its tokens, and the group's activations are
 * reused across the rows of a block from L1 (int8 ones) or L2. */
static void matmul_driver(const bn_weight *w, const void *act,
                          int64_t n_tokens, float *y, int64_t r0, int64_t r1,
                          bn_rows_fn fn)
{
    const int64_t nr = w->nrows;
    const uint8_t *data = w->data;
    int64_t rb = w->row_bytes ? (int64_t)((size_t)256 * 1024 / w->row_bytes)
                              : 64;
    rb = rb < 2 ? 2 : rb > 64 ? 64 : rb;
    if (rb >= 24) /* whole calls of 8, 4 or 3 rows */
        rb -= rb % 24;
    for (int64_t rs = r0; rs < r1; rs += rb) {
        const int64_t re = rs + rb < r1 ? rs + rb : r1;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += TILE) {
            const int nt = (int)(n_tokens - t0 < TILE ? n_tokens - t0 : TILE);
            for (int64_t r = rs; r < re;) {
                float out[ROWS_MAX * TILE];
                const int k = fn(w, data + (size_t)r * w->row_bytes, re - r,
                                 act, t0, nt, t0 == 0, out);
                scatter(y + t0 * nr + r, nr, out, k, nt);
                r += k;
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * AVX2 products
 * ---------------------------------------------------------------------- */

/* -DBN_NO_SIMD builds the portable path only. */
#ifdef BN_HAVE_AVX2_CODE

BN_AVX2_INLINE int32_t hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
                              _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* ggml's hsum_float_8 of four vectors at once, bit-identical: lane t of
 * the result is ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)) of the t-th
 * argument. */
BN_AVX2_INLINE __m128 hsum4_ggml(__m256 a, __m256 b, __m256 c, __m256 d)
{
    /* [a_lo + a_hi | b_lo + b_hi], [c.. | d..] */
    const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                                    _mm256_permute2f128_ps(a, b, 0x31));
    const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20),
                                    _mm256_permute2f128_ps(c, d, 0x31));
    /* [a0+a2, c0+c2, a1+a3, c1+c3 | b.., d.., b.., d..] */
    const __m256 s = _mm256_add_ps(_mm256_unpacklo_ps(ab, cd),
                                   _mm256_unpackhi_ps(ab, cd));
    /* [a, c, a, c | b, d, b, d] */
    const __m256 u = _mm256_add_ps(s, _mm256_permute_ps(s, 0x4E));
    return _mm_unpacklo_ps(_mm256_castps256_ps128(u),
                           _mm256_extractf128_ps(u, 1));
}

/* v, opaque to the optimizer: keeps a chain of integer additions in the
 * order written.  (GCC otherwise reassociates it into a tree that holds
 * every product live at once, and spills.) */
BN_AVX2_INLINE __m256i opaque_epi16(__m256i v)
{
    __asm__("" : "+x"(v));
    return v;
}

/* --- TQ2_0 x Q8_K ---------------------------------------------------- */

/* One weight row against NT tokens (NT a constant after inlining): the
 * 2-bit codes of each 256-block are unpacked once to unsigned bytes 0..2
 * and multiplied (maddubs) with each token's int8 activations; 16-bit lanes
 * cannot overflow (8 products of at most 2*3*127 each, minus a sum of 16
 * activations).  The -1 offset: bsums subtracted lane by lane, as ggml. */
BN_AVX2_INLINE void tq2_tile_avx2(const uint8_t *wrow, int64_t nb,
                                  const bn_q8k *const *a, int NT,
                                  __m256 *acc_out)
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
        __m256i s[TILE];
        /* code vector j (bits 2*(j%4) of bytes 32*(j/4)..) times q[32j..],
         * one code vector live at a time, so everything stays in registers
         * (the 16-bit sums are exact: their order does not matter) */
BN_UNROLL8
        for (int j = 0; j < 8; j++) {
            const __m256i x =
                _mm256_loadu_si256((const __m256i *)(blk + 32 * (j / 4)));
            const __m256i c =
                _mm256_and_si256(_mm256_srli_epi16(x, 2 * (j % 4)), m3);
BN_UNROLL4
            for (int t = 0; t < NT; t++) {
                const __m256i p = _mm256_maddubs_epi16(
                    c, _mm256_loadu_si256((const __m256i *)(a[t][b].qs +
                                                            32 * j)));
                s[t] = opaque_epi16(j ? _mm256_add_epi16(s[t], p) : p);
            }
        }
BN_UNROLL4
        for (int t = 0; t < NT; t++) {
            const bn_q8k *y = a[t] + b;
            const __m256i si = _mm256_madd_epi16(
                _mm256_sub_epi16(
                    s[t], _mm256_loadu_si256((const __m256i *)y->bsums)),
                ones);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(si),
                                     _mm256_set1_ps(y->d * dw), acc[t]);
        }
    }
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        acc_out[t] = acc[t];
}

/* Up to ROWS_MAX rows against NT tokens.  The accumulators of all
 * (row, token) pairs are reduced four at a time (hsum4_ggml); each pair's
 * result is bit-identical to ggml_vec_dot_tq2_0_q8_K's, which sums its
 * accumulator the same way (hsum_float_8). */
BN_AVX2_INLINE void tq2_reduce(__m256 *acc, int R, int NT, float *out)
{
    const int n = R * NT;
    for (int k = n; k < n + 3; k++)
        acc[k] = _mm256_setzero_ps();
    for (int k = 0; k < n; k += 4) {
        float s[4];
        _mm_storeu_ps(s, hsum4_ggml(acc[k], acc[k + 1], acc[k + 2],
                                    acc[k + 3]));
        for (int j = 0; j < 4 && k + j < n; j++)
            out[(k + j) / NT * TILE + (k + j) % NT] = s[j];
    }
}

BN_AVX2_INLINE void tq2_rows_avx2(const uint8_t *row, size_t rbytes, int R,
                                  int64_t nb, const bn_q8k *const *a, int NT,
                                  float *out)
{
    __m256 acc[ROWS_MAX * TILE + 3];
    for (int r = 0; r < R; r++)
        tq2_tile_avx2(row + (size_t)r * rbytes, nb, a, NT, acc + r * NT);
    tq2_reduce(acc, R, NT, out);
}

#define BN_TQ2_ROWS(sfx, FN_ATTR)                                             \
    static FN_ATTR int rows_tq2_##sfx(const bn_weight *w, const uint8_t *row, \
                                      int64_t nr, const void *act,            \
                                      int64_t t0, int nt, int pf, float *out) \
    {                                                                         \
        (void)pf;                                                             \
        const int64_t nb = w->ncols / QK_K;                                   \
        const int R = nr < ROWS_MAX ? (int)nr : ROWS_MAX;                     \
        const bn_q8k *a[TILE];                                                \
        for (int t = 0; t < nt; t++)                                          \
            a[t] = (const bn_q8k *)act + (t0 + t) * nb;                       \
        switch (nt) { /* one inlined copy per group size */                   \
        case 1: tq2_rows_##sfx(row, w->row_bytes, R, nb, a, 1, out); break;   \
        case 2: tq2_rows_##sfx(row, w->row_bytes, R, nb, a, 2, out); break;   \
        case 3: tq2_rows_##sfx(row, w->row_bytes, R, nb, a, 3, out); break;   \
        default: tq2_rows_##sfx(row, w->row_bytes, R, nb, a, 4, out); break;  \
        }                                                                     \
        return R;                                                             \
    }

BN_TQ2_ROWS(avx2, BN_AVX2)

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

static BN_AVX2 int rows_i2s_avx2(const bn_weight *w, const uint8_t *row,
                                 int64_t nr, const void *act, int64_t t0,
                                 int nt, int pf, float *out)
{
    (void)pf;
    const int64_t nblk = w->ncols / I2S_BLOCK;
    const int R = nr < ROWS_MAX ? (int)nr : ROWS_MAX;
    const int8_t *a[TILE];
    const bn_i8hdr *h[TILE];
    i2s_tokens(w, act, t0, nt, a, h);
    for (int r = 0; r < R; r++) {
        const uint8_t *wr = row + (size_t)r * w->row_bytes;
        int32_t dot[TILE];
        switch (nt) {
        case 1: i2s_tile_avx2(wr, nblk, a, 1, dot); break;
        case 2: i2s_tile_avx2(wr, nblk, a, 2, dot); break;
        case 3: i2s_tile_avx2(wr, nblk, a, 3, dot); break;
        default: i2s_tile_avx2(wr, nblk, a, 4, dot); break;
        }
        for (int t = 0; t < nt; t++)
            out[r * TILE + t] = i2s_finish(dot[t], h[t], w->scale);
    }
    return R;
}

/* --- F32 / F16 --------------------------------------------------------- */

BN_AVX2_INLINE __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
BN_AVX2_INLINE __m256 load8_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
BN_AVX2_INLINE float scalar_f32(const float *p) { return *p; }
BN_AVX2_INLINE float scalar_f16(const uint16_t *p) { return _cvtsh_ss(*p); }

/* R rows x NT tokens (constants after inlining): one 8-lane accumulator
 * per (row, token) pair, every weight vector converted once and used for
 * all NT tokens, every activation vector loaded once and used for all R
 * rows.  Per pair the order of operations is the same for any R and NT:
 * lane j sums columns j, j+8, ... with FMAs, the lanes are reduced as in
 * hsum4_ggml (tinyBLAS's order, as dot_reduce8), and a tail of ncols % 8
 * columns is fused in order; so results
 * depend neither on how rows are grouped nor on how many tokens go
 * together.  R = R1, 4, 3, 3 rows for NT = 1..4 tokens keep accumulators,
 * weight vectors and one activation vector in the 16 ymm registers (more
 * rows spill, fewer leave the FMAs waiting on loads).  PFS: elements per
 * 64-byte line of weights; PF1: prefetch for one token too. */
#define BN_FLOAT_BLOCK(sfx, T, PFS, R1, PF1)                                  \
    BN_AVX2_INLINE void fblock_##sfx(const uint8_t *row, size_t rbytes,       \
                                     const float *x, int64_t n, int R,        \
                                     int NT, int pf, float *out)              \
    {                                                                         \
        __m256 acc[ROWS_MAX][TILE];                                           \
        BN_UNROLL8 for (int r = 0; r < R; r++)                                \
            BN_UNROLL4 for (int t = 0; t < NT; t++)                           \
                acc[r][t] = _mm256_setzero_ps();                              \
        int64_t i = 0;                                                        \
        for (; i + 8 <= n; i += 8) {                                          \
            if (pf && (i & (PFS - 1)) == 0) {                                 \
                BN_UNROLL8 for (int r = 0; r < R; r++)                        \
                    _mm_prefetch(bn_pf_addr(row, rbytes, R, r,                \
                                            (size_t)i * sizeof(T)),           \
                                 BN_PF_HINT);                                 \
            }                                                                 \
            __m256 wv[ROWS_MAX];                                              \
            BN_UNROLL8 for (int r = 0; r < R; r++)                            \
                wv[r] = load8_##sfx((const T *)(row + r * rbytes) + i);       \
            BN_UNROLL4 for (int t = 0; t < NT; t++) {                         \
                const __m256 xv = _mm256_loadu_ps(x + t * n + i);             \
                BN_UNROLL8 for (int r = 0; r < R; r++)                        \
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);        \
            }                                                                 \
        }                                                                     \
        const __m256 z = _mm256_setzero_ps();                                 \
        BN_UNROLL8 for (int r = 0; r < R; r++) {                              \
            float s[4];                                                       \
            _mm_storeu_ps(s, hsum4_ggml(acc[r][0], NT > 1 ? acc[r][1] : z,    \
                                        NT > 2 ? acc[r][2] : z,               \
                                        NT > 3 ? acc[r][3] : z));             \
            const T *wr = (const T *)(row + r * rbytes);                      \
            for (int t = 0; t < NT; t++) {                                    \
                float v = s[t];                                               \
                for (int64_t k = i; k < n; k++)                               \
                    v = fmaf(scalar_##sfx(wr + k), x[t * n + k], v);          \
                out[r * TILE + t] = v;                                        \
            }                                                                 \
        }                                                                     \
    }                                                                         \
    static BN_AVX2 int rows_##sfx##_avx2(                                     \
        const bn_weight *w, const uint8_t *row, int64_t nr, const void *act,  \
        int64_t t0, int nt, int pf, float *out)                               \
    {                                                                         \
        const int64_t nc = w->ncols;                                          \
        const size_t rb = w->row_bytes;                                       \
        const float *x = (const float *)act + t0 * nc;                        \
        int R = nt == 1 ? R1 : nt == 2 ? 4 : 3;                                \
        if (nr < R)                                                           \
            R = (int)nr;                                                      \
        if (nt == 1 && !PF1)                                                  \
            pf = 0;                                                           \
        switch (nt * 16 + R) { /* one inlined copy per shape */               \
        BN_FB_CASE(sfx, 1, 1) BN_FB_CASE(sfx, 1, 2) BN_FB_CASE(sfx, 1, 3)     \
        BN_FB_CASE(sfx, 1, 4) BN_FB_CASE(sfx, 1, 5) BN_FB_CASE(sfx, 1, 6)     \
        BN_FB_CASE(sfx, 1, 7) BN_FB_CASE(sfx, 1, 8)                           \
        BN_FB_CASE(sfx, 2, 1) BN_FB_CASE(sfx, 2, 2) BN_FB_CASE(sfx, 2, 3)     \
        BN_FB_CASE(sfx, 2, 4)                                                 \
        BN_FB_CASE(sfx, 3, 1) BN_FB_CASE(sfx, 3, 2) BN_FB_CASE(sfx, 3, 3)     \
        BN_FB_CASE(sfx, 4, 1) BN_FB_CASE(sfx, 4, 2) BN_FB_CASE(sfx, 4, 3)     \
        default: break;                                                       \
        }                                                                     \
        return R;                                                             \
    }

#define BN_FB_CASE(sfx, NT, R)                                                \
    case NT * 16 + R:                                                         \
        fblock_##sfx(row, rb, x, nc, R, NT, pf, out);                         \
        break;

/* One token, ggml_vec_dot_*'s order (rows_vdot_portable's): 4 vector
 * accumulators, the same reduction.  (The reduction's order as written:
 * the compiler may not reassociate float adds.) */
#define BN_VDOT_AVX2(sfx, T)                                                  \
    BN_AVX2_INLINE float vdot_##sfx##_avx2(const T *w, const float *x,        \
                                           int64_t n)                         \
    {                                                                         \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;           \
        const int64_t np = n & ~(int64_t)31;                                  \
        for (int64_t i = 0; i < np; i += 32) {                                \
            a0 = _mm256_fmadd_ps(load8_##sfx(w + i), _mm256_loadu_ps(x + i),  \
                                 a0);                                         \
            a1 = _mm256_fmadd_ps(load8_##sfx(w + i + 8),                      \
                                 _mm256_loadu_ps(x + i + 8), a1);             \
            a2 = _mm256_fmadd_ps(load8_##sfx(w + i + 16),                     \
                                 _mm256_loadu_ps(x + i + 16), a2);            \
            a3 = _mm256_fmadd_ps(load8_##sfx(w + i + 24),                     \
                                 _mm256_loadu_ps(x + i + 24), a3);            \
        }                                                                     \
        const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a2),                 \
                                       _mm256_add_ps(a1, a3));                \
        const __m128 t = _mm_add_ps(_mm256_castps256_ps128(a),                \
                                    _mm256_extractf128_ps(a, 1));             \
        const __m128 h = _mm_hadd_ps(t, t);                                   \
        float s = _mm_cvtss_f32(_mm_hadd_ps(h, h));                           \
        for (int64_t i = np; i < n; i++)                                      \
            s += mul_rounded(scalar_##sfx(w + i), x[i]);                      \
        return s;                                                             \
    }
BN_VDOT_AVX2(f32, float)
BN_VDOT_AVX2(f16, uint16_t)

/* Two rows of vdot_*_avx2 side by side: each row keeps its own four
 * accumulators and exactly vdot's order (so its bits), but the eight
 * independent FMA chains hide the FMA latency that bounds one row's four
 * (measured on Zen 4: 32000 x 512 F16, one token, one thread, 1.45 ms one
 * row at a time), and both rows' weights stream at once. */
#define BN_VDOT2_AVX2(sfx, T)                                                 \
    BN_AVX2_INLINE void vdot2_##sfx##_avx2(const uint8_t *row, size_t rbytes, \
                                           const float *x, int64_t n, int pf, \
                                           float *o0, float *o1)              \
    {                                                                         \
        const T *w0 = (const T *)row, *w1 = (const T *)(row + rbytes);        \
        __m256 a[2][4];                                                       \
        for (int r = 0; r < 2; r++)                                           \
            for (int k = 0; k < 4; k++)                                       \
                a[r][k] = _mm256_setzero_ps();                                \
        const int64_t np = n & ~(int64_t)31;                                  \
        for (int64_t i = 0; i < np; i += 32) {                                \
            if (pf) /* each row's next 32 weights: one line, or F32's two */  \
                for (size_t o = 0; o < 32 * sizeof(T); o += 64)               \
                    for (int k = 0; k < 2; k++)                               \
                        _mm_prefetch(bn_pf_addr(row, rbytes, 2, k,            \
                                                (size_t)i * sizeof(T) + o),   \
                                     BN_PF_HINT);                             \
            BN_UNROLL4 for (int k = 0; k < 4; k++) {                          \
                const __m256 xv = _mm256_loadu_ps(x + i + 8 * k);             \
                a[0][k] = _mm256_fmadd_ps(load8_##sfx(w0 + i + 8 * k), xv,    \
                                          a[0][k]);                           \
                a[1][k] = _mm256_fmadd_ps(load8_##sfx(w1 + i + 8 * k), xv,    \
                                          a[1][k]);                           \
            }                                                                 \
        }                                                                     \
        for (int r = 0; r < 2; r++) {                                         \
            const T *w = r ? w1 : w0;                                         \
            const __m256 s4 = _mm256_add_ps(_mm256_add_ps(a[r][0], a[r][2]),  \
                                            _mm256_add_ps(a[r][1], a[r][3])); \
            const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s4),           \
                                        _mm256_extractf128_ps(s4, 1));        \
            const __m128 h = _mm_hadd_ps(t, t);                               \
            float s = _mm_cvtss_f32(_mm_hadd_ps(h, h));                       \
            for (int64_t i = np; i < n; i++)                                  \
                s += mul_rounded(scalar_##sfx(w + i), x[i]);                  \
            *(r ? o1 : o0) = s;                                               \
        }                                                                     \
    }
BN_VDOT2_AVX2(f32, float)
BN_VDOT2_AVX2(f16, uint16_t)

static BN_AVX2 int rows_vdot_avx2(const bn_weight *w, const uint8_t *row,
                                  int64_t nr, const void *act, int64_t t0,
                                  int nt, int pf, float *out)
{
    const int64_t nc = w->ncols;
    const size_t rb = w->row_bytes;
    if (nr >= 2) {
        for (int t = 0; t < nt; t++) {
            const float *x = (const float *)act + (t0 + t) * nc;
            const int p = pf && t == 0;
            if (w->type == BN_TYPE_F32)
                vdot2_f32_avx2(row, rb, x, nc, p, out + t, out + TILE + t);
            else
                vdot2_f16_avx2(row, rb, x, nc, p, out + t, out + TILE + t);
        }
        return 2;
    }
    for (int t = 0; t < nt; t++) {
        const float *x = (const float *)act + (t0 + t) * nc;
        out[t] = w->type == BN_TYPE_F32
                     ? vdot_f32_avx2((const float *)row, x, nc)
                     : vdot_f16_avx2((const uint16_t *)row, x, nc);
    }
    return 1;
}

/* One token: F16 goes 8 rows at a time with prefetching; F32 one row at a
 * time without, which streams twice the bytes per FMA and is faster left
 * to the hardware prefetchers (measured on Zen 4, one and two threads). */
BN_FLOAT_BLOCK(f32, float, 16, 1, 0)
BN_FLOAT_BLOCK(f16, uint16_t, 32, 8, 1)

#endif /* BN_HAVE_AVX2_CODE */

#ifdef BN_HAVE_AVX512_CODE
/* kernels_avx512.h, once without VNNI and once with it */
#ifdef BN_SIMDE_BUILD
#define BN_X512_ATTRS(sfx)
#define BN_X512_INLINE_ATTRS(sfx) static inline
#else
#define BN_X512_ATTRS(sfx) __attribute__((target(BN_X512_TARGET_##sfx)))
#define BN_X512_INLINE_ATTRS(sfx)                                            \
    static inline __attribute__((always_inline,                               \
                                 target(BN_X512_TARGET_##sfx)))
#endif
#define BN_X512_VNNI 0
#define BN_X512 BN_X512_ATTRS(avx512)
#define BN_X512_INLINE BN_X512_INLINE_ATTRS(avx512)
#define BN_X512_NAME(f) f##_avx512
#include "kernels_avx512.h"
#undef BN_X512_VNNI
#undef BN_X512
#undef BN_X512_INLINE
#undef BN_X512_NAME
#define BN_X512_VNNI 1
#define BN_X512 BN_X512_ATTRS(vnni)
#define BN_X512_INLINE BN_X512_INLINE_ATTRS(vnni)
#define BN_X512_NAME(f) f##_vnni
#include "kernels_avx512.h"
#endif

/* ------------------------------------------------------------------------
 * Dispatch
 * ---------------------------------------------------------------------- */

/* The only mutable global: set by bn_kernels_force_portable (tests):
 * 1 portable, 2 AVX2 at most, 3 AVX-512 without VNNI at most. */
static int g_force_portable;

static int use_avx2(void)
{
#ifdef BN_HAVE_AVX2_CODE
    return __atomic_load_n(&g_force_portable, __ATOMIC_RELAXED) != 1 &&
           bn_cpu_has_avx2();
#else
    return 0;
#endif
}

#ifdef BN_HAVE_AVX512_CODE
#ifdef BN_SIMDE_BUILD
/* the test build: the level the test asks for (bn_kernels_simde_level) */
static int g_simde_level;

__attribute__((visibility("default"))) void bn_kernels_simde_level(int level)
{
    __atomic_store_n(&g_simde_level, level, __ATOMIC_RELAXED);
}

static int cpu_x512_level(void)
{
    return __atomic_load_n(&g_simde_level, __ATOMIC_RELAXED);
}
#else
#include <cpuid.h>

/* 2: AVX-512 F, BW, VL, DQ and VNNI; 1: the same without VNNI; 0: less,
 * or an OS that does not save the AVX-512 state (bn_cpu_has_avx512). */
static int cpu_x512_level(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        unsigned a, b, c, d;
        v = 0;
        if (bn_cpu_has_avx2() && bn_cpu_has_avx512() &&
            __get_cpuid_count(7, 0, &a, &b, &c, &d) && ((b >> 17) & 1) &&
            ((b >> 30) & 1) && ((b >> 31) & 1))
            v = (c >> 11) & 1 ? 2 : 1;
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif
#endif

/* 0, 1 (AVX-512) or 2 (AVX-512 VNNI): which AVX-512 kernels run. */
static int use_x512(void)
{
#ifdef BN_HAVE_AVX512_CODE
    const int force = __atomic_load_n(&g_force_portable, __ATOMIC_RELAXED);
    const int level = cpu_x512_level();
    if (force == 3) /* so a VNNI CPU runs the VNNI-less kernels too */
        return level < 1 ? level : 1;
    return force ? 0 : level;
#else
    return 0;
#endif
}

/* The weight types with an AVX-512 kernel (the others would run the AVX2
 * ones); activation preparation stays AVX2, hence ", avx2". */
#define BN_X512_TYPES "f32, f16, tq2_0, i2_s"

#ifdef BN_HAVE_AVX512_CODE
/* The AVX-512 rows function for a type; `one`: ggml_vec_dot's order (see
 * rows_vdot_portable).  The float kernels have no VNNI form.  (Named
 * *_avx512: it runs only where the CPU has AVX-512, tools/error_sites.py.) */
static bn_rows_fn rows_for_avx512(uint32_t type, int one, int vnni)
{
    if (one)
        return rows_vdot_avx512;
    switch (type) {
    case BN_TYPE_F32: return rows_f32_avx512;
    case BN_TYPE_F16: return rows_f16_avx512;
    case BN_TYPE_TQ2_0: return vnni ? rows_tq2_vnni : rows_tq2_avx512;
    default: return vnni ? rows_i2s_vnni : rows_i2s_avx512;
    }
}
#endif

const char *bn_kernels_impl(void)
{
    switch (use_x512()) {
    case 2: return "avx512-vnni (" BN_X512_TYPES "), avx2";
    case 1: return "avx512 (" BN_X512_TYPES "), avx2";
    default: return use_avx2() ? "avx2" : "portable";
    }
}

void bn_kernels_force_portable(int on)
{
    __atomic_store_n(&g_force_portable,
                     on == 2 || on == 3 ? on : on ? 1 : 0, __ATOMIC_RELAXED);
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
    /* ggml_vec_dot_* rather than tinyBLAS: see rows_vdot_portable */
    const int one = (n_tokens == 1 || w->ncols % 8 != 0) &&
                    (w->type == BN_TYPE_F32 || w->type == BN_TYPE_F16);
    bn_rows_fn fn = one ? rows_vdot_portable : rows_portable;
#ifdef BN_HAVE_AVX2_CODE
    if (use_avx2() && one)
        fn = rows_vdot_avx2;
    else if (use_avx2()) {
        switch (w->type) {
        case BN_TYPE_F32: fn = rows_f32_avx2; break;
        case BN_TYPE_F16: fn = rows_f16_avx2; break;
        case BN_TYPE_TQ2_0: fn = rows_tq2_avx2; break;
        default: fn = rows_i2s_avx2; break;
        }
    }
#endif
#ifdef BN_HAVE_AVX512_CODE
    const int x512 = use_x512();
    if (x512)
        fn = rows_for_avx512(w->type, one, x512 == 2);
#endif
    matmul_driver(w, act, n_tokens, y, r0, r1, fn);
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
