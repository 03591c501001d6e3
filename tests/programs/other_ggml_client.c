/* A program built against other_ggml.c's "ggml": it schedules and computes a (pretend) graph. */
#include <stddef.h>
#include <stdio.h>

void * ggml_backend_sched_new(void ** backends, void ** bufts, int n, size_t graph_size, _Bool parallel,
                              _Bool op_offload);
int ggml_backend_sched_graph_compute(void * sched, void * graph);
void ggml_backend_sched_free(void * sched);

int main(void) {
    void * sched = ggml_backend_sched_new(NULL, NULL, 0, 0, 0, 0);
    int status = ggml_backend_sched_graph_compute(sched, NULL);
    ggml_backend_sched_free(sched);
    printf("computed %d\n", status);
    return 0;
}
