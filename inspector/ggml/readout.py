"""Copy a ggml tensor out of its backend buffer into a numpy array we own.

``ggml_backend_tensor_get`` works for every buffer type (host, GPU, RPC), so
the copy is always: fetch the ``ggml_nbytes`` bytes the tensor spans, then
materialise the logical layout from the byte strides ``nb``.  That handles
permutes, transposes and views whose strides are not the contiguous ones.

Shape convention: the numpy shape is ``ne`` reversed and trimmed to
``ggml_n_dims`` (so ggml ``ne = [n_embd, n_tokens]`` is numpy
``(n_tokens, n_embd)``); numpy's last axis is ggml's fastest one.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from inspector.constants import GGML_TYPE_BF16, MAX_PACKED_ROWS, NUMPY_DTYPE_OF_GGML_TYPE
from inspector.errors import InspectorError
from inspector.ggml.tensor import Tensor
from inspector.ggml.types import quant_type as quant_type_of


@dataclass(frozen=True)
class Readout:
    """A materialised tensor and how its stored dtype relates to the ggml type."""

    array: np.ndarray
    # "native": numpy holds ggml's element type as is; "bf16->f32": exact
    # widening (numpy has no bfloat16); "dequantized": decoded with gguf.quants.
    storage: str


def numpy_shape(ne: tuple[int, ...], n_dims: int) -> tuple[int, ...]:
    """ggml ``ne`` (fastest first) to numpy shape (slowest first), trimmed to ``n_dims``.

    ``ggml_n_dims`` counts a dimension of 0 as absent; an empty tensor (no
    output rows in this ubatch) keeps it, so its shape says why it is empty.
    """
    zero_dims = [i + 1 for i, n in enumerate(ne) if n == 0]
    return tuple(reversed(ne[:max([n_dims, *zero_dims])]))


def packed_strides(ne: tuple[int, ...], block_size: int, type_size: int) -> tuple[int, ...]:
    """The strides of a tensor of shape ``ne`` laid out in C order: rows of whole blocks one after another."""
    row_bytes = ne[0] // block_size * type_size
    return (type_size, row_bytes, row_bytes * ne[1], row_bytes * ne[1] * ne[2])


def packed_rows(ne: tuple[int, ...], nb: tuple[int, ...], block_size: int, type_size: int,
                nbytes: int) -> tuple[int, ...] | None:
    """The packed strides to read a sparse view's rows into, or None to read the bytes it spans.

    Why: a view over part of each row of a larger tensor spans nearly all of
    it: attention's view of a transposed V cache takes ``n_kv`` cells of rows
    ``n_ctx`` long, and at a 32k context reading its span moved 16 MiB per view
    per evaluation for 128 KiB of values.  Rows whose elements are adjacent
    (``nb[0]`` one element) are read one by one instead, when that reads less
    than half the span and at most ``MAX_PACKED_ROWS`` reads.
    """
    rows = ne[1] * ne[2] * ne[3]
    if nb[0] != type_size or ne[0] % block_size or not 0 < rows <= MAX_PACKED_ROWS:
        return None
    packed = packed_strides(ne, block_size, type_size)
    return packed if 2 * packed[1] * rows < nbytes else None


def read_bytes(tensor: Tensor) -> np.ndarray:
    """The raw bytes the tensor spans in its buffer, starting at its first element."""
    nbytes = tensor.nbytes
    raw = np.empty(nbytes, dtype=np.uint8)
    if nbytes:
        tensor.lib.base.ggml_backend_tensor_get(
            tensor.address, raw.ctypes.data_as(ctypes.c_void_p), 0, nbytes
        )
    return raw


def _strided_rows(raw: np.ndarray, ne: tuple[int, ...], nb: tuple[int, ...], row_bytes: int) -> np.ndarray:
    """View ``raw`` as (ne3, ne2, ne1, row_bytes) following the strides nb[1..3]."""
    shape = (ne[3], ne[2], ne[1], row_bytes)
    strides = (nb[3], nb[2], nb[1], 1)
    return np.lib.stride_tricks.as_strided(raw, shape=shape, strides=strides, writeable=False)


def materialise(raw: np.ndarray, ggml_type: int, ne: tuple[int, ...], nb: tuple[int, ...],
                block_size: int, type_size: int, n_dims: int) -> Readout:
    """Turn the spanned bytes of a tensor into a C-contiguous numpy array.

    Kept free of ctypes so it can be tested on byte buffers built by numpy.
    """
    shape = numpy_shape(ne, n_dims)
    if ggml_type in NUMPY_DTYPE_OF_GGML_TYPE or ggml_type == GGML_TYPE_BF16:
        element = np.dtype("<u2") if ggml_type == GGML_TYPE_BF16 else np.dtype(NUMPY_DTYPE_OF_GGML_TYPE[ggml_type])
        count = ne[0] * ne[1] * ne[2] * ne[3]
        if nb == packed_strides(ne, 1, element.itemsize) and raw.size >= count * element.itemsize:
            # Already in C order (most nodes): a view of the bytes, without striding them.
            values = raw.view(np.uint8)[:count * element.itemsize].view(element).reshape(shape)
        else:
            full = np.lib.stride_tricks.as_strided(
                raw.view(np.uint8),
                shape=(ne[3], ne[2], ne[1], ne[0], element.itemsize),
                strides=(nb[3], nb[2], nb[1], nb[0], 1),
                writeable=False,
            )
            values = np.ascontiguousarray(full).view(element).reshape(shape)
        if ggml_type == GGML_TYPE_BF16:
            widened = (values.astype(np.uint32) << 16).view(np.float32)
            return Readout(widened, "bf16->f32")
        return Readout(values, "native")
    if ne[0] % block_size:
        raise InspectorError(f"row length {ne[0]} is not a multiple of the block size {block_size}")
    try:
        quant_type = quant_type_of(ggml_type)
    except ValueError:
        raise InspectorError(f"unknown ggml type {ggml_type}") from None
    from gguf.quants import dequantize  # here, not at the top: see inspector.ggml.types

    rows = np.ascontiguousarray(_strided_rows(raw, ne, nb, ne[0] // block_size * type_size))
    try:
        values = dequantize(rows, quant_type)
    except NotImplementedError:
        raise InspectorError(f"gguf cannot dequantize {quant_type.name}") from None
    return Readout(np.asarray(values, dtype=np.float32).reshape(shape), "dequantized")


class UnreadableTensor(InspectorError):
    """The tensor's buffer cannot be read back (not allocated, or an extra buffer type without get_tensor)."""


