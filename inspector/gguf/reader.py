"""Read whole small GGUF files with ``gguf.GGUFReader``: our own mllama vision models, and tests.

``GGUFReader`` materialises every element of every metadata array, which on a
real model's 262k-token vocabulary takes tens of seconds: anything that opens
a user's model on a hot path uses :mod:`inspector.gguf.header` instead.  Here
it is the right tool: the files are small, and in tests it is a reader
independent of llama.cpp's own.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from inspector.errors import ModelError
from inspector.gguf.header import MAX_LISTED_ARRAY, check_loadable, read_header


def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Parse a GGUF file to load it, or raise ModelError saying why it is not one.

    ``GGUFReader`` trusts the file: an array count of 2^63 or a nested array
    makes it allocate without end, and a tensor offset near 2^64 wraps around
    to the header.  So ggml's C parser judges the file first (bounded, its
    log captured), with our checks that every tensor lies inside the file
    and has no zero dimension; only a file that passes reaches gguf-py.
    """
    header = read_header(path)
    check_loadable(header)
    try:
        return GGUFReader(header.path, "r")
    except (ValueError, IndexError, KeyError, OSError, OverflowError, TypeError) as error:
        raise ModelError(f"{path} is not a valid GGUF file (truncated or corrupt: {error})") from None


def field_value(reader: GGUFReader, key: str) -> Any:
    """A metadata value as plain Python (strings decoded, short arrays as lists)."""
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        if len(field.data) > MAX_LISTED_ARRAY:
            return f"[{len(field.data)} items]"
        return [_scalar(field, index) for index in field.data]
    return _scalar(field, field.data[0])


def _scalar(field: Any, index: int) -> Any:
    part = field.parts[index]
    if field.types[-1] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def tensor_array(reader: GGUFReader, name: str) -> np.ndarray:
    """A tensor's data in numpy (row-major) shape, dequantized to float32 when needed."""
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        if tensor.name == name:
            shape = tuple(reversed([int(n) for n in tensor.shape]))
            return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
    raise ModelError(f"no tensor {name!r} in the model")
