/* What the libllama test clients share, written as any libllama program would: the model on the CPU, a
 * single-threaded context, the prompt decoded in one batch, greedy sampling.  Nothing in it knows about
 * ggml-inspector. */
#ifndef TEST_CLIENT_H
#define TEST_CLIENT_H

#include <stdint.h>
#include <string.h>

#include "llama.h"

/* llama.cpp's default context parameters with n_ctx cells and one thread: set more before client_open. */
static inline struct llama_context_params client_params(uint32_t n_ctx) {
    struct llama_context_params params = llama_context_default_params();
    params.n_ctx = n_ctx;
    params.n_threads = 1;
    params.n_threads_batch = 1;
    return params;
}

/* The backend, the model at path (no GPU layers) and a context with params; NULL when either fails. */
static inline struct llama_context * client_open(const char * path, struct llama_context_params params,
                                          struct llama_model ** model) {
    llama_backend_init();
    struct llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    *model = llama_model_load_from_file(path, model_params);
    return *model ? llama_init_from_model(*model, params) : NULL;
}

/* The prompt tokenized (BOS added, specials parsed) and decoded in one batch: 0, or -1 on failure. */
static inline int client_prompt(struct llama_context * ctx, const char * prompt) {
    const struct llama_vocab * vocab = llama_model_get_vocab(llama_get_model(ctx));
    llama_token tokens[256];
    int n = llama_tokenize(vocab, prompt, (int) strlen(prompt), tokens, 256, true, true);
    return n > 0 && llama_decode(ctx, llama_batch_get_one(tokens, n)) == 0 ? 0 : -1;
}

/* The token with the largest logit of the last output row. */
static inline llama_token client_greedy(struct llama_context * ctx) {
    const float * logits = llama_get_logits_ith(ctx, -1);
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    llama_token best = 0;
    for (llama_token token = 1; token < n_vocab; token++) {
        if (logits[token] > logits[best]) {
            best = token;
        }
    }
    return best;
}

static inline void client_close(struct llama_context * ctx, struct llama_model * model) {
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
}

#endif
