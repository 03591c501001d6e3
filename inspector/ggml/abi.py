"""Every C struct the package reads or passes by value, mirrored in ctypes in one place.

The layouts are those of the ggml and llama.cpp that ``llama-cpp-python==0.3.36``
vendors (ggml 0.25.3).  ``load`` refuses a ggml whose ``struct ggml_tensor``
has another size (:func:`inspector.ggml.library.load`), and
``tests/test_ggml_binding.py`` checks every field we read against values the
C API reports for tensors it created itself; the native hook mirrors the same
two ggml structs in C (``inspector/native/ggml_inspector_hook.c``).
"""

from __future__ import annotations

import ctypes

from inspector.constants import GGML_MAX_DIMS, GGML_MAX_NAME, GGML_MAX_OP_PARAMS, GGML_MAX_SRC


class GgmlInitParams(ctypes.Structure):
    """``struct ggml_init_params`` (ggml.h), passed to ``ggml_init`` by value."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class GgmlTensorStruct(ctypes.Structure):
    """``struct ggml_tensor`` of ggml 0.25.3 (ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


class GgmlBackendBufferStruct(ctypes.Structure):
    """The head of ``struct ggml_backend_buffer`` (ggml-backend-impl.h): its interface, then its type.

    Read only to learn whether the buffer implements ``get_tensor``: the CPU's
    repacked weight buffers (``CPU_REPACK``) set it to NULL, and
    ``ggml_backend_tensor_get`` would jump there.
    """

    _fields_ = [
        ("free_buffer", ctypes.c_void_p),
        ("get_base", ctypes.c_void_p),
        ("init_tensor", ctypes.c_void_p),
        ("memset_tensor", ctypes.c_void_p),
        ("set_tensor", ctypes.c_void_p),
        ("get_tensor", ctypes.c_void_p),
        ("set_tensor_2d", ctypes.c_void_p),
        ("get_tensor_2d", ctypes.c_void_p),
        ("cpy_tensor", ctypes.c_void_p),
        ("clear", ctypes.c_void_p),
        ("reset", ctypes.c_void_p),
        ("buft", ctypes.c_void_p),
    ]


class GgufInitParams(ctypes.Structure):
    """``struct gguf_init_params`` (gguf.h), passed to ``gguf_init_from_file`` by value."""

    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


class TensorBufferOverride(ctypes.Structure):
    """``struct llama_model_tensor_buft_override`` (llama.h): a regex over tensor names and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]
