/* A libllama client that generates: decode a prompt, then N_GEN greedy tokens one at a time, in a context of
 * N_CTX cells, with flash attention on or off (off keeps the V cache transposed: one-value rows).  Prints the
 * generated token ids.  Usage: kv_client MODEL PROMPT N_CTX N_GEN on|off.  Nothing in it knows about
 * ggml-inspector. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static llama_token greedy(struct llama_context * ctx, int n_vocab) {
    const float * logits = llama_get_logits_ith(ctx, -1);
    llama_token   best = 0;
    for (llama_token token = 1; token < n_vocab; token++) {
        if (logits[token] > logits[best]) {
            best = token;
        }
    }
    return best;
}

int main(int argc, char ** argv) {
    if (argc != 6 || (strcmp(argv[5], "on") != 0 && strcmp(argv[5], "off") != 0)) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_CTX N_GEN on|off\n", argv[0]);
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
    context_params.n_ctx = (uint32_t) atoi(argv[3]);
    context_params.n_threads = 1;
    context_params.n_threads_batch = 1;
    context_params.flash_attn_type = strcmp(argv[5], "on") == 0 ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                                                : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *     ctx = llama_init_from_model(model, context_params);
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    llama_token tokens[256];
    int n = llama_tokenize(vocab, argv[2], (int) strlen(argv[2]), tokens, 256, true, true);
    if (ctx == NULL || n <= 0 || llama_decode(ctx, llama_batch_get_one(tokens, n)) != 0) {
        return 3;
    }
    for (int i = atoi(argv[4]); i > 0; i--) {
        llama_token next = greedy(ctx, llama_vocab_n_tokens(vocab));
        printf("%d\n", next);
        if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
            return 3;
        }
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
