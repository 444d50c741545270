/*
 * kernels_avx512.h — the AVX-512 matrix kernels, included by kernels.c only,
 * twice: with BN_X512_VNNI 0 (names *_avx512, target without VNNI) and 1
 * (names *_vnni, target with it), BN_X512 / BN_X512_INLINE set to match and
 * BN_X512_NAME(f) pasting the suffix.  (One body, so the VNNI-less form
 * never carries an instruction its CPU may lack.)  The F32 / F16 kernels,
 * which have no use for VNNI, are built in the first pass only and run at
 * both levels.
 *
 * Bits: each kernel gives its AVX2 twin's (row, token) results exactly.
 * Every 8-lane float accumulator of the AVX2 code is one 256-bit half of a
 * zmm (one row per half, or for one-token F32 / F16 two of a row's four
 * vdot accumulators), fed the same operations in the same order and
 * reduced in the same order; only exact integer sums are regrouped.
 *
 * One source, two builds: kernels.c includes it with <immintrin.h> and
 * BN_X512 / BN_X512_INLINE set to function-level target attributes (the
 * real build; dispatch runs it only where the CPU has the instructions),
 * and a test build (tests/native/test_kernels_avx512.py) includes it with
 * SIMDe's portable AVX-512 intrinsics and the attributes empty, so the very
 * same code is checked bit for bit on a CPU without AVX-512.  So it uses
 * only intrinsics SIMDe 0.7.4 implements (it has no _mm512_cvtepi32_ps nor
 * _mm512_cvtph_ps: see tq2_i32_to_ps and load8_f16).
 *
 * Uses kernels.c's definitions: bn_weight, bn_q8k, bn_i8hdr, QK_K,
 * TQ2_BLOCK_BYTES, I2S_BLOCK, I2S_HDR, TILE, ROWS_MAX, BN_PF_DIST,
 * BN_PF_HINT, bn_pf_addr, h2f, mul_rounded, i2s_tokens, i2s_finish.
 *
 * Functions are named *_avx512 (AVX-512 F/BW/VL/DQ) or *_vnni (also
 * AVX-512 VNNI): tools/error_sites.py leaves their lines out of the
 * coverage figure on a CPU without the flag.
 */

/* --- shared ------------------------------------------------------- */

/* lane k of a + its lane idx[k] (a the first operand, as in the AVX2 code) */
BN_X512_INLINE __m512 BN_X512_NAME(add_perm)(__m512 a, __m512i idx)
{
    return _mm512_add_ps(a, _mm512_permutexvar_ps(idx, a));
}

/* ggml's hsum_float_8 (and tinyBLAS's reduction, hsum4_ggml's) of each
 * 256-bit half of a: ((0+4)+(2+6))+((1+5)+(3+7)), both halves at once in
 * three permute-adds (in vector registers: a row's sum is short, and its
 * reduction through memory cost as much as its products for one token). */
BN_X512_INLINE void BN_X512_NAME(hsum8x2)(__m512 a, float *lo, float *hi)
{
    /* lanes 0..3: u_k = v_k + v_(k+4) */
    const __m512 u = BN_X512_NAME(add_perm)(
        a, _mm512_setr_epi32(4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9,
                             10, 11));
    /* lanes 0, 1: u0 + u2, u1 + u3 */
    const __m512 p = BN_X512_NAME(add_perm)(
        u, _mm512_setr_epi32(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15,
                             12, 13));
    /* lane 0: (u0 + u2) + (u1 + u3) */
    const __m512 r = BN_X512_NAME(add_perm)(
        p, _mm512_setr_epi32(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12,
                             15, 14));
    float v[16];
    _mm512_storeu_ps(v, r);
    *lo = v[0];
    *hi = v[8];
}

/* --- TQ2_0 x Q8_K ---------------------------------------------------- */

/* Two weight rows per 512-bit vector, one per 256-bit half: each half does
 * exactly what the 256-bit kernels do for its row (every integer
 * instruction used is lane-local within 128 bits, the float lanes are the 8
 * of ggml's AVX2 kernel), so each (row, token) result is bit-identical to
 * rows_tq2_avx2's and ggml_vec_dot_tq2_0_q8_K's, with half the
 * instructions. */

