/* ggml_ops.c — float operations in ggml's rounding order.  See ggml_ops.h.
 *
 * Every body below is written once as an always-inline function and
 * compiled twice: plainly (fmaf from libm, exact but a call) and for
 * AVX2+FMA (fmaf becomes one instruction, loops may vectorize).  fmaf is a
 * single rounding either way, so both builds give the same bits; which
 * runs is a matter of speed only.  SwiGLU's exp has branches that keep its
 * loop scalar, so its fast build is written with intrinsics instead
 * (swiglu_avx2, ggml's own vector form), checked bit for bit against the
 * portable one by tests/native/test_ggml_ops.py. */
#include "ggml_ops.h"

#include <math.h>
#include <string.h>

#include "bn_cpu.h"

#if !defined(BN_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define BN_OPS_FMA_CODE 1
#define BN_OPS_FMA __attribute__((target("avx2,fma")))
#endif
#define BN_OPS_INLINE static inline __attribute__((always_inline))
/* dot_body's four accumulators stay in registers only if its loop over
 * them is unrolled: otherwise each multiply-add goes through memory */
#if defined(__clang__)
#define BN_OPS_UNROLL4 _Pragma("unroll 4")
#elif defined(__GNUC__)
#define BN_OPS_UNROLL4 _Pragma("GCC unroll 4")
#else
#define BN_OPS_UNROLL4
#endif

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ggml_v_expf, one lane: exp(x) = 2^n * (1 + p(b)), n = round(x / ln 2)
 * by the 1.5 * 2^23 shifter, b = x - n ln 2 in two parts, p a degree-5
 * polynomial; |n| > 126 scales in two steps so that 2^n cannot overflow
 * early, |n| > 192 saturates to 0 or inf.  The constants are the
 * published ones of that approximation (after ARM's optimized-routines
 * expf). */
