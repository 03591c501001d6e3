"""The C signature of every ggml and gguf function the package calls, declared once when the libraries load.

ctypes assumes ``int`` for an undeclared result and passes Python ints as
``int``: a pointer or a ``size_t`` would be cut to 32 bits.  So no function
is called before its signature is declared, and all of them are declared
here, per library, by :func:`declare` (from :func:`inspector.ggml.library.load`).
Pointers to ggml's structs travel as ``c_void_p``; structs passed by value
are the mirrors in :mod:`inspector.ggml.abi`.
"""

from __future__ import annotations

import ctypes
from typing import Any

from inspector.ggml.abi import GgmlInitParams, GgufInitParams

_c = ctypes
_p = ctypes.c_void_p
_i = ctypes.c_int
_i64 = ctypes.c_int64
_f = ctypes.c_float
_sz = ctypes.c_size_t
_b = ctypes.c_bool
_s = ctypes.c_char_p

Signatures = dict[str, tuple[Any, list[Any]]]

# libggml-base: tensors, ops, graphs, backend buffers, quantization and the GGUF parser.  A few are called only
# by tests/test_ggml_binding.py, which proves the tensor mirror with them (ggml_get_data, ggml_set_output, ...).
TENSORS: Signatures = {
    "ggml_init": (_p, [GgmlInitParams]),
    "ggml_free": (None, [_p]),
    "ggml_tensor_overhead": (_sz, []),
    "ggml_new_tensor_1d": (_p, [_p, _i, _i64]),
    "ggml_new_tensor_3d": (_p, [_p, _i, _i64, _i64, _i64]),
    "ggml_new_tensor_4d": (_p, [_p, _i, _i64, _i64, _i64, _i64]),
    "ggml_set_name": (_p, [_p, _s]),
    "ggml_get_name": (_s, [_p]),
    "ggml_set_input": (None, [_p]),
    "ggml_set_output": (None, [_p]),
    "ggml_get_data": (_p, [_p]),
    "ggml_nbytes": (_sz, [_p]),
    "ggml_n_dims": (_i, [_p]),
    "ggml_is_contiguous": (_b, [_p]),
    "ggml_blck_size": (_i64, [_i]),
    "ggml_type_size": (_sz, [_i]),
    "ggml_type_name": (_s, [_i]),
    "ggml_is_quantized": (_b, [_i]),
    "ggml_op_name": (_s, [_i]),
    "ggml_op_desc": (_s, [_p]),
    "ggml_quantize_chunk": (_sz, [_i, _p, _p, _i64, _i64, _i64, _p]),
}
# Ops, called as ``Context.<op>(...)`` without the ``ggml_`` prefix and the context (inspector.ggml.graph).
OPS: Signatures = {
    "ggml_add": (_p, [_p, _p, _p]),
    "ggml_mul": (_p, [_p, _p, _p]),
    "ggml_mul_mat": (_p, [_p, _p, _p]),
    "ggml_permute": (_p, [_p, _p, _i, _i, _i, _i]),
    "ggml_view_2d": (_p, [_p, _p, _i64, _i64, _sz, _sz]),
    "ggml_view_3d": (_p, [_p, _p, _i64, _i64, _i64, _sz, _sz, _sz]),
    "ggml_reshape_2d": (_p, [_p, _p, _i64, _i64]),
    "ggml_reshape_3d": (_p, [_p, _p, _i64, _i64, _i64]),
    "ggml_im2col": (_p, [_p, _p, _p, _i, _i, _i, _i, _i, _i, _b, _i]),
    "ggml_get_rows": (_p, [_p, _p, _p]),
    "ggml_tanh": (_p, [_p, _p]),
    "ggml_scale_bias": (_p, [_p, _p, _f, _f]),
    "ggml_norm": (_p, [_p, _p, _f]),
    "ggml_rms_norm": (_p, [_p, _p, _f]),
    "ggml_soft_max_ext": (_p, [_p, _p, _p, _f, _f]),
    "ggml_gelu_erf": (_p, [_p, _p]),
    "ggml_swiglu_split": (_p, [_p, _p, _p]),
    "ggml_concat": (_p, [_p, _p, _p, _i]),
    "ggml_pad": (_p, [_p, _p, _i, _i, _i, _i]),
    "ggml_cont": (_p, [_p, _p]),
    "ggml_dup": (_p, [_p, _p]),
    "ggml_cpy": (_p, [_p, _p, _p]),
    "ggml_repeat": (_p, [_p, _p, _p]),
    "ggml_rope_ext": (_p, [_p, _p, _p, _p, _i, _i, _i, _f, _f, _f, _f, _f, _f]),
}
GRAPHS: Signatures = {
    "ggml_new_graph": (_p, [_p]),
    "ggml_new_graph_custom": (_p, [_p, _sz, _b]),
    "ggml_build_forward_expand": (None, [_p, _p]),
    "ggml_graph_n_nodes": (_i, [_p]),
    "ggml_graph_node": (_p, [_p, _i]),
    "ggml_backend_graph_compute": (_i, [_p, _p]),
}
BUFFERS: Signatures = {
    "ggml_backend_buffer_name": (_s, [_p]),
    "ggml_backend_buffer_get_type": (_p, [_p]),
    "ggml_backend_buft_name": (_s, [_p]),
    "ggml_backend_tensor_get": (None, [_p, _p, _sz, _sz]),
    "ggml_backend_tensor_set": (None, [_p, _p, _sz, _sz]),
    "ggml_backend_tensor_alloc": (_i, [_p, _p, _p]),
    "ggml_backend_alloc_ctx_tensors_from_buft": (_p, [_p, _p]),
    "ggml_backend_buffer_clear": (None, [_p, _c.c_uint8]),
    "ggml_backend_buffer_free": (None, [_p]),
    "ggml_backend_buffer_set_usage": (None, [_p, _i]),
}
GGUF: Signatures = {
    "gguf_init_from_file": (_p, [_s, GgufInitParams]),
    "gguf_free": (None, [_p]),
    "gguf_get_version": (_c.c_uint32, [_p]),
    "gguf_get_alignment": (_sz, [_p]),
    "gguf_get_data_offset": (_sz, [_p]),
    "gguf_get_n_kv": (_i64, [_p]),
    "gguf_get_key": (_s, [_p, _i64]),
    "gguf_get_kv_type": (_i, [_p, _i64]),
    "gguf_get_arr_type": (_i, [_p, _i64]),
    "gguf_get_arr_n": (_sz, [_p, _i64]),
    "gguf_get_arr_data": (_p, [_p, _i64]),
    "gguf_get_arr_str": (_s, [_p, _i64, _sz]),
    "gguf_get_val_str": (_s, [_p, _i64]),
    "gguf_get_val_u8": (_c.c_uint8, [_p, _i64]),
    "gguf_get_val_i8": (_c.c_int8, [_p, _i64]),
    "gguf_get_val_u16": (_c.c_uint16, [_p, _i64]),
    "gguf_get_val_i16": (_c.c_int16, [_p, _i64]),
    "gguf_get_val_u32": (_c.c_uint32, [_p, _i64]),
    "gguf_get_val_i32": (_c.c_int32, [_p, _i64]),
    "gguf_get_val_f32": (_f, [_p, _i64]),
    "gguf_get_val_bool": (_b, [_p, _i64]),
    "gguf_get_val_u64": (_c.c_uint64, [_p, _i64]),
    "gguf_get_val_i64": (_i64, [_p, _i64]),
    "gguf_get_val_f64": (_c.c_double, [_p, _i64]),
    "gguf_get_n_tensors": (_i64, [_p]),
    "gguf_get_tensor_name": (_s, [_p, _i64]),
    "gguf_get_tensor_offset": (_sz, [_p, _i64]),
    "gguf_get_tensor_ne": (_c.POINTER(_i64), [_p, _i64]),
    "gguf_get_tensor_type": (_i, [_p, _i64]),
    "gguf_get_tensor_size": (_sz, [_p, _i64]),
}