/* int32 -> float, exact for |v| < 2^22: 0x4B400000 is 1.5 * 2^23, whose
 * float unit in the last place is 1, so adding v to its bits adds v to its
 * value.  A block's sum is at most 256 * 2 * 127 in magnitude, so this gives
 * the same floats as vcvtdq2ps (both exact); SIMDe 0.7.4 lacks
 * _mm512_cvtepi32_ps. */
BN_X512_INLINE __m512 BN_X512_NAME(tq2_i32_to_ps)(__m512i v)
{
    return _mm512_sub_ps(
        _mm512_castsi512_ps(
            _mm512_add_epi32(v, _mm512_set1_epi32(0x4B400000))),
        _mm512_set1_ps(12582912.0f));
}

/* The fp16 scales of two blocks, lanes 0..7 b0's and 8..15 b1's, through
 * one vcvtph2ps (F16C): exact, so the floats of h2f and of the AVX2
 * kernels' _cvtsh_ss, at a fraction of h2f's integer work, which for one
 * token cost more than the block's products (measured on Zen 5: 6912 x
 * 2560, one token, 0.62x the AVX2 kernel's speed with h2f). */
BN_X512_INLINE __m512 BN_X512_NAME(tq2_scales)(const uint8_t *b0,
                                               const uint8_t *b1)
{
    uint16_t h0, h1;
    memcpy(&h0, b0 + 64, sizeof h0);
    memcpy(&h1, b1 + 64, sizeof h1);
    const __m128 d = _mm_cvtph_ps(
        _mm_cvtsi32_si128((int)((uint32_t)h0 | (uint32_t)h1 << 16)));
    return _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm512_castps128_ps512(d));
}

/* Rows w0 (low half) and w1 (high half; may be w0, its result dropped)
 * against NT tokens.  VNNI: vpdpbusd sums 4 code x q products straight
 * into 32-bit lanes, starting from minus the bsums (as rows_tq2_vnni's
 * 256-bit form did); otherwise maddubs into 16-bit lanes, minus the bsums,
 * madd to 32 bits (rows_tq2_avx2's order).  The integers are exact either
 * way, so the lanes are the same. */
BN_X512_INLINE void BN_X512_NAME(tq2_tile2)(const uint8_t *w0, const uint8_t *w1,
                                     int64_t nb, const bn_q8k *const *a,
                                     int NT, float *out0, float *out1)
{
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i ones = _mm512_set1_epi16(1);
    __m512 acc[TILE];
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        acc[t] = _mm512_setzero_ps();

    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *b0 = w0 + b * TQ2_BLOCK_BYTES;
        const uint8_t *b1 = w1 + b * TQ2_BLOCK_BYTES;
        const __m512 dw = BN_X512_NAME(tq2_scales)(b0, b1);
        /* Both rows' bytes BN_PF_DIST ahead: the hardware prefetchers alone
         * kept two interleaved row streams at a quarter of the AVX2 kernel's
         * pace once the weights came from memory (69120 x 2560, one token,
         * Zen 5: 8.2 ms against 2.2 ms), though in cache this kernel is the
         * faster one. */
        _mm_prefetch((const char *)b0 + BN_PF_DIST, BN_PF_HINT);
        _mm_prefetch((const char *)b1 + BN_PF_DIST, BN_PF_HINT);
        __m512i s[TILE];
#if BN_X512_VNNI
        /* The eight vpdpbusd of a block into one accumulator are a chain
         * of dependent instructions, bound by their latency: the odd j go
         * to a second one, added at the end (integer sums, so the lanes
         * are the same).  First for one or two tokens; with three or four
         * it gained 2-7% too (Xeon family 6 model 167, the 40 MB model's
         * layer shapes in L2, one thread, alternating with the one-chain
         * form in one process), though there the chains are four. */
        __m512i s2[TILE];
BN_UNROLL4
        for (int t = 0; t < NT; t++) {
            s[t] = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_madd_epi16(_mm512_broadcast_i64x4(_mm256_loadu_si256(
                                      (const __m256i *)a[t][b].bsums)),
                                  ones));
            s2[t] = _mm512_setzero_si512();
        }
