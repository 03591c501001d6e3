/* The three calls a program makes to the ggml-inspector hook compiled into it (link-time use, for builds
 * that cannot be preloaded: inspector/native/README.md).  C and C++ alike: a llama.cpp fork includes this file. */
#pragma once

#include "ggml-backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Once, right after ggml_backend_sched_new and before anything else on the scheduler: numbers it and
 * installs the hook's eval callback.  What the hook knew of a scheduler at the same address (one freed
 * since) is forgotten. */
void ggml_inspector_attach(ggml_backend_sched_t sched);

/* Before each ggml_backend_sched_graph_compute(_async): one evaluation per call; puts the hook's eval
 * callback back if something replaced it. */
void ggml_inspector_begin(ggml_backend_sched_t sched);

/* Only for a program with an eval callback of its own: in place of ggml_backend_sched_set_eval_callback,
 * same arguments.  The callback is chained in front of the hook's and gets every call it asks for. */
void ggml_inspector_set_eval_callback(ggml_backend_sched_t sched, ggml_backend_sched_eval_callback callback,
                                      void * user_data);

#ifdef __cplusplus
}
#endif