BN_OPS_INLINE float expf_body(float x)
{
    const float shifter = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, shifter);
    const float n = z - shifter;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const uint32_t e = bits_of(z) << 23;
    const float k = float_of(e + bits_of(1.0f));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                              fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, 0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) /* also NaN, as the vector compare */
        return fmaf(j, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = float_of(g + 0x7f000000u);
    const float s2 = float_of(e - g);
    if (fabsf(n) > 192.0f)
        return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

/* hsum of 8 lanes as tinyBLAS and the softmax reduce them. */
BN_OPS_INLINE float hsum8(const float a[8])
{
    const float s0 = a[4] + a[0], s1 = a[5] + a[1];
    const float s2 = a[6] + a[2], s3 = a[7] + a[3];
    return (s0 + s2) + (s1 + s3);
}

BN_OPS_INLINE float dot_body(const float *x, const float *y, int64_t n)
{
    float acc[4][8] = {{0}};
    const int64_t np = n & ~(int64_t)31;
    for (int64_t i = 0; i < np; i += 32)
        BN_OPS_UNROLL4 for (int r = 0; r < 4; r++)
            for (int l = 0; l < 8; l++)
                acc[r][l] = fmaf(x[i + 8 * r + l], y[i + 8 * r + l], acc[r][l]);
    float a[8];
    for (int l = 0; l < 8; l++)
        a[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    const float t0 = a[0] + a[4], t1 = a[1] + a[5];
    const float t2 = a[2] + a[6], t3 = a[3] + a[7];
    float sum = (t0 + t1) + (t2 + t3);
    for (int64_t i = np; i < n; i++)
        sum = fmaf(x[i], y[i], sum);
    return sum;
}

BN_OPS_INLINE void scores_body(float *att, const float *q, const float *k,
                               int64_t stride, int64_t n, int64_t hd,
                               float scale)
{
    for (int64_t j = 0; j < n; j++)
        att[j] = dot_body(q, k + j * stride, hd) * scale;
}

/* m outputs at a time in blocks of WS_BLOCK, 8 lane accumulators each.
 * Blocks of w outputs; a whole block has a constant width, so that -O2
 * vectorizes its loops across outputs (each lane still one output's
 * chain of fmaf, in j's order); the last, narrower block stays scalar. */
#define WS_BLOCK 64
BN_OPS_INLINE void wsum_block(float *out, const float *v, int64_t stride,
                              const float *p, int64_t n, int64_t w)
{
    float acc[8][WS_BLOCK];
    memset(acc, 0, sizeof acc);
    for (int64_t j = 0; j < n; j++) {
        const float pj = p[j];
        const float *vj = v + j * stride;
        float *a = acc[j & 7];
        for (int64_t e = 0; e < w; e++)
            a[e] = fmaf(vj[e], pj, a[e]);
    }
    for (int64_t e = 0; e < w; e++) {
        const float lanes[8] = {acc[0][e], acc[1][e], acc[2][e], acc[3][e],
                                acc[4][e], acc[5][e], acc[6][e], acc[7][e]};
        out[e] = hsum8(lanes);
    }
}

BN_OPS_INLINE void wsum_body(float *out, const float *v, int64_t stride,
                             const float *p, int64_t n, int64_t m)
{
    int64_t e0 = 0;
    for (; e0 + WS_BLOCK <= m; e0 += WS_BLOCK)
        wsum_block(out + e0, v + e0, stride, p, n, WS_BLOCK);
    if (e0 < m)
        wsum_block(out + e0, v + e0, stride, p, n, m - e0);
}

BN_OPS_INLINE void softmax_body(float *x, int64_t n)
{
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        max = max > x[i] ? max : x[i];
    double sum = 0.0;
    for (int64_t i0 = 0; i0 < n; i0 += 8) {
        float lanes[8] = {0}; /* the masked padding: exp(-inf) = 0 */
        for (int l = 0; l < 8 && i0 + l < n; l++)
            lanes[l] = x[i0 + l] = expf_body(x[i0 + l] - max);
        sum += (double)hsum8(lanes);
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

BN_OPS_INLINE void swiglu_body(float *y, const float *x, const float *g,
                               int64_t n)
{
    const int64_t nv = n & ~(int64_t)7;
    int64_t i = 0;
    for (; i < nv; i++)
        y[i] = x[i] / (1.0f + expf_body(0.0f - x[i])) * g[i];
    for (; i < n; i++) /* ggml_silu_f32 */
        y[i] = x[i] / (1.0f + expf(-x[i])) * g[i];
}

BN_OPS_INLINE void rope_body(float *x, int64_t n_heads, int64_t hd,
                             int32_t n_rot, const float *cs, int neox)
{
    const int32_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *xh = x + h * hd;
        for (int32_t i = 0; i < half; i++) {
            const float c = cs[i], s = cs[half + i];
            const int32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            const float x0 = xh[a], x1 = xh[b];
            xh[a] = fmaf(x0, c, -(x1 * s));
            xh[b] = fmaf(x0, s, x1 * c);
        }
    }
}

#ifdef BN_OPS_FMA_CODE
#include <immintrin.h>

/* expf_body on 8 lanes, instruction for instruction ggml_v_expf's AVX2
 * form (each lane's operations are expf_body's: the same fused
 * multiply-adds and rounding steps; the two wide-range cases are chosen
 * per lane by masks instead of branches). */
static inline __attribute__((always_inline, target("avx2,fma"))) __m256
expf_avx2(__m256 x)
{
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(
        n, _mm256_set1_ps(0x1.7f7d1cp-20f),
        _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(
        _mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256 an = _mm256_andnot_ps(_mm256_set1_ps(-0.f), n);
    const __m256 c = _mm256_cmp_ps(an, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b,
                                        _mm256_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b,
                                        _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    const __m256 normal = _mm256_fmadd_ps(j, k, k);
    if (!_mm256_movemask_ps(c))
        return normal;
    const __m256i g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(
        _mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 d = _mm256_cmp_ps(an, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 wide = _mm256_blendv_ps(
        _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1), _mm256_mul_ps(s1, s1),
        d);
    return _mm256_blendv_ps(normal, wide, c);
}

/* swiglu_body 8 lanes at a time (the scalar loop does not vectorize: its
 * exp has branches), the tail as swiglu_body's. */
BN_OPS_FMA static void swiglu_avx2(float *y, const float *x, const float *g,
                                   int64_t n)
{
    const int64_t nv = n & ~(int64_t)7;
    for (int64_t i = 0; i < nv; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        const __m256 e = expf_avx2(_mm256_sub_ps(_mm256_setzero_ps(), xv));
        _mm256_storeu_ps(
            y + i, _mm256_mul_ps(_mm256_div_ps(xv, _mm256_add_ps(
                                                       _mm256_set1_ps(1.0f), e)),
                                 _mm256_loadu_ps(g + i)));
    }
    for (int64_t i = nv; i < n; i++) /* ggml_silu_f32 */
        y[i] = x[i] / (1.0f + expf(-x[i])) * g[i];
}
#endif

/* The two builds of each, and the choice between them. */
#ifdef BN_OPS_FMA_CODE
#define BN_OPS_VARIANTS(name, ret, params, args)                              \
    static ret name##_portable params { return name##_body args; }           \
    BN_OPS_FMA static ret name##_fma params { return name##_body args; }     \
    static ret name##_dispatch params                                        \
    {                                                                         \
        return bn_cpu_has_avx2() ? name##_fma args : name##_portable args;    \
    }
#else
#define BN_OPS_VARIANTS(name, ret, params, args)                              \
    static ret name##_dispatch params { return name##_body args; }
#endif

BN_OPS_VARIANTS(scores, void,
                (float *att, const float *q, const float *k, int64_t stride,
                 int64_t n, int64_t hd, float scale),
                (att, q, k, stride, n, hd, scale))
BN_OPS_VARIANTS(wsum, void,
                (float *out, const float *v, int64_t stride, const float *p,
                 int64_t n, int64_t m),
                (out, v, stride, p, n, m))
BN_OPS_VARIANTS(softmax, void, (float *x, int64_t n), (x, n))
BN_OPS_VARIANTS(rope, void,
                (float *x, int64_t n_heads, int64_t hd, int32_t n_rot,
                 const float *cs, int neox),
                (x, n_heads, hd, n_rot, cs, neox))
/* swiglu's fast build is swiglu_avx2, not swiglu_body compiled for AVX2 */
static void swiglu_portable(float *y, const float *x, const float *g,
                            int64_t n)
{
    swiglu_body(y, x, g, n);
}

void bn_ggml_scores(float *att, const float *q, const float *k,
                    int64_t stride, int64_t n, int64_t hd, float scale)
{
    scores_dispatch(att, q, k, stride, n, hd, scale);
}

void bn_ggml_weighted_sum(float *out, const float *v, int64_t stride,
                          const float *p, int64_t n, int64_t m)
{
    wsum_dispatch(out, v, stride, p, n, m);
}

void bn_ggml_softmax(float *x, int64_t n)
{
    softmax_dispatch(x, n);
}

void bn_ggml_swiglu(float *y, const float *x, const float *g, int64_t n)
{
#ifdef BN_OPS_FMA_CODE
    if (bn_cpu_has_avx2()) {
        swiglu_avx2(y, x, g, n);
        return;
    }
#endif
    swiglu_portable(y, x, g, n);
}

void bn_ggml_rope(float *x, int64_t n_heads, int64_t hd, int32_t n_rot,
                  const float *cs, int neox)
{
    rope_dispatch(x, n_heads, hd, n_rot, cs, neox);
}

float bn_ggml_expf(float x)
{
    return expf_body(x);
}