#endif
BN_UNROLL8
        for (int j = 0; j < 8; j++) {
            const int o = 32 * (j / 4), sh = 2 * (j % 4);
            const __m512i x = _mm512_inserti64x4(
                _mm512_castsi256_si512(
                    _mm256_loadu_si256((const __m256i *)(b0 + o))),
                _mm256_loadu_si256((const __m256i *)(b1 + o)), 1);
            const __m512i c = _mm512_and_si512(_mm512_srli_epi16(x, sh), m3);
BN_UNROLL4
            for (int t = 0; t < NT; t++) {
                const __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    (const __m256i *)(a[t][b].qs + 32 * j)));
#if BN_X512_VNNI
                if (j & 1)
                    s2[t] = _mm512_dpbusd_epi32(s2[t], c, q);
                else
                    s[t] = _mm512_dpbusd_epi32(s[t], c, q);
#else
                const __m512i p = _mm512_maddubs_epi16(c, q);
                s[t] = j ? _mm512_add_epi16(s[t], p) : p;
#endif
            }
        }
BN_UNROLL4
        for (int t = 0; t < NT; t++) {
            const bn_q8k *y = a[t] + b;
#if BN_X512_VNNI
            const __m512i si = _mm512_add_epi32(s[t], s2[t]);
#else
            const __m512i si = _mm512_madd_epi16(
                _mm512_sub_epi16(s[t], _mm512_broadcast_i64x4(_mm256_loadu_si256(
                                           (const __m256i *)y->bsums))),
                ones);
#endif
            /* d * dw rounded once, as the 256-bit kernels' y->d * dw */
            acc[t] = _mm512_fmadd_ps(BN_X512_NAME(tq2_i32_to_ps)(si),
                                     _mm512_mul_ps(_mm512_set1_ps(y->d), dw),
                                     acc[t]);
        }
    }
BN_UNROLL4
    for (int t = 0; t < NT; t++)
        BN_X512_NAME(hsum8x2)(acc[t], out0 + t, out1 + t);
}

BN_X512_INLINE void BN_X512_NAME(tq2_rows)(const uint8_t *row, size_t rbytes, int R,
                                    int64_t nb, const bn_q8k *const *a,
                                    int NT, float *out)
{
    /* Both rows' results straight into out: with an odd R the last pair's
     * second (dropped) result goes to slot R < ROWS_MAX, which the caller
     * does not read.  (Copying it through a local made GCC emit a
     * vscatterdps per pair.) */
    for (int r = 0; r < R; r += 2) {
        const uint8_t *w0 = row + (size_t)r * rbytes;
        BN_X512_NAME(tq2_tile2)(w0, r + 1 < R ? w0 + rbytes : w0, nb, a, NT,
                         out + r * TILE, out + (r + 1) * TILE);
    }
}

static BN_X512 int BN_X512_NAME(rows_tq2)(const bn_weight *w,
                                          const uint8_t *row, int64_t nr,
                                          const void *act, int64_t t0, int nt,
                                          int pf, float *out)
{
    (void)pf;
    const int64_t nb = w->ncols / QK_K;
    const int R = nr < ROWS_MAX ? (int)nr : ROWS_MAX;
    const bn_q8k *a[TILE];
    for (int t = 0; t < nt; t++)
        a[t] = (const bn_q8k *)act + (t0 + t) * nb;
    const size_t rb = w->row_bytes;
    switch (nt) { /* one inlined copy per group size */
    case 1: BN_X512_NAME(tq2_rows)(row, rb, R, nb, a, 1, out); break;
    case 2: BN_X512_NAME(tq2_rows)(row, rb, R, nb, a, 2, out); break;
    case 3: BN_X512_NAME(tq2_rows)(row, rb, R, nb, a, 3, out); break;
    default: BN_X512_NAME(tq2_rows)(row, rb, R, nb, a, 4, out); break;
    }
    return R;
}

/* --- I2_S x int8 ------------------------------------------------------ */

/* One row per 512-bit vector: a 128-block's 32 code bytes go to both
 * halves, shifted per half (vpsrlvw) so that one vector holds the codes
 * that meet q[0..63] (bits 7:6 low, 5:4 high) and another those that meet
 * q[64..127] (bits 3:2, 1:0), and each token's q is two contiguous 64-byte
 * loads.  The row's sum is an integer, exact in any grouping, so it is
 * rows_i2s_avx2's int32 and, through i2s_finish, its float.  Without VNNI
 * 16-bit lanes take 8 blocks (8 * 2 * 2*3*128 < 2^15) before widening;
 * with it, vpdpbusd sums straight into 32-bit lanes. */
