/*
 * tokenizer.h — SentencePiece-style (llama.cpp "SPM") tokenizer built from
 * a GGUF vocabulary.
 *
 * It produces exactly the tokens llama.cpp's llm_tokenizer_spm produces for
 * the same vocabulary (checked against libllama on about a million cases):
 * special-token partitioning (control and user-defined tokens, longest
 * first in the order libstdc++'s unstable sort gives; control tokens only
 * with parse_special), the space prefix (tokenizer.ggml.add_space_prefix,
 * default true; also after every special token), spaces escaped to U+2581,
 * greedy bigram merging by score, byte fallback to <0xXX> tokens.
 *
 * BOS is added when add_bos is set and tokenizer.ggml.add_bos_token is true
 * (default true); EOS is appended when add_bos and add_eos_token are both
 * set (default false), as llama.cpp's add_special does.
 *
 * Where llama.cpp would throw or abort this returns an error or a token
 * instead: a byte with no byte token becomes the unknown token; duplicate
 * token texts and out-of-range bos/eos/unk ids are BITNET_E_MODEL_LOAD;
 * add_bos on a vocabulary without BOS is BITNET_E_INFERENCE.
 *
 * Keys read: tokenizer.ggml.model (must be "llama"), tokenizer.ggml.tokens,
 * tokenizer.ggml.scores, tokenizer.ggml.token_type (optional), the
 * bos/eos/unknown/eot/eom/fim id keys (optional), add_bos_token,
 * add_eos_token, add_space_prefix (optional), and general.name,
 * general.architecture and tokenizer.ggml.pre for llama.cpp's name-based
 * token-type rules (end-of-generation texts become CONTROL, Phi-3 rstrip).
 */
#ifndef BN_TOKENIZER_H
#define BN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

/* llama_token_type in llama.cpp's vocabulary. */
enum {
    BN_TOKEN_UNDEFINED = 0,
    BN_TOKEN_NORMAL = 1,
    BN_TOKEN_UNKNOWN = 2,
    BN_TOKEN_CONTROL = 3,
    BN_TOKEN_USER_DEFINED = 4,
    BN_TOKEN_UNUSED = 5,
    BN_TOKEN_BYTE = 6
};

typedef struct bn_vocab bn_vocab;

/* Builds the vocabulary from g's metadata (tensor data not needed).
 * BITNET_E_MODEL_LOAD naming the key on anything malformed (missing
 * tokens, wrong types, unsupported tokenizer model, ids out of range).
 * step, if not NULL, is called every few thousand tokens; a non-zero
 * return aborts the load with that code. */
int bn_vocab_load(const bn_gguf *g, int (*step)(void *), void *step_user,
                  bn_vocab **out);
void bn_vocab_free(bn_vocab *v);

int32_t bn_vocab_n_tokens(const bn_vocab *v);
int32_t bn_vocab_bos(const bn_vocab *v);
int32_t bn_vocab_eos(const bn_vocab *v);
/* The token's text as stored in the vocabulary (NUL-terminated). */
const char *bn_vocab_piece(const bn_vocab *v, int32_t id);

/* A growable token array (counted allocator). */
typedef struct {
    int32_t *ids;
    size_t n;
    size_t cap;
} bn_tokens;
void bn_tokens_free(bn_tokens *t);

/* Tokenizes text[0..len) (UTF-8; invalid sequences are handled as
 * llama.cpp does) appending to out.  Returns BITNET_OK or an error code
 * (BITNET_E_OOM).  step, if not NULL, is called every few thousand units
 * of work (a byte, a symbol, a lookup) from every loop, so no input can
 * run long between two calls; a non-zero return aborts with that code. */
int bn_tokenize(const bn_vocab *v, const char *text, size_t len, int add_bos,
                int parse_special, bn_tokens *out, int (*step)(void *),
                void *step_user);

/* The text of ids[0..n), as llama.cpp's llama_detokenize gives it for an
 * SPM vocabulary (bytes: a sequence may end inside a UTF-8 character).
 * Normal tokens give their text with U+2581 turned back into a space;
 * byte tokens <0xXX> the byte; control and unknown tokens their text only
 * with unparse_special, else nothing; user-defined tokens their text;
 * unused and undefined tokens nothing.  The space prefix the tokenizer
 * adds (add_space_prefix) is removed from the first token, unless
 * remove_special drops a leading BOS (which llama.cpp keeps it for);
 * remove_special also drops a trailing EOS when add_eos_token is set.
 *
 * Two passes: out == NULL counts; *out_len gets the bytes needed either
 * way, and with out, a capacity below it is BITNET_E_INVALID_ARG ("buffer
 * too small") with nothing written.  A token id outside 0..n_vocab-1 is
 * BITNET_E_INFERENCE naming it and its position.  step as for
 * bn_tokenize (polled every few thousand tokens). */
int bn_detokenize(const bn_vocab *v, const int32_t *ids, size_t n,
                  int remove_special, int unparse_special, char *out,
                  size_t cap, size_t *out_len, int (*step)(void *),
                  void *step_user);

#endif
