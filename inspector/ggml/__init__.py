"""ctypes binding to the ggml that llama-cpp-python ships (see :mod:`.library`).

The names below load on first use (PEP 562): the CLI imports
:mod:`inspector.ggml.system` to check ``-t`` while parsing options, and
``--help`` must not pay for numpy and gguf-py, which the readout needs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "GgmlLibraries": "inspector.ggml.library",
    "GgmlTensorStruct": "inspector.ggml.abi",
    "Readout": "inspector.ggml.readout",
    "Tensor": "inspector.ggml.tensor",
    "load": "inspector.ggml.library",
    "materialise": "inspector.ggml.readout",
    "numpy_shape": "inspector.ggml.readout",
    "read_tensor": "inspector.ggml.readout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'inspector.ggml' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