/* The 16 lanes' sum, in registers (exact: any order). */
BN_X512_INLINE int32_t BN_X512_NAME(hsum_epi32)(__m512i a)
{
    const __m256i v = _mm256_add_epi32(_mm512_castsi512_si256(a),
                                       _mm512_extracti64x4_epi64(a, 1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v),
                              _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

BN_X512_INLINE void BN_X512_NAME(i2s_tile)(const uint8_t *wrow, int64_t nblk,
                                           const int8_t *const *qv, int NT,
                                           int32_t *out)
{
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i sh01 = _mm512_inserti64x4(_mm512_set1_epi16(6),
                                            _mm256_set1_epi16(4), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(2),
                                            _mm256_set1_epi16(0), 1);
    /* VNNI: two accumulators per token, so that one token's chain of
     * dependent vpdpbusd is half as long (its latency, not the loads,
     * bounded the one-token product) */
    __m512i acc[TILE];
#if BN_X512_VNNI
    __m512i acc23[TILE];
#endif
BN_UNROLL4
    for (int t = 0; t < NT; t++) {
        acc[t] = _mm512_setzero_si512();
#if BN_X512_VNNI
        acc23[t] = _mm512_setzero_si512();
#endif
    }

    for (int64_t b0 = 0; b0 < nblk; b0 += 8) {
        const int64_t b1 = b0 + 8 < nblk ? b0 + 8 : nblk;
#if !BN_X512_VNNI
        const __m512i ones = _mm512_set1_epi16(1);
        __m512i s16[TILE];
BN_UNROLL4
        for (int t = 0; t < NT; t++)
            s16[t] = _mm512_setzero_si512();
#endif
        for (int64_t b = b0; b < b1; b++) {
            const __m512i x = _mm512_broadcast_i64x4(
                _mm256_loadu_si256((const __m256i *)(wrow + b * 32)));
            const __m512i c01 = _mm512_and_si512(_mm512_srlv_epi16(x, sh01), m3);
            const __m512i c23 = _mm512_and_si512(_mm512_srlv_epi16(x, sh23), m3);
BN_UNROLL4
            for (int t = 0; t < NT; t++) {
                const int8_t *q = qv[t] + b * I2S_BLOCK;
                const __m512i q01 = _mm512_loadu_si512((const void *)q);
                const __m512i q23 = _mm512_loadu_si512((const void *)(q + 64));
#if BN_X512_VNNI
                acc[t] = _mm512_dpbusd_epi32(acc[t], c01, q01);
                acc23[t] = _mm512_dpbusd_epi32(acc23[t], c23, q23);
#else
                s16[t] = _mm512_add_epi16(
                    s16[t], _mm512_add_epi16(_mm512_maddubs_epi16(c01, q01),
                                             _mm512_maddubs_epi16(c23, q23)));
#endif
            }
        }
#if !BN_X512_VNNI
BN_UNROLL4
        for (int t = 0; t < NT; t++)
            acc[t] = _mm512_add_epi32(acc[t], _mm512_madd_epi16(s16[t], ones));
#endif
    }
BN_UNROLL4
    for (int t = 0; t < NT; t++) {
#if BN_X512_VNNI
        acc[t] = _mm512_add_epi32(acc[t], acc23[t]);
#endif
        out[t] = BN_X512_NAME(hsum_epi32)(acc[t]);
    }
}

static BN_X512 int BN_X512_NAME(rows_i2s)(const bn_weight *w,
                                          const uint8_t *row, int64_t nr,
                                          const void *act, int64_t t0, int nt,
                                          int pf, float *out)
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
        switch (nt) { /* one inlined copy per group size */
        case 1: BN_X512_NAME(i2s_tile)(wr, nblk, a, 1, dot); break;
        case 2: BN_X512_NAME(i2s_tile)(wr, nblk, a, 2, dot); break;
        case 3: BN_X512_NAME(i2s_tile)(wr, nblk, a, 3, dot); break;
        default: BN_X512_NAME(i2s_tile)(wr, nblk, a, 4, dot); break;
        }
        for (int t = 0; t < nt; t++)
            out[r * TILE + t] = i2s_finish(dot[t], h[t], w->scale);
    }
    return R;
}

/* --- F32 / F16 --------------------------------------------------------- */

/* Float products use no VNNI instruction: built once, as *_avx512, and
 * run at both levels. */
