/*
 * llama_check.h — refusing, before llama.cpp sees it, a GGUF file that
 * would make llama.cpp kill or hang the process.
 *
 * llama.cpp trusts its input more than a test harness can: a file that is
 * well-formed GGUF but carries a hostile hyperparameter, vocabulary or
 * tensor type reaches a GGML_ASSERT (SIGABRT), an uncaught C++ exception
 * (std::terminate), a wild read (SIGSEGV) or a kernel that never returns.
 * bn_check_for_llama reads the file with the strict reader (gguf.h) and
 * applies the rules llama.cpp needs and does not check itself, so each of
 * those becomes BITNET_E_MODEL_LOAD naming the key or tensor, its value and
 * what llama.cpp requires.
 *
 * The rules are about llama.cpp, not about the reference engine: a file the
 * reference cannot run (another architecture, another quantization, another
 * tokenizer) passes when llama.cpp can run it.  What llama.cpp refuses
 * cleanly by itself is mostly left to it; a few such rules (the token
 * tables) are applied here too because the message can name the key.
 *
 *   layout        the strict reader's rules; every tensor's data on a
 *                 32-byte boundary of the file (ggml's TENSOR_ALIGNMENT:
 *                 llama.cpp maps the file and asserts buffer alignment)
 *   hparams       for every architecture: block_count 1..512, the
 *                 per-layer keys (feed_forward_length, head_count,
 *                 head_count_kv, expert_used_count) a u32 or an integer
 *                 array with one entry per layer, the expert counts
 *                 llama.cpp asserts on, rope.scaling.type one it knows,
 *                 every *epsilon >= 0 (not NaN), rope.dimension_count when
 *                 given even and within the key head size, n_head a
 *                 multiple of n_head_kv in every layer; for the
 *                 transformer architectures this project builds (llama,
 *                 bitnet: RoPE on every layer, one head size) also the
 *                 default rope count even, key/value head sizes equal to
 *                 n_embd / n_head, and a KV head in every layer that has
 *                 query heads
 *   vocabulary    tokens an array of distinct strings, scores / token_type
 *                 of a type llama.cpp reads and at least as long; an SPM
 *                 ("llama") vocabulary holding a token for each of the 256
 *                 bytes (its tokenizer falls back to them and throws on a
 *                 missing one); no BYTE-typed token in a WPM ("bert") one;
 *                 in an RWKV one, each byte that begins a token a token
 *                 itself (its tokenizer loops without end otherwise)
 *   tensors       1-D tensors F32 (norms, scales: ggml's CPU element-wise
 *                 ops mix F32 activations with F32 only); others of a type
 *                 the CPU backend can multiply and look up rows of
 *
 * The hyperparameter and tensor rules are skipped for a vocabulary-only
 * load (llama.cpp's vocab_only reads neither).
 *
 * Independent of the bridge's handles and of the adapter: the bridge lends
 * it to the libraries it loads (bitnet_host.h, check_for_llama), and
 * anything that hands files to llama.cpp can call it directly.  Runs on the
 * calling thread: the reader's step points poll the caller's deadline
 * (bn_deadline.h) and its allocations are counted (bn_alloc.h); nothing
 * stays allocated after it returns.
 */
#ifndef BN_LLAMA_CHECK_H
#define BN_LLAMA_CHECK_H

#include "gguf.h"

/* Reads path (metadata only: tensor data is not read) and checks it.
 * BITNET_OK, or the reader's codes (BITNET_E_MODEL_NOT_FOUND,
 * BITNET_E_MODEL_LOAD, BITNET_E_OOM, BITNET_E_TIMEOUT) with the last error
 * naming the file; vocab_only != 0 applies the vocabulary rules alone. */
int bn_check_for_llama(const char *path, int vocab_only);

/* The rules over a file already parsed (the fuzzer's entry: no file).
 * Messages do not name the file: callers prefix it. */
int bn_check_gguf_for_llama(const bn_gguf *g, int vocab_only);

#endif
