"""Build and compute ggml graphs from Python: contexts, ops, backends and the scheduler.

A thin layer over the C API (as h5py is over HDF5): every op is the ggml
function of the same name, tensors are plain addresses, and names are set
with :meth:`Context.name`.  It exists so that graphs ggml users write in C
(here, the mllama vision encoder) can be rebuilt, hooked and compared
without a compiler.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from inspector.errors import InspectorError
from inspector.ggml.library import GgmlInitParams, GgmlLibraries, load

_c = ctypes
_p = ctypes.c_void_p
_i64 = ctypes.c_int64
_f = ctypes.c_float
_i = ctypes.c_int
_sz = ctypes.c_size_t

OPS: dict[str, tuple[object, list[object]]] = {
    "ggml_im2col": (_p, [_p, _p, _p, _i, _i, _i, _i, _i, _i, _c.c_bool, _i]),
    "ggml_get_rows": (_p, [_p, _p, _p]),
    "ggml_tanh": (_p, [_p, _p]),
    "ggml_scale_bias": (_p, [_p, _p, _f, _f]),
    "ggml_norm": (_p, [_p, _p, _f]),
    "ggml_soft_max_ext": (_p, [_p, _p, _p, _f, _f]),
    "ggml_gelu_erf": (_p, [_p, _p]),
    "ggml_concat": (_p, [_p, _p, _p, _i]),
    "ggml_pad": (_p, [_p, _p, _i, _i, _i, _i]),
    "ggml_view_3d": (_p, [_p, _p, _i64, _i64, _i64, _sz, _sz, _sz]),
    "ggml_cont": (_p, [_p, _p]),
    "ggml_reshape_2d": (_p, [_p, _p, _i64, _i64]),
    "ggml_reshape_3d": (_p, [_p, _p, _i64, _i64, _i64]),
    "ggml_repeat": (_p, [_p, _p, _p]),
    "ggml_mul": (_p, [_p, _p, _p]),
    "ggml_dup": (_p, [_p, _p]),
    "ggml_rms_norm": (_p, [_p, _p, _f]),
    "ggml_rope_ext": (_p, [_p, _p, _p, _p, _i, _i, _i, _f, _f, _f, _f, _f, _f]),
    "ggml_swiglu_split": (_p, [_p, _p, _p]),
    "ggml_cpy": (_p, [_p, _p, _p]),
    "ggml_reshape_4d": (_p, [_p, _p, _i64, _i64, _i64, _i64]),
    "ggml_backend_tensor_alloc": (_i, [_p, _p, _p]),
    "ggml_backend_buffer_clear": (None, [_p, _c.c_uint8]),
    "ggml_new_graph": (_p, [_p]),
    "ggml_backend_graph_compute": (_i, [_p, _p]),
    "ggml_new_graph_custom": (_p, [_p, _sz, _c.c_bool]),
    "ggml_build_forward_expand": (None, [_p, _p]),
    "ggml_backend_alloc_ctx_tensors_from_buft": (_p, [_p, _p]),
    "ggml_backend_tensor_set": (None, [_p, _p, _sz, _sz]),
    "ggml_backend_buffer_free": (None, [_p]),
    "ggml_backend_buffer_set_usage": (None, [_p, _i]),
}
SCHED: dict[str, tuple[object, list[object]]] = {
    "ggml_backend_dev_init": (_p, [_p, _c.c_char_p]),
    "ggml_backend_get_default_buffer_type": (_p, [_p]),
    "ggml_backend_free": (None, [_p]),
    "ggml_backend_name": (_c.c_char_p, [_p]),
    "ggml_backend_sched_new": (_p, [_c.POINTER(_p), _c.POINTER(_p), _i, _sz, _c.c_bool, _c.c_bool]),
    "ggml_backend_sched_free": (None, [_p]),
    "ggml_backend_sched_set_eval_callback": (None, [_p, _p, _p]),
    "ggml_backend_sched_alloc_graph": (_c.c_bool, [_p, _p]),
    "ggml_backend_sched_graph_compute": (_i, [_p, _p]),
    "ggml_backend_sched_reset": (None, [_p]),
    "ggml_backend_sched_reserve": (_c.c_bool, [_p, _p]),
    "ggml_backend_sched_get_buffer_size": (_sz, [_p, _p]),
}
GGML_BACKEND_BUFFER_USAGE_WEIGHTS = 1
DTYPE_TO_GGML = {np.dtype("float32"): 0, np.dtype("float16"): 1, np.dtype("int32"): 26}


def _declare(lib: GgmlLibraries) -> None:
    if getattr(lib.base, "_graph_declared", False):
        return
    for table, handle in ((OPS, lib.base), (SCHED, lib.ggml)):
        for name, (restype, argtypes) in table.items():
            function = getattr(handle, name)
            function.restype = restype
            function.argtypes = argtypes
    lib.base._graph_declared = True


class Context:
    """A ggml context whose tensors carry no data of their own (``no_alloc``)."""

    def __init__(self, n_tensors: int, lib: GgmlLibraries | None = None) -> None:
        self.lib = lib or load()
        _declare(self.lib)
        size = n_tensors * self.lib.base.ggml_tensor_overhead() + 1024 * 1024
        self.address = self.lib.base.ggml_init(GgmlInitParams(size, None, True))
        if not self.address:
            raise InspectorError("ggml_init failed")

    def __getattr__(self, op: str):
        """``ctx.add(a, b)`` calls ``ggml_add(ctx, a, b)``."""
        function = getattr(self.lib.base, f"ggml_{op}")
        return lambda *args: function(self.address, *args)

    def tensor(self, dtype: np.dtype | str, ne: tuple[int, ...], name: str) -> int:
        """A new tensor of numpy ``dtype`` and ggml dimensions ``ne`` (fastest first)."""
        ggml_type = DTYPE_TO_GGML[np.dtype(dtype)]
        dims = list(ne) + [1] * (4 - len(ne))
        address = self.lib.base.ggml_new_tensor_4d(self.address, ggml_type, *dims)
        return self.name(address, name)

    def name(self, address: int, name: str) -> int:
        self.lib.base.ggml_set_name(address, name.encode()[:63])
        return address

    def free(self) -> None:
        if self.address:
            self.lib.base.ggml_free(self.address)
            self.address = None


def set_data(lib: GgmlLibraries, address: int, array: np.ndarray) -> None:
    """Copy a numpy array into an allocated tensor (any backend, RPC included)."""
    data = np.ascontiguousarray(array)
    nbytes = lib.base.ggml_nbytes(address)
    if data.nbytes != nbytes:
        raise InspectorError(f"array of {data.nbytes} bytes for a tensor of {nbytes}")
    lib.base.ggml_backend_tensor_set(address, data.ctypes.data_as(ctypes.c_void_p), 0, nbytes)


@dataclass
class Backend:
    """An initialised ggml backend (CPU, RPC, GPU) and its default buffer type."""

    name: str
    address: int
    buffer_type: int


def find_device(lib: GgmlLibraries, device_name: str | None) -> int:
    """The ggml device named ``device_name``, or the first CPU device for None."""
    registry = lib.ggml
    names = []
    for index in range(registry.ggml_backend_dev_count()):
        candidate = registry.ggml_backend_dev_get(index)
        name = registry.ggml_backend_dev_name(candidate).decode()
        names.append(name)
        if (device_name is None and registry.ggml_backend_dev_type(candidate) == 0) or name == device_name:
            return candidate
    raise InspectorError(f"no ggml device {device_name!r}; available: {', '.join(names)}")


def init_backend(lib: GgmlLibraries, device_name: str | None, threads: int) -> Backend:
    """Initialise the CPU backend (``device_name=None``) or the named ggml device."""
    _declare(lib)
    registry = lib.ggml
    device = find_device(lib, device_name)
    address = registry.ggml_backend_dev_init(device, None)
    if not address:
        raise InspectorError(f"cannot initialise ggml device {device_name or 'CPU'}")
    if device_name is None:
        cpu = ctypes.CDLL(str(lib.directory / "libggml-cpu.so.0"))
        cpu.ggml_backend_cpu_set_n_threads.argtypes = [_p, _i]
        cpu.ggml_backend_cpu_set_n_threads(address, threads)
    return Backend(registry.ggml_backend_name(address).decode(), address,
                   registry.ggml_backend_get_default_buffer_type(address))
