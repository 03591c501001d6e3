"""Validate and describe GGUF files with ``gguf.GGUFReader`` (no llama.cpp involved).

Checking a file here first turns "llama.cpp returned NULL" into a message that
says what is wrong with the file, and keeps untrusted files away from the
native loader until they at least parse.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from inspector.errors import ModelError

GGUF_MAGIC = b"GGUF"
# Arrays longer than this are summarised (a vocabulary has 100k+ entries).
MAX_LISTED_ARRAY = 16


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str
    ne: tuple[int, ...]
    n_bytes: int
    offset: int


def open_gguf(path: str | os.PathLike[str]) -> GGUFReader:
    """Parse a GGUF file, or raise ModelError saying why it is not one."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a GGUF file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError, OverflowError, TypeError) as error:
        raise ModelError(f"{path} is not a valid GGUF file (truncated or corrupt: {error})") from None
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise ModelError(f"{path} is truncated: tensor {tensor.name!r} ends at byte {end}, file has {size}")
    return reader


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


def metadata(reader: GGUFReader) -> dict[str, Any]:
    """All metadata keys except the GGUF header bookkeeping."""
    return {key: field_value(reader, key) for key in reader.fields if not key.startswith("GGUF.")}


def tensors(reader: GGUFReader) -> list[TensorInfo]:
    return [
        TensorInfo(t.name, t.tensor_type.name, tuple(int(n) for n in t.shape), int(t.n_bytes), int(t.data_offset))
        for t in reader.tensors
    ]


def sha256_of(path: str | os.PathLike[str], chunk: int = 16 * 1024 * 1024) -> str:
    """Hash a (possibly multi-GB) file in bounded memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tensor_array(reader: GGUFReader, name: str) -> np.ndarray:
    """A tensor's data in numpy (row-major) shape, dequantized to float32 when needed."""
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        if tensor.name == name:
            shape = tuple(reversed([int(n) for n in tensor.shape]))
            return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
    raise ModelError(f"no tensor {name!r} in the model")
