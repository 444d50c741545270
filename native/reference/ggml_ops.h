/*
 * ggml_ops.h — the float operations of the forward pass between the
 * matrix products (attention scores, softmax, weighted sum of values,
 * SiLU), rounded where and as ggml's x86 CPU backend rounds them.
 *
 * Why: TQ2_0 products quantize their input to Q8_K, a step of 1/127 of a
 * block's largest value.  A last-bit difference in that input (a different
 * summation order, an exp with another error, a multiply-add fused or not)
 * now and then moves one activation across a step, and the step, not the
 * ulp, reaches the logits (issue 19: 0.58 on random prompts).  Computing
 * each rounded quantity in ggml's order removes the cause instead of
 * widening the tolerance.  The orders are those of the libggml-cpu that
 * llama-cpp-python 0.3.36 builds on an AVX2 + FMA machine (-march=native,
 * so GCC fuses a*b+c in scalar code too):
 *
 *   bn_ggml_scores     ggml_vec_dot_f32 per key: 4 x 8 lanes of fused
 *                      multiply-adds over 32 elements at a time, reduced
 *                      (0+2, 1+3, 0+1, low half + high half, pairwise), the
 *                      tail fused into the float sum; times the scale.
 *                      (Q.K of the attention scores.)
 *   bn_ggml_weighted_sum
 *                      llamafile's tinyBLAS on 256-bit vectors: one 8-lane
 *                      accumulator of fused multiply-adds per output,
 *                      reduced high + low, 0+2 and 1+3, then the two.
 *                      (ggml's choice for F32/F16 products whose inner
 *                      length is a multiple of 8: softmax x V.)
 *   bn_ggml_softmax    ggml_vec_soft_max_f32: exp by ggml's 8-lane
 *                      polynomial (ggml_v_expf: |error| < 1.5 ulp, not
 *                      libm's), lane sums of 8 in float added in double,
 *                      then a multiply by the float of 1/sum.
 *   bn_ggml_swiglu     ggml_vec_swiglu_f32: x / (1 + ggml_v_expf(-x)) * g
 *                      for whole groups of 8, libm's expf for the tail.
 *   bn_ggml_rope       ggml_rope_f32's rotation, which GCC contracts (with
 *                      -march=native) into fma(x0, c, -(x1 s)) and
 *                      fma(x0, s, x1 c): plain multiplies and adds differ
 *                      from it in the last bit of one value in three.
 *
 * Each has an AVX2+FMA build and a portable one (fmaf) giving identical
 * bits; without hardware FMA the portable one is slow but still exact.
 */
#ifndef BN_GGML_OPS_H
#define BN_GGML_OPS_H

#include <stdint.h>

/* att[j] = (q . k[j * stride ...]) * scale for j < n, each dot over hd
 * in ggml_vec_dot_f32's order: one query's attention scores. */
void bn_ggml_scores(float *att, const float *q, const float *k,
                    int64_t stride, int64_t n, int64_t hd, float scale);

/* out[e] = sum_j v[j*stride + e] * p[j] for e < m, j < n, each in
 * tinyBLAS's order over j (above). */
void bn_ggml_weighted_sum(float *out, const float *v, int64_t stride,
                          const float *p, int64_t n, int64_t m);

/* In place over x[0..n): the n scores of one attention row, already
 * scaled; the row ggml sees is padded with masked (-inf) entries to a
 * multiple of 8, which add nothing. */
void bn_ggml_softmax(float *x, int64_t n);

/* y[i] = silu(x[i]) * g[i] for one row of n (y may be x). */
void bn_ggml_swiglu(float *y, const float *x, const float *g, int64_t n);

/* Rotates n_heads heads in place (head h at x + h * hd), the first n_rot
 * values of each, by the angles cs (cos at cs[i], sin at cs[n_rot/2 + i]):
 * the pairs (i, i + n_rot/2) when neox, else (2i, 2i + 1). */
void bn_ggml_rope(float *x, int64_t n_heads, int64_t hd, int32_t n_rot,
                  const float *cs, int neox);

/* ggml_v_expf for one value (one lane of the vector code). */
float bn_ggml_expf(float x);

#endif
