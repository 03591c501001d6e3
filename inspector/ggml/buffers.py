"""Tensors that live in backend buffers of their own (weights, caches), apart from a scheduler's compute buffers.

A model's weights and a KV cache must outlive every graph: they are
allocated once, on the backend that computes their layer (the CPU, an RPC
server, a GPU), and graphs only reference them.  The scheduler then runs
each op where its weights are, as llama.cpp's ``n_gpu_layers`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inspector.errors import InspectorError, ModelError
from inspector.ggml.graph import GGML_BACKEND_BUFFER_USAGE_WEIGHTS, Backend, Context, set_data

# The GGUF tensor types (gguf-py's names) every weight may have: ops read them as floats.
SUPPORTED_TYPES = frozenset({"F32", "F16"})
# ...and those a weight that is only multiplied (mul_mat's first operand) or gathered (get_rows) may have
# too: ggml's CPU backend (and so an RPC server) dequantizes them itself.
MATRIX_TYPES = frozenset({*SUPPORTED_TYPES, "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                          "Q5_K", "Q6_K", "IQ4_NL"})


@dataclass(kw_only=True)
class BackendTensors:
    """Named tensors in backend buffers: where each lives, and the contexts and buffers that own them."""

    tensors: dict[str, int] = field(default_factory=dict)
    placement: dict[str, str] = field(default_factory=dict)
    contexts: list[Context] = field(default_factory=list)
    buffers: list[int] = field(default_factory=list)

    def __getitem__(self, name: str) -> int:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelError(f"the GGUF lacks tensor {name!r}") from None

    def allocate(self, backend: Backend, shapes: dict[str, tuple[Any, tuple[int, ...]]]) -> None:
        """New tensors ``name: (dtype, ne)`` in one buffer of ``backend``."""
        if not shapes:
            return
        context = Context(len(shapes) + 1)
        self.contexts.append(context)
        for name, (dtype, ne) in shapes.items():
            self.tensors[name] = context.tensor(dtype, ne, name)
            self.placement[name] = backend.name
        buffer = context.lib.base.ggml_backend_alloc_ctx_tensors_from_buft(context.address, backend.buffer_type)
        if not buffer:
            raise InspectorError(f"cannot allocate {len(shapes)} tensors on {backend.name}")
        context.lib.base.ggml_backend_buffer_set_usage(buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS)
        self.buffers.append(buffer)

    def upload(self, gguf_tensors: Iterable[Any], backend_of: Callable[[str], Backend],
               matrix: Callable[[str], bool] = lambda _name: False) -> None:
        """Allocate gguf-py ``ReaderTensor``s on the backend ``backend_of(name)`` picks, and copy their data.

        A tensor for which ``matrix(name)`` holds (the graph only multiplies or gathers it) may be in any of
        ``MATRIX_TYPES``; every other one must be F32 or F16.
        """
        groups: dict[str, tuple[Backend, list[Any]]] = {}
        for tensor in gguf_tensors:
            allowed = MATRIX_TYPES if matrix(tensor.name) else SUPPORTED_TYPES
            if tensor.tensor_type.name not in allowed:
                raise ModelError(f"tensor {tensor.name} is {tensor.tensor_type.name}; the graph reads it only as "
                                 f"{'/'.join(sorted(allowed))}")
            backend = backend_of(tensor.name)
            groups.setdefault(backend.name, (backend, []))[1].append(tensor)
        for backend, members in groups.values():
            # gguf-py's GGMLQuantizationType values are ggml's enum ggml_type.
            self.allocate(backend, {t.name: (int(t.tensor_type), tuple(int(n) for n in t.shape)) for t in members})
            for tensor in members:
                set_data(self.contexts[-1].lib, self.tensors[tensor.name], np.asarray(tensor.data))

    def clear(self) -> None:
        """Zero every buffer, as llama.cpp clears its KV cache: unwritten positions then read as zeros."""
        for buffer in self.buffers:
            self.contexts[0].lib.base.ggml_backend_buffer_clear(buffer, 0)

    def free(self) -> None:
        for buffer in self.buffers:
            self.contexts[0].lib.base.ggml_backend_buffer_free(buffer)
        for context in self.contexts:
            context.free()
        self.buffers.clear()
        self.contexts.clear()
