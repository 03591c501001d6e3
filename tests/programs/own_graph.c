/* A program that builds its own graph and computes it on its own ggml_backend_sched, with input leafs.
 * z = relu(w x): x is 4x3, w is 4x5, both inputs set after the scheduler allocated them.
 * Usage: own_graph [--repeat N] [STOP_AT]: with STOP_AT, the program installs its own eval callback, which
 * asks for every node, counts the calls and stops the compute after the node named STOP_AT.  --repeat
 * computes the same graph N times (N evaluations, the same values each time).
 * It prints the counts, the last compute's status and z. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"

struct counts {
    int asked;
    int observed;
    const char * stop_at;
};

static bool count_calls(struct ggml_tensor * t, bool ask, void * user_data) {
    struct counts * counts = user_data;
    if (ask) {
        counts->asked++;
        return true;
    }
    counts->observed++;
    return strcmp(ggml_get_name(t), counts->stop_at) != 0;
}

int main(int argc, char ** argv) {
    long repeat = 1;
    if (argc > 2 && strcmp(argv[1], "--repeat") == 0) {
        repeat = atol(argv[2]);
        argc -= 2;
        argv += 2;
    }
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
    struct counts counts = { 0, 0, argc > 1 ? argv[1] : "" };
    if (argc > 1) {
        ggml_backend_sched_set_eval_callback(sched, count_calls, &counts);
    }
    if (!ggml_backend_sched_alloc_graph(sched, graph)) {
        return 1;
    }
    float xs[12], ws[20], zs[15] = { 0 };
    for (int i = 0; i < 12; i++) {
        xs[i] = 0.25f * (float) i - 1.0f;
    }
    for (int i = 0; i < 20; i++) {
        ws[i] = 0.1f * (float) (i % 7) - 0.3f;
    }
    ggml_backend_tensor_set(x, xs, 0, sizeof xs);
    ggml_backend_tensor_set(w, ws, 0, sizeof ws);
    enum ggml_status status = GGML_STATUS_SUCCESS;
    for (long r = 0; r < repeat; r++) {
        status = ggml_backend_sched_graph_compute(sched, graph);
    }
    ggml_backend_tensor_get(z, zs, 0, sizeof zs);
    printf("status %d asked %d observed %d z", (int) status, counts.asked, counts.observed);
    for (int i = 0; i < 15; i++) {
        printf(" %.9g", zs[i]);
    }
    printf("\n");
    ggml_backend_sched_free(sched);
    ggml_backend_free(cpu);
    ggml_free(ctx);
    return 0;
}
