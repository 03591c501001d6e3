/* A libllama client that warms up as llama.cpp's common_init_from_params does (common/common.cpp):
 * decode BOS+EOS in one batch, clear the memory, then decode the prompt and generate greedily.
 * Usage: warmup_client MODEL PROMPT N_PREDICT. Prints the generated token ids. Knows nothing of ggml-inspector. */
#include <stdio.h>
#include <stdlib.h>

#include "client.h"

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_PREDICT\n", argv[0]);
        return 2;
    }
    struct llama_model * model = NULL;
    struct llama_context * ctx = client_open(argv[1], client_params(64), &model);
    if (!ctx) {
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    llama_token warmup[2] = {llama_vocab_bos(vocab), llama_vocab_eos(vocab)};
    if (llama_decode(ctx, llama_batch_get_one(warmup, 2)) != 0) {
        return 3;
    }
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_synchronize(ctx);

    if (client_prompt(ctx, argv[2]) != 0) {
        return 3;
    }
    for (int i = 0; i < atoi(argv[3]); i++) {
        llama_token next = client_greedy(ctx);
        printf("%d\n", next);
        if (i + 1 < atoi(argv[3]) && llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
            return 3;
        }
    }
    client_close(ctx, model);
    return 0;
}
