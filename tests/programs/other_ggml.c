/* Stands in for a different ggml: the scheduler entry points exist, but its ggml_tensor is another size. */
#include <stddef.h>

size_t ggml_tensor_overhead(void) { return 7; }
void * ggml_backend_sched_new(void ** backends, void ** bufts, int n, size_t graph_size, _Bool parallel,
                              _Bool op_offload) {
    (void) backends; (void) bufts; (void) n; (void) graph_size; (void) parallel; (void) op_offload;
    static int scheduler;
    return &scheduler;
}
void ggml_backend_sched_set_eval_callback(void * sched, void * callback, void * user_data) {
    (void) sched; (void) callback; (void) user_data;
}
int ggml_backend_sched_graph_compute(void * sched, void * graph) { (void) sched; (void) graph; return 0; }
void ggml_backend_sched_free(void * sched) { (void) sched; }
