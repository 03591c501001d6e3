/* An ordinary libmtmd client, as a llama.cpp fork's vision example is: load a language model and its
 * projector, put an image into a prompt, and evaluate it with libmtmd's helper (the image encoder on
 * libmtmd's scheduler, then the language model on llama's).  It knows nothing about ggml-inspector.
 *
 * usage: mtmd_client MODEL MMPROJ IMAGE PROMPT   (prints the argmax of the last logits) */
#include <stdio.h>
#include <string.h>

#include "llama.h"
#include "mtmd.h"
#include "mtmd-helper.h"

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL MMPROJ IMAGE PROMPT\n", argv[0]);
        return 2;
    }
    llama_backend_init();
    struct llama_model_params model_params = llama_model_default_params();
    model_params.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], model_params);
    if (model == NULL) {
        return 1;
    }
    struct llama_context_params params = llama_context_default_params();
    params.n_ctx = 128;
    params.n_threads = params.n_threads_batch = 1;
    params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context * ctx = llama_init_from_model(model, params);

    struct mtmd_context_params vision_params = mtmd_context_params_default();
    vision_params.use_gpu = false;
    vision_params.n_threads = 1;
    vision_params.warmup = false;
    vision_params.print_timings = false;
    vision_params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    mtmd_context * vision = mtmd_init_from_file(argv[2], model, vision_params);
    if (vision == NULL) {
        return 1;
    }
    struct mtmd_helper_bitmap_wrapper image =
        mtmd_helper_bitmap_init_from_file(vision, argv[3], false, mtmd_helper_init_opt_default());
    if (image.bitmap == NULL) {
        return 1;
    }
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    struct mtmd_input_text text = { argv[4], strlen(argv[4]), true, true };
    const mtmd_bitmap * bitmaps[] = { image.bitmap };
    if (mtmd_tokenize(vision, chunks, &text, bitmaps, 1) != 0) {
        return 1;
    }
    llama_pos n_past = 0;
    if (mtmd_helper_eval_chunks(vision, ctx, chunks, 0, 0, 512, true, &n_past) != 0) {
        return 1;
    }
    const float * logits = llama_get_logits_ith(ctx, -1);
    int best = 0;
    for (int i = 1; i < llama_vocab_n_tokens(llama_model_get_vocab(model)); i++) {
        best = logits[i] > logits[best] ? i : best;
    }
    printf("positions %d argmax %d\n", (int) n_past, best);

    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(image.bitmap);
    mtmd_free(vision);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
