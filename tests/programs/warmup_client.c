/* A libllama client that warms up as llama.cpp's common_init_from_params does (common/common.cpp):
 * decode BOS+EOS in one batch, clear the memory, then decode the prompt and generate greedily.
 * Usage: warmup_client MODEL PROMPT N_PREDICT. Prints the generated token ids. Knows nothing of ggml-inspector. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static llama_token greedy(struct llama_context * ctx, int n_vocab) {
    const float * logits = llama_get_logits_ith(ctx, -1);
    llama_token best = 0;
    for (llama_token token = 1; token < n_vocab; token++) {
        if (logits[token] > logits[best]) {
            best = token;
        }
    }
    return best;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_PREDICT\n", argv[0]);
        return 2;
    }
    llama_backend_init();
    struct llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], model_params);
    if (!model) {
        return 1;
    }
    struct llama_context_params context_params = llama_context_default_params();
    context_params.n_ctx = 64;
    context_params.n_threads = 1;
    context_params.n_threads_batch = 1;
    struct llama_context * ctx = llama_init_from_model(model, context_params);
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    llama_token warmup[2] = {llama_vocab_bos(vocab), llama_vocab_eos(vocab)};
    if (llama_decode(ctx, llama_batch_get_one(warmup, 2)) != 0) {
        return 3;
    }
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_synchronize(ctx);

    llama_token tokens[256];
    int n = llama_tokenize(vocab, argv[2], (int) strlen(argv[2]), tokens, 256, true, true);
    if (n <= 0 || llama_decode(ctx, llama_batch_get_one(tokens, n)) != 0) {
        return 3;
    }
    int n_vocab = llama_vocab_n_tokens(vocab);
    for (int i = 0; i < atoi(argv[3]); i++) {
        llama_token next = greedy(ctx, n_vocab);
        printf("%d\n", next);
        if (i + 1 < atoi(argv[3]) && llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
            return 3;
        }
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
