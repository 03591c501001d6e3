"""Weights read from the model file, for tensors whose backend buffer cannot be read back.

The CPU backend keeps quantized weights it can multiply faster in an extra
buffer type (``CPU_REPACK``) whose layout is interleaved and which has no
``get_tensor``.  The values are still the file's: the GGUF tensor table gives
each weight's offset, so we read the stored bytes there and materialise them
exactly as a readable buffer would have been (dequantized with gguf.quants).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inspector.ggml.readout import Readout, UnreadableTensor, materialise
from inspector.ggml.tensor import Tensor
from inspector.gguf.header import GgufHeader, read_header, read_tensor_bytes


def contiguous_strides(ne: tuple[int, ...], type_size: int, block_size: int) -> tuple[int, ...]:
    """ggml's byte strides ``nb`` of a contiguous tensor (rows of ``ne[0] / block_size`` blocks)."""
    nb = [type_size, type_size * (ne[0] // block_size)]
    for n in ne[1:3]:
        nb.append(nb[-1] * n)
    return tuple(nb)


class WeightFile:
    """The weights of one GGUF model, located by its header's tensor table.

    The header is parsed on the first read only: most captures never need it,
    and on a 262k-token vocabulary parsing costs tens of milliseconds.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._header: GgufHeader | None = None

    @property
    def header(self) -> GgufHeader:
        if self._header is None:
            self._header = read_header(self.path)
        return self._header

    def holds(self, name: str) -> bool:
        return name in self.header.tensors

    def read(self, name: str, like: Tensor) -> Readout:
        """The file's values of weight ``name``, checked to have the graph tensor's type and shape."""
        info = self.header.tensors.get(name)
        if info is None:
            raise UnreadableTensor(f"weight {name!r} is not in {self.header.path}")
        if info.ggml_type != like.ggml_type or tuple(info.ne) != tuple(like.ne):
            raise UnreadableTensor(
                f"weight {name!r} is {info.type_name} {list(info.ne)} in the file but {like.type_name} "
                f"{list(like.ne)} in the graph")
        raw = np.frombuffer(read_tensor_bytes(self.header, name), dtype=np.uint8)
        nb = contiguous_strides(info.ne, like.type_size, like.block_size)
        return materialise(raw, info.ggml_type, info.ne, nb, like.block_size, like.type_size, like.n_dims)


class WeightFiles:
    """The weights of a run that loaded several GGUF files (a language model and its ``--mmproj``).

    Their tensor names do not overlap (the projector's start with ``v.`` and
    ``mm.``), so a weight is read from the first file that holds it.
    """

    def __init__(self, *paths: str | os.PathLike[str]) -> None:
        self.files = [WeightFile(path) for path in paths]

    def read(self, name: str, like: Tensor) -> Readout:
        for file in self.files:
            if file.holds(name):
                return file.read(name, like)
        raise UnreadableTensor(f"weight {name!r} is in none of {', '.join(str(f.path) for f in self.files)}")
