/*
 * kernels.h — matrix kernels of the reference engine.
 *
 * A weight matrix W has nrows rows of ncols elements (ggml: ne[0] = ncols,
 * ne[1] = nrows), stored in a ggml type.  The product for n_tokens input
 * vectors is  y[t*nrows + r] = sum_c W[r, c] * x[t*ncols + c].
 *
 * Activations are first converted once per call into the form the weight
 * type multiplies with, exactly as ggml's CPU backend does, so results
 * match llama.cpp closely:
 *
 *   F32    x as is (float dot products)
 *   F16    x rounded to fp16 (ggml's vec_dot_type for F16 is F16)
 *   TQ2_0  x quantized to Q8_K: blocks of 256, iscale = -127/max where max
 *          is the element of largest magnitude, q = round-half-even(iscale*x)
 *          clamped to <= 127, d = 1/iscale; the dot product is exact in
 *          integers per block, then sum += (float)sumi * (d_x * fp16(d_w)).
 *          (Bit-identical to ggml's generic / AVX2 kernels respectively.)
 *   I2_S   x quantized per vector to int8 as BitNet.cpp does:
 *          s = 127/max(max|x|, 1e-5) (BitNet.cpp's floor: an all-zero x
 *          gives q = 0), q = round-half-even(x*s) clamped to [-128,127];
 *          y = (float)(sum code*q - sum q) / s * tensor_scale.
 *
 * Non-finite input: F32/F16 follow IEEE; I2_S gives NaN for the whole
 * vector if any x is NaN or inf; TQ2_0 follows ggml (a NaN activation
 * quantizes to 0, an inf makes its block's result NaN).  Weight code 3
 * (invalid in both ternary formats) reads as +2 everywhere, consistently.
 *
 * The split into bn_act_prepare + bn_matmul_rows lets a caller quantize once
 * and hand row ranges to several threads (the functions keep no state; any
 * number of threads may call them at once on disjoint y rows).  Kernels are
 * chosen at run time: AVX-512 (F/BW/VL/DQ, VNNI where present) or AVX2
 * (+FMA, F16C) where the CPU has it, portable C otherwise (-DBN_NO_SIMD
 * builds only the latter, -DBN_NO_AVX512 leaves AVX-512 out).  AVX-512 and
 * AVX2 give the same bits; portable gives them too except TQ2_0, whose
 * float summation order is ggml's generic kernel's.
 */
#ifndef BN_KERNELS_H
#define BN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t type;     /* BN_TYPE_F32, F16, TQ2_0 or I2_S (gguf.h) */
    const void *data;  /* rows back to back */
    int64_t ncols;     /* elements per row; TQ2_0: multiple of 256,
                          I2_S: multiple of 128 */
    int64_t nrows;
    size_t row_bytes;  /* bytes per row (I2_S: ncols/4) */
    float scale;       /* I2_S: the per-tensor scale read after the codes;
                          1.0 otherwise */
} bn_weight;

/* Bytes of the prepared-activation buffer for n_tokens vectors; always
 * n_tokens * bn_act_size(w, 1) (0 for an unsupported type).  The buffer must
 * be at least 4-byte aligned (64 makes every SIMD load of it aligned); its
 * layout is private. */
size_t bn_act_size(const bn_weight *w, int64_t n_tokens);

/* Converts x (n_tokens x ncols floats) into act (bn_act_size bytes). */
void bn_act_prepare(const bn_weight *w, const float *x, int64_t n_tokens,
                    void *act);

/* y rows [r0, r1) for every token, from prepared activations:
 * y[t*nrows + r] for t < n_tokens, r0 <= r < r1; nothing else is written.
 * The range is clipped to [0, nrows).  Several tokens share each pass over
 * a weight row, so one call with n tokens is cheaper than n calls. */
void bn_matmul_rows(const bn_weight *w, const void *act, int64_t n_tokens,
                    float *y, int64_t r0, int64_t r1);

/* Row `row` of W as floats (for embedding lookups): out[ncols]. */
void bn_dequant_row(const bn_weight *w, int64_t row, float *out);

/* fp16 <-> fp32, round to nearest even, as ggml does. */
float bn_fp16_to_fp32(uint16_t h);
uint16_t bn_fp32_to_fp16(float f);

/* Which implementation is in use ("avx2", "portable", or with AVX-512 e.g.
 * "avx512-vnni (f32, f16, tq2_0, i2_s), avx2": the types with an AVX-512
 * kernel, then AVX2 for the rest and for activation preparation), for
 * diagnostics.  bn_kernels_force_portable(1) switches to
 * the portable path, (2) to AVX2 at most, (3) to AVX-512 without VNNI at
 * most, (0) back (tests compare them). */
const char *bn_kernels_impl(void);
void bn_kernels_force_portable(int on);

#endif
