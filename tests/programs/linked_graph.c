/* own_graph.c's graph, z = relu(w x), in a program that has the hook compiled in (link-time use,
 * -DGGML_INSPECTOR_LINKED) and calls it itself: it is never preloaded and never run under exec.
 * Compute r (0, 1, ...) sets x = 0.25 i - 1 + r, so each evaluation holds other values.
 * Usage: linked_graph [COMPUTES [count]]: with "count", the program has an eval callback of its own,
 * set through ggml_inspector_set_eval_callback, which asks for every node and counts the calls.
 * It prints the counts and each compute's status. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "ggml_inspector.h"

struct counts {
    int asked;
    int observed;
};

static bool count_calls(struct ggml_tensor * t, bool ask, void * user_data) {
    struct counts * counts = user_data;
    (void) t;
    if (ask) {
        counts->asked++;
    } else {
        counts->observed++;
    }
    return true;
}

int main(int argc, char ** argv) {
    int computes = argc > 1 ? atoi(argv[1]) : 1;
    struct ggml_init_params params = { 16 * ggml_tensor_overhead() + ggml_graph_overhead(), NULL, true };
    struct ggml_context * ctx = ggml_init(params);
    struct ggml_tensor * x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 3);
    struct ggml_tensor * w = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 4, 5);
    ggml_set_name(x, "x");
    ggml_set_name(w, "w");
    ggml_set_input(x);
    ggml_set_input(w);
    struct ggml_tensor * y = ggml_mul_mat(ctx, w, x);
    ggml_set_name(y, "y");
    struct ggml_tensor * z = ggml_relu(ctx, y);
    ggml_set_name(z, "z");
    ggml_set_output(z);
    struct ggml_cgraph * graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, z);

    ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, NULL);
    ggml_backend_sched_t sched = ggml_backend_sched_new(&cpu, NULL, 1, 64, false, true);
    ggml_inspector_attach(sched);
    struct counts counts = { 0, 0 };
    if (argc > 2 && strcmp(argv[2], "count") == 0) {
        ggml_inspector_set_eval_callback(sched, count_calls, &counts);
    }
    if (!ggml_backend_sched_alloc_graph(sched, graph)) {
        return 1;
    }
    float xs[12], ws[20];
    for (int i = 0; i < 20; i++) {
        ws[i] = 0.1f * (float) (i % 7) - 0.3f;
    }
    ggml_backend_tensor_set(w, ws, 0, sizeof ws);
    for (int r = 0; r < computes; r++) {
        for (int i = 0; i < 12; i++) {
            xs[i] = 0.25f * (float) i - 1.0f + (float) r;
        }
        ggml_backend_tensor_set(x, xs, 0, sizeof xs);
        ggml_inspector_begin(sched);
        printf("compute %d status %d\n", r, (int) ggml_backend_sched_graph_compute(sched, graph));
    }
    printf("asked %d observed %d\n", counts.asked, counts.observed);
    ggml_backend_sched_free(sched);
    ggml_backend_free(cpu);
    ggml_free(ctx);
    return 0;
}
