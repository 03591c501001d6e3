"""ctypes binding to the ggml that llama-cpp-python ships (see :mod:`.library`)."""

from inspector.ggml.library import GgmlLibraries, load
from inspector.ggml.readout import Readout, materialise, numpy_shape, read_tensor
from inspector.ggml.tensor import GgmlTensorStruct, Tensor

__all__ = [
    "GgmlLibraries",
    "GgmlTensorStruct",
    "Readout",
    "Tensor",
    "load",
    "materialise",
    "numpy_shape",
    "read_tensor",
]
