/* An ordinary libllama client: load a model, decode a prompt, print the last logit row's first value.
 * Usage: llama_client MODEL PROMPT. Nothing in it knows about ggml-inspector. */
#include <stdio.h>

#include "client.h"

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL PROMPT\n", argv[0]);
        return 2;
    }
    struct llama_model * model = NULL;
    struct llama_context * ctx = client_open(argv[1], client_params(64), &model);
    if (!ctx) {
        return 1;
    }
    if (client_prompt(ctx, argv[2]) != 0) {
        return 3;
    }
    printf("%.9g\n", llama_get_logits_ith(ctx, -1)[0]);
    client_close(ctx, model);
    return 0;
}
