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

from inspector.constants import NUMPY_DTYPE_OF_GGML_TYPE
from inspector.errors import InspectorError
from inspector.ggml.abi import GgmlInitParams
from inspector.ggml.devices import find_device
from inspector.ggml.library import GgmlLibraries, load
from inspector.ggml.signatures import OPS

# enum ggml_backend_buffer_usage: a buffer of weights (the scheduler runs ops where their weights are).
GGML_BACKEND_BUFFER_USAGE_WEIGHTS = 1
# numpy dtype -> enum ggml_type, for the dtypes numpy holds as ggml does.
GGML_TYPE_OF_DTYPE = {np.dtype(dtype): ggml_type for ggml_type, dtype in NUMPY_DTYPE_OF_GGML_TYPE.items()}


class Context:
    """A ggml context whose tensors carry no data of their own (``no_alloc``)."""

    def __init__(self, n_tensors: int, lib: GgmlLibraries | None = None) -> None:
        self.lib = lib or load()
        size = n_tensors * self.lib.base.ggml_tensor_overhead() + 1024 * 1024
        self.address = self.lib.base.ggml_init(GgmlInitParams(size, None, True))
        if not self.address:
            raise InspectorError("ggml_init failed")

    def __getattr__(self, op: str):
        """``ctx.add(a, b)`` calls ``ggml_add(ctx, a, b)``; only the ops whose signatures are declared."""
        if f"ggml_{op}" not in OPS:
            raise AttributeError(f"no declared ggml op ggml_{op} (inspector.ggml.signatures.OPS)")
        function = getattr(self.lib.base, f"ggml_{op}")
        return lambda *args: function(self.address, *args)

    def tensor(self, dtype: np.dtype | str | int, ne: tuple[int, ...], name: str) -> int:
        """A new tensor of numpy ``dtype`` (or ``enum ggml_type`` value) and ggml dimensions ``ne`` (fastest first)."""
        ggml_type = dtype if isinstance(dtype, int) else GGML_TYPE_OF_DTYPE[np.dtype(dtype)]
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


def init_backend(lib: GgmlLibraries, device_name: str | None, threads: int) -> Backend:
    """Initialise the CPU backend (``device_name=None``) or the named ggml device."""
    registry = lib.ggml
    device = find_device(lib, device_name)
    address = registry.ggml_backend_dev_init(device, None)
    if not address:
        raise InspectorError(f"cannot initialise ggml device {device_name or 'CPU'}")
    if device_name is None and lib.cpu is not None:
        lib.cpu.ggml_backend_cpu_set_n_threads(address, threads)
    return Backend(registry.ggml_backend_name(address).decode(), address,
                   registry.ggml_backend_get_default_buffer_type(address))