# libggml: the backend registry, devices, backends and the scheduler.
DEVICES: Signatures = {
    "ggml_backend_dev_count": (_sz, []),
    "ggml_backend_dev_get": (_p, [_sz]),
    "ggml_backend_dev_name": (_s, [_p]),
    "ggml_backend_dev_description": (_s, [_p]),
    "ggml_backend_dev_type": (_i, [_p]),
    "ggml_backend_dev_memory": (None, [_p, _c.POINTER(_sz), _c.POINTER(_sz)]),
    "ggml_backend_dev_buffer_type": (_p, [_p]),
    "ggml_backend_dev_backend_reg": (_p, [_p]),
    "ggml_backend_dev_init": (_p, [_p, _s]),
    "ggml_backend_register": (None, [_p]),
    "ggml_backend_reg_get_proc_address": (_p, [_p, _s]),
    "ggml_backend_get_default_buffer_type": (_p, [_p]),
    "ggml_backend_free": (None, [_p]),
    "ggml_backend_name": (_s, [_p]),
}
SCHEDULER: Signatures = {
    "ggml_backend_sched_new": (_p, [_c.POINTER(_p), _c.POINTER(_p), _i, _sz, _b, _b]),
    "ggml_backend_sched_free": (None, [_p]),
    "ggml_backend_sched_set_eval_callback": (None, [_p, _p, _p]),
    "ggml_backend_sched_alloc_graph": (_b, [_p, _p]),
    "ggml_backend_sched_graph_compute": (_i, [_p, _p]),
    "ggml_backend_sched_reset": (None, [_p]),
    "ggml_backend_sched_reserve": (_b, [_p, _p]),
    "ggml_backend_sched_get_buffer_size": (_sz, [_p, _p]),
}

# libggml-cpu and libggml-rpc.
CPU: Signatures = {
    "ggml_backend_cpu_set_n_threads": (None, [_p, _i]),
}
RPC: Signatures = {
    "ggml_backend_rpc_add_server": (_p, [_s]),
    "ggml_backend_rpc_start_server": (None, [_s, _s, _sz, _sz, _c.POINTER(_p)]),
}

# Which library each table is declared on (the attribute of GgmlLibraries).
BY_LIBRARY: dict[str, tuple[Signatures, ...]] = {
    "base": (TENSORS, OPS, GRAPHS, BUFFERS, GGUF),
    "ggml": (DEVICES, SCHEDULER),
    "cpu": (CPU,),
    "rpc": (RPC,),
}


def declare(library: ctypes.CDLL, tables: tuple[Signatures, ...]) -> None:
    """Set ``restype`` and ``argtypes`` of every function in ``tables`` on ``library``."""
    for table in tables:
        for name, (restype, argtypes) in table.items():
            function = getattr(library, name)
            function.restype = restype
            function.argtypes = argtypes
