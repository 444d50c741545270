/*
 * bitnet_capture.h — intermediate tensors of an evaluation, written to a
 * file, so that cross-validation can say where two engines first part
 * (issue 19; `python -m pytest_bitnet crossval MODEL --explain`).
 *
 * When the environment names a directory in BITNET_CAPTURE_DIR at the time
 * a context is created, every evaluation of that context appends the
 * tensors of its forward pass to <dir>/<engine>.bnt ("reference" or
 * "llama"): per layer the activations llama.cpp names in its graph
 * (attn_norm, Qcur, Kcur, Vcur, kqv_out, attn_sub_norm, attn_out, ffn_inp,
 * ffn_norm, ffn_gate, ffn_up, ffn_sub_out, ffn_sub_norm, ffn_down, l_out,
 * with the suffix "-<layer>") and result_norm / result_output.  Without the
 * variable nothing is captured and nothing is paid beyond one test of a
 * pointer per tensor.  A debugging aid, not a stable format: the reader is
 * pytest_bitnet/testing/explain.py, built from the same commit.
 *
 * A record is a bn_capture_hdr followed by ne1 rows of ne0 float32 values
 * (host byte order): ne1 tokens starting at position pos0, ne0 values per
 * token in the order the engine holds them (for Q/K/V: heads one after
 * another).
 */
#ifndef BITNET_CAPTURE_H
#define BITNET_CAPTURE_H

#include <stdint.h>

#define BN_CAPTURE_ENV "BITNET_CAPTURE_DIR"
#define BN_CAPTURE_MAGIC "BNT1"
#define BN_CAPTURE_NAME_MAX 56

typedef struct {
    char magic[4];                  /* BN_CAPTURE_MAGIC, no terminator */
    int32_t pos0;                   /* position of the first token */
    char name[BN_CAPTURE_NAME_MAX]; /* NUL-terminated, e.g. "attn_norm-0" */
    int64_t ne0;                    /* values per token */
    int64_t ne1;                    /* tokens */
} bn_capture_hdr;                   /* 80 bytes */

#endif
