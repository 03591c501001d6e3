/* A graph with llama.cpp's input leaf names, in a program that has the hook compiled in (link-time use,
 * -DGGML_INSPECTOR_LINKED): embd = select(get_rows(tok_embd, inp_tokens), inp_embd), as llama.cpp's
 * build_inp_embd makes it (both inputs in the graph, only the chosen one computed), plus
 * get_rows(pos_embd, inp_pos), then the rows out_ids names.
 * Usage: linked_inputs tokens|embd COMPUTES.  Compute r sets tokens (r + 1, 2, 5, 7), embeddings
 * 0.5 i + r (4 rows of 4), positions 4 r .. 4 r + 3 and output rows (1, 3): both inputs are always set,
 * so only the graph's choice tells which one was computed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "ggml_inspector.h"

static struct ggml_tensor * input(struct ggml_tensor * t, const char * name) {
    ggml_set_name(t, name);
    ggml_set_input(t);
    return t;
}

int main(int argc, char ** argv) {
    int embd_path = argc > 1 && strcmp(argv[1], "embd") == 0;
    int computes = argc > 2 ? atoi(argv[2]) : 1;
    struct ggml_init_params params = { 32 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * tok_embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 8);
    struct ggml_tensor * pos_embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 16);
    ggml_set_name(tok_embd, "token_embd.weight");
    ggml_set_name(pos_embd, "pos_embd.weight");
    struct ggml_tensor * tokens = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 4), "inp_tokens");
    struct ggml_tensor * embd = input(ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 4), "inp_embd");
    struct ggml_tensor * pos = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 4), "inp_pos");
    struct ggml_tensor * out_ids = input(ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 2), "out_ids");
    struct ggml_tensor * inps[2] = { ggml_get_rows(ctx, tok_embd, tokens), embd };
    struct ggml_cgraph * graph = ggml_new_graph(ctx);
    struct ggml_tensor * cur = ggml_build_forward_select(graph, inps, 2, embd_path ? 1 : 0);
    cur = ggml_add(ctx, cur, ggml_get_rows(ctx, pos_embd, pos));
    cur = ggml_get_rows(ctx, cur, out_ids);
    ggml_set_name(cur, "result");
    ggml_set_output(cur);
    ggml_build_forward_expand(graph, cur);

    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    ggml_backend_sched_t sched = ggml_backend_sched_new(&cpu, NULL, 1, 64, false, true);
    ggml_inspector_attach(sched);
    if (!ggml_backend_sched_alloc_graph(sched, graph)) {
        return 1;
    }
    float tok_values[32], pos_values[64], embd_values[16];
    for (int i = 0; i < 64; i++) {
        pos_values[i] = 0.01f * (float) i;
        if (i < 32) {
            tok_values[i] = 0.1f * (float) i;
        }
    }
    ggml_backend_tensor_set(tok_embd, tok_values, 0, sizeof tok_values);
    ggml_backend_tensor_set(pos_embd, pos_values, 0, sizeof pos_values);
    const int32_t rows[2] = { 1, 3 };
    ggml_backend_tensor_set(out_ids, rows, 0, sizeof rows);
    for (int r = 0; r < computes; r++) {
        const int32_t token_ids[4] = { r + 1, 2, 5, 7 };
        int32_t positions[4];
        for (int i = 0; i < 16; i++) {
            embd_values[i] = 0.5f * (float) i + (float) r;
        }
        for (int i = 0; i < 4; i++) {
            positions[i] = 4 * r + i;
        }
        ggml_backend_tensor_set(tokens, token_ids, 0, sizeof token_ids);
        ggml_backend_tensor_set(embd, embd_values, 0, sizeof embd_values);
        ggml_backend_tensor_set(pos, positions, 0, sizeof positions);
        ggml_inspector_begin(sched);
        printf("compute %d status %d\n", r, (int) ggml_backend_sched_graph_compute(sched, graph));
    }
    ggml_backend_sched_free(sched);
    ggml_backend_free(cpu);
    ggml_free(ctx);
    return 0;
}