#if !BN_X512_VNNI

/* Weights as floats.  fp16 through the 256-bit vcvtph2ps (F16C, part of
 * the target), per 8: SIMDe 0.7.4 has no _mm512_cvtph_ps, and every fp16
 * value is exactly a float (a NaN quietened the same way at any width), so
 * this gives the very floats the 512-bit form would, from one source that
 * the SIMDe test checks. */
BN_X512_INLINE __m256 BN_X512_NAME(load8_f32)(const float *p)
{
    return _mm256_loadu_ps(p);
}
BN_X512_INLINE __m256 BN_X512_NAME(load8_f16)(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
BN_X512_INLINE __m512 BN_X512_NAME(join)(__m256 lo, __m256 hi)
{
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
}
BN_X512_INLINE __m512 BN_X512_NAME(load16_f32)(const float *p)
{
    return _mm512_loadu_ps(p);
}
BN_X512_INLINE __m512 BN_X512_NAME(load16_f16)(const uint16_t *p)
{
    return BN_X512_NAME(join)(BN_X512_NAME(load8_f16)(p),
                              BN_X512_NAME(load8_f16)(p + 8));
}
BN_X512_INLINE float BN_X512_NAME(scalar_f32)(const float *p) { return *p; }
BN_X512_INLINE float BN_X512_NAME(scalar_f16)(const uint16_t *p)
{
    return h2f(*p);
}

/* Several tokens, tinyBLAS's order (fblock_*'s): two rows per 512-bit
 * vector, one per 256-bit half, each half the 8-lane accumulator that
 * fblock keeps for its (row, token) pair, fed the same FMAs in the same
 * order (the token's 8 activations broadcast to both halves), then the
 * same reduction and tail: so the bits of rows_*_avx2, for any grouping.
 * P pairs (rows 2p, 2p+1; an odd R's last pair repeats row R-1 and drops
 * the copy) x NT tokens, constants after inlining: at 4 x 4, 16
 * accumulators, 4 weight vectors and an activation vector fit the 32 zmm
 * registers.  Prefetching as fblock_* (PFS elements per 64-byte line). */
#define BN_X512_FBLOCK(sfx, T, PFS)                                           \
    BN_X512_INLINE void BN_X512_NAME(fblock_##sfx)(                           \
        const uint8_t *row, size_t rbytes, int R, const float *x, int64_t n,  \
        int P, int NT, int pf, float *out)                                    \
    {                                                                         \
        const T *w[ROWS_MAX];                                                 \
        BN_UNROLL8 for (int k = 0; k < 2 * P; k++)                            \
            w[k] = (const T *)(row + (size_t)(k < R ? k : R - 1) * rbytes);   \
        __m512 acc[ROWS_MAX / 2][TILE];                                       \
        BN_UNROLL4 for (int p = 0; p < P; p++)                                \
            BN_UNROLL4 for (int t = 0; t < NT; t++)                           \
                acc[p][t] = _mm512_setzero_ps();                              \
        int64_t i = 0;                                                        \
        for (; i + 8 <= n; i += 8) {                                          \
            if (pf && (i & (PFS - 1)) == 0) {                                 \
                BN_UNROLL8 for (int k = 0; k < 2 * P; k++) /* R's, or R+1 */  \
                    _mm_prefetch(bn_pf_addr(row, rbytes, 2 * P, k,            \
                                            (size_t)i * sizeof(T)),           \
                                 BN_PF_HINT);                                 \
            }                                                                 \
            __m512 wv[ROWS_MAX / 2];                                          \
            BN_UNROLL4 for (int p = 0; p < P; p++)                            \
                wv[p] = BN_X512_NAME(join)(                                   \
                    BN_X512_NAME(load8_##sfx)(w[2 * p] + i),                  \
                    BN_X512_NAME(load8_##sfx)(w[2 * p + 1] + i));             \
            BN_UNROLL4 for (int t = 0; t < NT; t++) {                         \
                const __m512 xv =                                             \
                    _mm512_broadcast_f32x8(_mm256_loadu_ps(x + t * n + i));   \
                BN_UNROLL4 for (int p = 0; p < P; p++)                        \
                    acc[p][t] = _mm512_fmadd_ps(wv[p], xv, acc[p][t]);        \
            }                                                                 \
        }                                                                     \
        BN_UNROLL4 for (int p = 0; p < P; p++)                                \
            BN_UNROLL4 for (int t = 0; t < NT; t++) {                         \
                float s[2];                                                   \
                BN_X512_NAME(hsum8x2)(acc[p][t], s, s + 1);                   \
                for (int h = 0; h < 2 && 2 * p + h < R; h++) {                \
                    float v = s[h];                                           \
                    for (int64_t k = i; k < n; k++)                           \
                        v = fmaf(BN_X512_NAME(scalar_##sfx)(w[2 * p + h] + k),\
                                 x[t * n + k], v);                            \
                    out[(2 * p + h) * TILE + t] = v;                          \
                }                                                             \
            }                                                                 \
    }
BN_X512_FBLOCK(f32, float, 16)
BN_X512_FBLOCK(f16, uint16_t, 32)

#define BN_X512_FB_CASE(sfx, NT, P)                                           \
    case NT * 16 + P:                                                         \
        BN_X512_NAME(fblock_##sfx)(row, rb, R, x, nc, P, NT, pf, out);        \
        break;

/* Rows per call: 8 (P = 4 pairs), except on a pass that reads the weights
 * from memory (pf) RPF: few streams suit the hardware prefetchers better
 * (AVX2 found the same, BN_FLOAT_BLOCK), and F32 streams twice F16's bytes
 * per FMA.  Measured on Zen 5 (one thread, 32000 x 512, best of runs, as
 * speed against the AVX2 kernels): 4 tokens F32 0.68x with 8 rows, 0.79x
 * with 4, 0.98x with 2; F16 0.93x with 2, 1.35x with 8.  On a Xeon
 * (family 6 model 167, from memory, bn_pf_addr's order) F16 gave 0.96x
 * with 8, 1.01x with 4 and 1.02x with 6, and on 2560 columns 0.97x, 1.07x
 * and 1.18x: so 6, which still keeps 12 accumulators' FMAs in flight. */
#define BN_X512_FLOAT_ROWS(sfx, RPF)                                          \
    static BN_X512 int BN_X512_NAME(rows_##sfx)(                              \
        const bn_weight *w, const uint8_t *row, int64_t nr, const void *act,  \
        int64_t t0, int nt, int pf, float *out)                               \
    {                                                                         \
        const int64_t nc = w->ncols;                                          \
        const size_t rb = w->row_bytes;                                       \
        const float *x = (const float *)act + t0 * nc;                        \
        int R = pf ? RPF : ROWS_MAX;                                          \
        if (nr < R)                                                           \
            R = (int)nr;                                                      \
        switch (nt * 16 + (R + 1) / 2) { /* one inlined copy per shape */     \
        BN_X512_FB_CASE(sfx, 1, 1) BN_X512_FB_CASE(sfx, 1, 2)                 \
        BN_X512_FB_CASE(sfx, 1, 3) BN_X512_FB_CASE(sfx, 1, 4)                 \
        BN_X512_FB_CASE(sfx, 2, 1) BN_X512_FB_CASE(sfx, 2, 2)                 \
        BN_X512_FB_CASE(sfx, 2, 3) BN_X512_FB_CASE(sfx, 2, 4)                 \
        BN_X512_FB_CASE(sfx, 3, 1) BN_X512_FB_CASE(sfx, 3, 2)                 \
        BN_X512_FB_CASE(sfx, 3, 3) BN_X512_FB_CASE(sfx, 3, 4)                 \
        BN_X512_FB_CASE(sfx, 4, 1) BN_X512_FB_CASE(sfx, 4, 2)                 \
        BN_X512_FB_CASE(sfx, 4, 3) BN_X512_FB_CASE(sfx, 4, 4)                 \
        default: break;                                                       \
        }                                                                     \
        return R;                                                             \
    }
BN_X512_FLOAT_ROWS(f32, 2)
BN_X512_FLOAT_ROWS(f16, 6)

/* One token, ggml_vec_dot's order (vdot_*_avx2's), R rows at a time: a
 * row's four 8-lane accumulators a0..a3 are two vectors, [a0 | a1] over
 * columns i..i+15 and [a2 | a3] over i+16..i+31, so every lane gets the
 * same FMAs in the same order; their sum is [a0+a2 | a1+a3], its halves'
 * sum vdot's (a0+a2)+(a1+a3), then vdot's reduction and tail.  Four rows
 * give the 8 independent FMA chains that two give the AVX2 form. */
BN_X512_INLINE float BN_X512_NAME(vdot_finish)(__m512 a, __m512 b)
{
    const __m512 s = _mm512_add_ps(a, b);
    const __m256 v = _mm256_add_ps(
        _mm512_castps512_ps256(s),
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    /* from here vdot_*_avx2's reduction, operation for operation */
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(v),
                                _mm256_extractf128_ps(v, 1));
    const __m128 h = _mm_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_hadd_ps(h, h));
}

#define BN_X512_VDOT(sfx, T)                                                  \
    BN_X512_INLINE void BN_X512_NAME(vdotn_##sfx)(                            \
        const uint8_t *row, size_t rbytes, int R, const float *x, int64_t n,  \
        int pf, float *out)                                                   \
    {                                                                         \
        const T *w[4];                                                        \
        __m512 a[4][2];                                                       \
        BN_UNROLL4 for (int r = 0; r < R; r++) {                              \
            w[r] = (const T *)(row + (size_t)r * rbytes);                     \
            a[r][0] = a[r][1] = _mm512_setzero_ps();                          \
        }                                                                     \
        const int64_t np = n & ~(int64_t)31;                                  \
        for (int64_t i = 0; i < np; i += 32) {                                \
            if (pf) /* each row's next 32 weights: one line, or F32's two */  \
                for (size_t o = 0; o < 32 * sizeof(T); o += 64)               \
                    BN_UNROLL4 for (int r = 0; r < R; r++)                    \
                        _mm_prefetch(bn_pf_addr(row, rbytes, R, r,            \
                                                (size_t)i * sizeof(T) + o),   \
                                     BN_PF_HINT);                             \
            const __m512 x0 = _mm512_loadu_ps(x + i);                         \
            const __m512 x1 = _mm512_loadu_ps(x + i + 16);                    \
            BN_UNROLL4 for (int r = 0; r < R; r++) {                          \
                a[r][0] = _mm512_fmadd_ps(BN_X512_NAME(load16_##sfx)(w[r] + i),\
                                          x0, a[r][0]);                       \
                a[r][1] = _mm512_fmadd_ps(                                    \
                    BN_X512_NAME(load16_##sfx)(w[r] + i + 16), x1, a[r][1]);  \
            }                                                                 \
        }                                                                     \
        BN_UNROLL4 for (int r = 0; r < R; r++) {                              \
            float s = BN_X512_NAME(vdot_finish)(a[r][0], a[r][1]);            \
            for (int64_t i = np; i < n; i++)                                  \
                s += mul_rounded(BN_X512_NAME(scalar_##sfx)(w[r] + i), x[i]); \
            out[r * TILE] = s;                                                \
        }                                                                     \
    }
BN_X512_VDOT(f32, float)
BN_X512_VDOT(f16, uint16_t)

static BN_X512 int BN_X512_NAME(rows_vdot)(const bn_weight *w,
                                           const uint8_t *row, int64_t nr,
                                           const void *act, int64_t t0, int nt,
                                           int pf, float *out)
{
    const int64_t nc = w->ncols;
    const size_t rb = w->row_bytes;
    const int R = nr >= 4 ? 4 : nr >= 2 ? 2 : 1;
    for (int t = 0; t < nt; t++) {
        const float *x = (const float *)act + (t0 + t) * nc;
        const int p = pf && t == 0;
        const int f32 = w->type == BN_TYPE_F32;
        switch (R * 2 + f32) { /* one inlined copy per shape */
        case 9: BN_X512_NAME(vdotn_f32)(row, rb, 4, x, nc, p, out + t); break;
        case 8: BN_X512_NAME(vdotn_f16)(row, rb, 4, x, nc, p, out + t); break;
        case 5: BN_X512_NAME(vdotn_f32)(row, rb, 2, x, nc, p, out + t); break;
        case 4: BN_X512_NAME(vdotn_f16)(row, rb, 2, x, nc, p, out + t); break;
        case 3: BN_X512_NAME(vdotn_f32)(row, rb, 1, x, nc, p, out + t); break;
        default: BN_X512_NAME(vdotn_f16)(row, rb, 1, x, nc, p, out + t); break;
        }
    }
    return R;
}

#endif /* !BN_X512_VNNI */
