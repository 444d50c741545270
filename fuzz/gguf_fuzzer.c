/*
 * gguf_fuzzer.c — libFuzzer target for the GGUF reader and what consumes
 * its output.
 *
 * Each input is a whole GGUF file.  It goes through the one parser
 * (bn_gguf_open_memory: the same code as bn_gguf_open, minus the fd) and,
 * when it parses, through the model loader's vocabulary, hyperparameter
 * and weight checks (bn_model_load_memory), because a reader that accepts
 * a file is only half the contract: everything it hands on is trusted
 * from there.  A model that loads is then tokenized (a fixed text with
 * special tokens, and bytes from the input itself) and, when it is small
 * enough to be quick, one token is evaluated.
 *
 * After each input every counted allocation must be back to where it
 * started: a leak on an error path aborts the run like a crash does.
 *
 * Built and run by fuzz/run.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitnet.h"
#include "bn_alloc.h"
#include "bn_error.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

/* Forward passes on a fuzzed model are bounded by its size: above this
 * many weight elements per layer times layers, evaluation is skipped so
 * executions stay fast (the reader and loader are the target). */
#define MAX_EVAL_WORK (1u << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* one thread: no worker threads per context, deterministic runs */
    setenv("BITNET_NUM_THREADS", "1", 1);
    setenv("BITNET_CPP_LOG_LEVEL", "none", 1);
    return 0;
}

static void check_counters(const bitnet_counters_t *before, const char *when)
{
    bitnet_counters_t now;
    bn_counters_read(&now);
    if (now.bytes != before->bytes || now.allocations != before->allocations ||
        now.models != before->models || now.contexts != before->contexts) {
        fprintf(stderr,
                "leak %s: bytes %lld -> %lld, allocations %lld -> %lld, "
                "models %lld -> %lld\n",
                when, (long long)before->bytes, (long long)now.bytes,
                (long long)before->allocations, (long long)now.allocations,
                (long long)before->models, (long long)now.models);
        abort();
    }
}

static void exercise(bn_model *m, const uint8_t *data, size_t size)
{
    static const char text[] = "Hello world! <s> </s> \xe2\x82\xac \xff";
    const bn_vocab *v = bn_model_vocab(m);
    bn_tokens toks = {0};
    for (int special = 0; special < 2; special++) {
        if (bn_tokenize(v, text, sizeof text - 1, 1, special, &toks, NULL,
                        NULL) == BITNET_OK) {
            for (size_t i = 0; i < toks.n; i++) /* every id must be valid */
                if (toks.ids[i] < 0 || toks.ids[i] >= bn_vocab_n_tokens(v))
                    abort();
        }
        bn_tokens_free(&toks);
    }
    /* the last bytes of the input as text: lets the fuzzer steer the
     * tokenizer without a second input format */
    size_t tail = size < 64 ? size : 64;
    if (bn_tokenize(v, (const char *)data + size - tail, tail, 0, 1, &toks,
                    NULL, NULL) == BITNET_OK) {
        for (size_t i = 0; i < toks.n; i++)
            if (toks.ids[i] < 0 || toks.ids[i] >= bn_vocab_n_tokens(v))
                abort();
    }
    bn_tokens_free(&toks);
    for (int32_t id = 0; id < bn_vocab_n_tokens(v) && id < 4096; id++)
        (void)strlen(bn_vocab_piece(v, id));

    /* one forward pass when the model is small */
    uint64_t work = (uint64_t)bn_model_kv_bytes(m, 1) *
                    (uint64_t)bn_model_n_vocab(m);
    if (work > MAX_EVAL_WORK)
        return;
    bn_state *s = NULL;
    if (bn_state_new(m, 4, &s) != BITNET_OK)
        return;
    int32_t tok = bn_vocab_n_tokens(v) - 1;
    float *logits = bn_malloc((size_t)bn_model_n_vocab(m) * sizeof(float),
                              "fuzz logits");
    if (logits) {
        (void)bn_forward(s, 0, &tok, 1, logits, NULL, NULL);
        bn_free(logits);
    }
    bn_state_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bitnet_counters_t before;
    bn_counters_read(&before);

    /* the reader alone, metadata only (the path bitnet_cpp_tokenize's
     * vocabulary-only load takes) */
    bn_gguf *g = NULL;
    if (bn_gguf_open_memory(data, size, "fuzz", BN_GGUF_NO_DATA, NULL, NULL,
                            &g) == BITNET_OK) {
        if (!g)
            abort();
        bn_gguf_free(g);
    } else if (g || bn_error_message()[0] == '\0') {
        abort(); /* a failure leaves *out NULL and says why */
    }
    check_counters(&before, "after bn_gguf_open_memory");

    bn_model *m = NULL;
    if (bn_model_load_memory(data, size, "fuzz", 0, &m) == BITNET_OK) {
        exercise(m, data, size);
        bn_model_free(m);
    } else if (m) {
        abort();
    }
    check_counters(&before, "after bn_model_load_memory");
    return 0;
}
