"""Load the ggml shared libraries that llama-cpp-python's ``libllama`` links.

Why not ``ctypes.CDLL("libggml.so")``: a wheel install materialises
``libggml.so``, ``libggml.so.0`` and ``libggml.so.0.x.y`` as three separate
files.  ``libllama`` links the SONAME file ``libggml.so.0``; opening any other
copy maps a second ggml with its own backend registry and its own globals, so
an RPC device registered there would be invisible to llama.cpp.  We therefore
import ``llama_cpp`` first (which loads ``libllama`` and, through its RUNPATH,
the SONAME files) and then open exactly those SONAME files by path: the
dynamic loader recognises the already-mapped file and hands back the same
handle.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from inspector.errors import InspectorError

SONAME_GGML_BASE = "libggml-base.so.0"
SONAME_GGML = "libggml.so.0"
SONAME_GGML_RPC = "libggml-rpc.so.0"
SONAME_LLAMA = "libllama.so.0"

RPC_REBUILD_HINT = (
    'CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir --force-reinstall '
    "--no-deps llama-cpp-python==0.3.36"
)

_c = ctypes
_p = ctypes.c_void_p


class GgmlInitParams(ctypes.Structure):
    """``struct ggml_init_params``, passed to ``ggml_init`` by value."""

    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


# name: (restype, argtypes).  Pointers to ggml structs travel as c_void_p.
_BASE_FUNCTIONS: dict[str, tuple[object, list[object]]] = {
    "ggml_init": (_p, [GgmlInitParams]),
    "ggml_free": (None, [_p]),
    "ggml_tensor_overhead": (_c.c_size_t, []),
    "ggml_new_tensor_1d": (_p, [_p, _c.c_int, _c.c_int64]),
    "ggml_new_tensor_2d": (_p, [_p, _c.c_int, _c.c_int64, _c.c_int64]),
    "ggml_new_tensor_3d": (_p, [_p, _c.c_int, _c.c_int64, _c.c_int64, _c.c_int64]),
    "ggml_new_tensor_4d": (_p, [_p, _c.c_int, _c.c_int64, _c.c_int64, _c.c_int64, _c.c_int64]),
    "ggml_set_name": (_p, [_p, _c.c_char_p]),
    "ggml_get_name": (_c.c_char_p, [_p]),
    "ggml_set_input": (None, [_p]),
    "ggml_set_output": (None, [_p]),
    "ggml_set_param": (None, [_p]),
    "ggml_permute": (_p, [_p, _p, _c.c_int, _c.c_int, _c.c_int, _c.c_int]),
    "ggml_transpose": (_p, [_p, _p]),
    "ggml_view_2d": (_p, [_p, _p, _c.c_int64, _c.c_int64, _c.c_size_t, _c.c_size_t]),
    "ggml_add": (_p, [_p, _p, _p]),
    "ggml_mul_mat": (_p, [_p, _p, _p]),
    "ggml_get_data": (_p, [_p]),
    "ggml_nbytes": (_c.c_size_t, [_p]),
    "ggml_nelements": (_c.c_int64, [_p]),
    "ggml_n_dims": (_c.c_int, [_p]),
    "ggml_is_contiguous": (_c.c_bool, [_p]),
    "ggml_is_permuted": (_c.c_bool, [_p]),
    "ggml_blck_size": (_c.c_int64, [_c.c_int]),
    "ggml_type_size": (_c.c_size_t, [_c.c_int]),
    "ggml_type_name": (_c.c_char_p, [_c.c_int]),
    "ggml_is_quantized": (_c.c_bool, [_c.c_int]),
    "ggml_op_name": (_c.c_char_p, [_c.c_int]),
    "ggml_op_desc": (_c.c_char_p, [_p]),
    "ggml_backend_buffer_name": (_c.c_char_p, [_p]),
    "ggml_backend_buffer_is_host": (_c.c_bool, [_p]),
    "ggml_backend_buffer_get_type": (_p, [_p]),
    "ggml_backend_buft_name": (_c.c_char_p, [_p]),
    "ggml_backend_tensor_get": (None, [_p, _p, _c.c_size_t, _c.c_size_t]),
}

# The backend registry and devices live in libggml, not libggml-base.
_REGISTRY_FUNCTIONS: dict[str, tuple[object, list[object]]] = {
    "ggml_backend_dev_count": (_c.c_size_t, []),
    "ggml_backend_dev_get": (_p, [_c.c_size_t]),
    "ggml_backend_dev_name": (_c.c_char_p, [_p]),
    "ggml_backend_dev_description": (_c.c_char_p, [_p]),
    "ggml_backend_dev_type": (_c.c_int, [_p]),
    "ggml_backend_dev_memory": (None, [_p, _c.POINTER(_c.c_size_t), _c.POINTER(_c.c_size_t)]),
    "ggml_backend_register": (None, [_p]),
    "ggml_backend_dev_buffer_type": (_p, [_p]),
    "ggml_backend_dev_backend_reg": (_p, [_p]),
    "ggml_backend_reg_get_proc_address": (_p, [_p, _c.c_char_p]),
}


@dataclass(frozen=True)
class GgmlLibraries:
    """Handles to the ggml libraries shared with llama.cpp.

    ``base`` holds the tensor and backend-buffer API, ``ggml`` the backend
    registry and devices; ``rpc`` is None when the
    llama-cpp-python build has no RPC backend.
    """

    directory: Path
    base: ctypes.CDLL
    ggml: ctypes.CDLL
    rpc: ctypes.CDLL | None

    def require_rpc(self) -> ctypes.CDLL:
        """Return the RPC library, or explain how to rebuild with it."""
        if self.rpc is None:
            raise InspectorError(
                "this llama-cpp-python was built without the ggml RPC backend; "
                f"rebuild it with: {RPC_REBUILD_HINT}"
            )
        return self.rpc


def library_directory() -> Path:
    """The folder llama-cpp-python loads ``libllama`` from (honours LLAMA_CPP_LIB_PATH)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _declare(lib: ctypes.CDLL, table: dict[str, tuple[object, list[object]]]) -> None:
    for name, (restype, argtypes) in table.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


