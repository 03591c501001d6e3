/* An ordinary libllama client: load a model, decode a prompt, print the last logit row's first value.
 * Usage: llama_client MODEL PROMPT. Nothing in it knows about ggml-inspector. */
#include <stdio.h>
#include <string.h>

#include "llama.h"

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT\n", argv[0]);
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
    llama_token tokens[256];
    int n = llama_tokenize(vocab, argv[2], (int) strlen(argv[2]), tokens, 256, true, true);
    if (n <= 0 || llama_decode(ctx, llama_batch_get_one(tokens, n)) != 0) {
        return 3;
    }
    printf("%.9g\n", llama_get_logits_ith(ctx, -1)[0]);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