def read_tensor(tensor: Tensor) -> Readout:
    """Copy ``tensor`` out of its buffer (GPU, RPC and host alike) and materialise it.

    Raises :class:`UnreadableTensor` instead of calling into a buffer that
    cannot be read: ``ggml_backend_tensor_get`` asserts on a missing buffer
    and jumps to a null pointer on a repacked one.
    """
    reason = tensor.unreadable_reason()
    if reason:
        raise UnreadableTensor(f"tensor {tensor.name!r}: {reason}")
    ne, nb = tensor.ne, tensor.nb
    packed = packed_rows(ne, nb, tensor.block_size, tensor.type_size, tensor.nbytes)
    if packed is None:
        return materialise(read_bytes(tensor), tensor.ggml_type, ne, nb, tensor.block_size, tensor.type_size,
                           tensor.n_dims)
    row_bytes = packed[1]
    raw = np.empty(row_bytes * ne[1] * ne[2] * ne[3], dtype=np.uint8)
    base = raw.ctypes.data
    done = 0
    for i3 in range(ne[3]):
        for i2 in range(ne[2]):
            for i1 in range(ne[1]):
                tensor.lib.base.ggml_backend_tensor_get(tensor.address, ctypes.c_void_p(base + done),
                                                        i1 * nb[1] + i2 * nb[2] + i3 * nb[3], row_bytes)
                done += row_bytes
    return materialise(raw, tensor.ggml_type, ne, packed, tensor.block_size, tensor.type_size, tensor.n_dims)


def row_runs(rows: list[int]) -> list[tuple[int, int]]:
    """Row indices as (first, count) runs of consecutive rows, in the order given: how they are read and recorded."""
    runs: list[list[int]] = []
    for row in rows:
        if runs and row == runs[-1][0] + runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([row, 1])
    return [(first, count) for first, count in runs]


def read_rows(tensor: Tensor, rows: list[int]) -> Readout:
    """Only rows ``rows`` (along ``ne[1]``) of ``tensor``, in that order, as a tensor of ``len(rows)`` rows.

    Why: a KV-cache write (``SET_ROWS``) returns a view of the whole cache,
    ``n_ctx`` rows, of which this evaluation wrote a few; reading the view
    whole makes a dump grow with the context instead of the tokens.  Each
    run of consecutive rows is one ``ggml_backend_tensor_get``.
    """
    reason = tensor.unreadable_reason()
    if reason:
        raise UnreadableTensor(f"tensor {tensor.name!r}: {reason}")
    ne, nb = tensor.ne, tensor.nb
    if ne[2] != 1 or ne[3] != 1 or any(not 0 <= row < ne[1] for row in rows):
        raise InspectorError(f"tensor {tensor.name!r}: rows {rows[:4]}... do not fit ne {list(ne)}")
    row_bytes = tensor.type_size * ne[0] // tensor.block_size
    raw = np.empty(len(rows) * row_bytes, dtype=np.uint8)
    done = 0
    for first, count in row_runs(rows):
        if nb[1] == row_bytes:
            tensor.lib.base.ggml_backend_tensor_get(
                tensor.address, raw[done * row_bytes:].ctypes.data_as(ctypes.c_void_p), first * nb[1],
                count * row_bytes)
        else:
            for row in range(first, first + count):
                tensor.lib.base.ggml_backend_tensor_get(
                    tensor.address, raw[(done + row - first) * row_bytes:].ctypes.data_as(ctypes.c_void_p),
                    row * nb[1], row_bytes)
        done += count
    written, strides = written_layout(tensor, len(rows))
    return materialise(raw, tensor.ggml_type, written, strides, tensor.block_size, tensor.type_size,
                       max(2, tensor.n_dims))


def written_layout(tensor: Tensor, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``ne`` and ``nb`` of ``count`` of the tensor's rows stored one after another: a write's stored tensor."""
    row_bytes = tensor.type_size * tensor.ne[0] // tensor.block_size
    return (tensor.ne[0], count, 1, 1), (tensor.type_size, row_bytes, row_bytes * count, row_bytes * count)
