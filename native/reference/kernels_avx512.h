/*
 * kernels_avx512.h — the AVX-512 matrix kernels, included by kernels.c only,
 * twice: with BN_X512_VNNI 0 (names *_avx512, target without VNNI) and 1
 * (names *_vnni, target with it), BN_X512 / BN_X512_INLINE set to match and
 * BN_X512_NAME(f) pasting the suffix.  (One body, so the VNNI-less form
 * never carries an instruction its CPU may lack.)
 *
 * One source, two builds: kernels.c includes it with <immintrin.h> and
 * BN_X512 / BN_X512_INLINE set to function-level target attributes (the
 * real build; dispatch runs it only where the CPU has the instructions),
 * and a test build (tests/native/test_kernels_avx512.py) includes it with
 * SIMDe's portable AVX-512 intrinsics and the attributes empty, so the very
 * same code is checked bit for bit on a CPU without AVX-512.  So it uses
 * only intrinsics SIMDe 0.7.4 implements (it has no _mm512_cvtepi32_ps nor
 * _mm512_cvtph_ps: see tq2_i32_to_ps; nor aliases for _mm512_cvtss_f32 and
 * _mm512_shuffle_f32x4: see tq2_reduce2), and F16C's _mm_cvtph_ps, which
 * the test build takes from SIMDe's f16c.h (tq2_scales2).
 *
 * Uses kernels.c's definitions: bn_weight, bn_q8k, QK_K, TQ2_BLOCK_BYTES,
 * TILE, ROWS_MAX.
 *
 * Functions are named *_avx512 (AVX-512 F/BW/VL/DQ) or *_vnni (also
 * AVX-512 VNNI): tools/error_sites.py leaves their lines out of the
 * coverage figure on a CPU without the flag.
 */

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

/* ggml's hsum_float_8 of the two halves of a: ((0+4)+(2+6))+((1+5)+(3+7)),
 * in three vector adds (the operands of each add are those of the scalar
 * form, some swapped, and float addition is commutative), not 14 scalar
 * ones after a store: with 2-block rows (512 columns) the reductions were
 * a fifth of the kernel's time. */
BN_X512_INLINE void BN_X512_NAME(tq2_reduce2)(__m512 a, float *lo, float *hi)
{
    /* lanes 0..3 of each half: k + (k+4) */
    const __m512 s1 = _mm512_add_ps(
        a, _mm512_castsi512_ps(_mm512_shuffle_i32x4(_mm512_castps_si512(a),
                                                    _mm512_castps_si512(a),
                                                    _MM_SHUFFLE(2, 3, 0, 1))));
    /* lane 0: (0+4) + (2+6), lane 1: (1+5) + (3+7) */
    const __m512 s2 =
        _mm512_add_ps(s1, _mm512_shuffle_ps(s1, s1, _MM_SHUFFLE(1, 0, 3, 2)));
    /* lane 0: their sum */
    const __m512 s3 =
        _mm512_add_ps(s2, _mm512_shuffle_ps(s2, s2, _MM_SHUFFLE(2, 3, 0, 1)));
    *lo = _mm_cvtss_f32(_mm512_castps512_ps128(s3));
    *hi = _mm_cvtss_f32(_mm512_extractf32x4_ps(s3, 2));
}

/* The scales of two rows' blocks (fp16 h0, h1), h0's in lanes 0..7 and h1's
 * in 8..15: one F16C conversion (the same values as h2f, vcvtph2ps being
 * exact) and a permute, instead of two scalar h2f per pair of blocks. */
BN_X512_INLINE __m512 BN_X512_NAME(tq2_scales2)(uint16_t h0, uint16_t h1)
{
    const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)h0 | ((int)h1 << 16)));
    return _mm512_permutexvar_ps(
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        _mm512_castps128_ps512(f));
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
        uint16_t h0, h1;
        memcpy(&h0, b0 + 64, sizeof h0);
        memcpy(&h1, b1 + 64, sizeof h1);
        /* lanes 0..7 the scale of row 0, 8..15 that of row 1 */
        const __m512 dw = BN_X512_NAME(tq2_scales2)(h0, h1);
        __m512i s[TILE];
#if BN_X512_VNNI
        /* With one or two tokens the eight vpdpbusd of a block into one
         * accumulator are a chain of dependent instructions, bound by
         * their latency: the odd j go to a second one, added at the end
         * (integer sums, so the lanes are the same). */
        const int two = NT <= 2;
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
                if (two && (j & 1))
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
            const __m512i si = two ? _mm512_add_epi32(s[t], s2[t]) : s[t];
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
        BN_X512_NAME(tq2_reduce2)(acc[t], out0 + t, out1 + t);
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
