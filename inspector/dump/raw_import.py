"""Bring tensors written by other programs (raw ``fwrite`` dumps, ``.npy``) into the dump format.

A C/C++ port typically debugs by writing a tensor's bytes to a file
(``inp_raw.bin``).  Importing it gives it a name, a shape and a dtype, so it
can be compared with a capture or a reference like any other dump.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from inspector.constants import DEFAULT_MAX_READ_BYTES, NUMPY_DTYPE_OF_TYPE_NAME
from inspector.dump.record import TensorRecord
from inspector.dump.writer import DumpWriter
from inspector.errors import InspectorError
from inspector.files.inputs import check_regular_file

# A .npy preamble: magic (6), version (2), header length (2 in version 1, 4 after); numpy itself refuses
# headers over 10,000 bytes unless told otherwise.
NPY_PREAMBLE_BYTES = 12
NPY_MAX_HEADER_BYTES = 65536


def parse_dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InspectorError(f"dimensions must be comma-separated integers, not {text!r}") from None
    if not dims or any(d < 1 for d in dims) or len(dims) > 4:
        raise InspectorError(f"dimensions must be 1 to 4 positive integers, not {text!r}")
    return dims


def read_raw(path: str | os.PathLike[str], dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Read a headerless little-endian file whose size must match ``shape`` and ``dtype`` exactly."""
    path = Path(path)
    if dtype not in NUMPY_DTYPE_OF_TYPE_NAME:
        raise InspectorError(f"--dtype must be one of {', '.join(NUMPY_DTYPE_OF_TYPE_NAME)}")
    if not path.is_file():
        raise InspectorError(f"{path}: no such file")
    element = np.dtype(NUMPY_DTYPE_OF_TYPE_NAME[dtype])
    expected = math.prod(shape) * element.itemsize
    size = path.stat().st_size
    if size != expected:
        raise InspectorError(f"{path} has {size} bytes, but shape {shape} of {dtype} needs {expected} "
                             f"({size / element.itemsize:.0f} {dtype} elements present)")
    return np.fromfile(path, dtype=element).reshape(shape)


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a .npy without pickle, checking that its header agrees with its size."""
    path = Path(path)
    size = check_regular_file(path, "a .npy file").st_size
    with open(path, "rb") as file:
        head = file.read(NPY_PREAMBLE_BYTES)
    # numpy allocates the header length a file declares before it checks it: check it against the file first.
    if len(head) < NPY_PREAMBLE_BYTES or head[:6] != b"\x93NUMPY" or head[6] not in (1, 2, 3):
        raise InspectorError(f"{path} is not a .npy file (no NUMPY magic and version)")
    header_length = int.from_bytes(head[8:10] if head[6] == 1 else head[8:12], "little")
    if header_length > min(size, NPY_MAX_HEADER_BYTES):
        raise InspectorError(f"{path} declares a {header_length}-byte .npy header in a {size}-byte file")
    if size > DEFAULT_MAX_READ_BYTES:
        raise InspectorError(f"{path} has {size} bytes, over the {DEFAULT_MAX_READ_BYTES}-byte read limit")
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise InspectorError(f"{path} is not a readable .npy file: {error}") from None
    if not isinstance(mapped, np.ndarray) or mapped.dtype.name not in (
            "float32", "float16", "float64", "int8", "int16", "int32", "int64"):
        raise InspectorError(f"{path}: unsupported .npy contents")
    return np.ascontiguousarray(mapped)


def write_arrays(output: str | os.PathLike[str], arrays: dict[str, np.ndarray], kind: str, info: dict[str, Any],
                 config: dict[str, Any], *, overwrite: bool = False, op: str = "NONE") -> Path:
    """Write named arrays as one evaluation of a new dump (preprocessing, imports)."""
    from inspector.ggml.system import host_facts

    with DumpWriter(output, config, host_facts(), overwrite=overwrite) as writer:
        eval_index = writer.begin_evaluation(kind, info)
        for node, (name, array) in enumerate(arrays.items()):
            writer.write(TensorRecord.for_array(name, np.ascontiguousarray(array), eval_index, node, op), array)
    return Path(output)


def read_tensor_file(path: Path, name: str, raw_shape: tuple[int, ...]) -> np.ndarray:
    """One tensor from whatever another program wrote: a dump (by ``name``), a .npy, or raw f32 of ``raw_shape``."""
    import h5py

    from inspector.dump.reader import open_dump

    check_regular_file(path, "a tensor file")  # h5py.is_hdf5 on a FIFO would wait for a writer
    if path.suffix == ".npy":
        return read_npy(path)
    if path.exists() and h5py.is_hdf5(path):
        with open_dump(path) as dump:
            return dump.read(name)
    return read_raw(path, "f32", raw_shape)