@cache
def load() -> GgmlLibraries:
    """Load (once per process) the ggml libraries that libllama itself uses."""
    try:
        import llama_cpp  # noqa: F401  (loads libllama and its SONAME dependencies)
    except (ImportError, OSError, RuntimeError) as error:
        raise InspectorError(f"cannot load llama-cpp-python: {error}") from None
    directory = library_directory()
    try:
        base = ctypes.CDLL(str(directory / SONAME_GGML_BASE))
        ggml = ctypes.CDLL(str(directory / SONAME_GGML))
    except OSError as error:
        raise InspectorError(f"cannot load ggml from {directory}: {error}") from None
    _declare(base, _BASE_FUNCTIONS)
    _declare(ggml, _REGISTRY_FUNCTIONS)
    _check_tensor_layout(base)
    rpc_path = directory / SONAME_GGML_RPC
    rpc = ctypes.CDLL(str(rpc_path)) if rpc_path.exists() else None
    return GgmlLibraries(directory=directory, base=base, ggml=ggml, rpc=rpc)


def _check_tensor_layout(base: ctypes.CDLL) -> None:
    """Refuse a ggml whose ``struct ggml_tensor`` is not the one we mirror, before reading garbage.

    ``ggml_tensor_overhead()`` is ``sizeof(ggml_object) + sizeof(ggml_tensor)``:
    a field added or removed upstream changes it.
    """
    from inspector.constants import GGML_OBJECT_SIZE
    from inspector.ggml.tensor import GgmlTensorStruct

    expected = ctypes.sizeof(GgmlTensorStruct) + GGML_OBJECT_SIZE
    actual = base.ggml_tensor_overhead()
    if actual != expected:
        raise InspectorError(
            f"the ggml in {SONAME_GGML_BASE} has a struct ggml_tensor of {actual - GGML_OBJECT_SIZE} bytes; "
            f"this ggml-inspector mirrors the {ctypes.sizeof(GgmlTensorStruct)}-byte one of llama-cpp-python 0.3.36"
        )
