/* A libllama client that generates: decode a prompt, then N_GEN greedy tokens one at a time, in a context of
 * N_CTX cells, with flash attention on or off (off keeps the V cache transposed: one-value rows).  Prints the
 * generated token ids.  Usage: kv_client MODEL PROMPT N_CTX N_GEN on|off.  Nothing in it knows about
 * ggml-inspector. */
#include <stdio.h>
#include <stdlib.h>

#include "client.h"

int main(int argc, char ** argv) {
    if (argc != 6 || (strcmp(argv[5], "on") != 0 && strcmp(argv[5], "off") != 0)) {
        fprintf(stderr, "usage: %s MODEL PROMPT N_CTX N_GEN on|off\n", argv[0]);
        return 2;
    }
    struct llama_context_params params = client_params((uint32_t) atoi(argv[3]));
    params.flash_attn_type = strcmp(argv[5], "on") == 0 ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                                        : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_model * model = NULL;
    struct llama_context * ctx = client_open(argv[1], params, &model);
    if (!model) {
        return 1;
    }
    if (ctx == NULL || client_prompt(ctx, argv[2]) != 0) {
        return 3;
    }
    for (int i = atoi(argv[4]); i > 0; i--) {
        llama_token next = client_greedy(ctx);
        printf("%d\n", next);
        if (llama_decode(ctx, llama_batch_get_one(&next, 1)) != 0) {
            return 3;
        }
    }
    client_close(ctx, model);
    return 0;
}
