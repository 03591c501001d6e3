"""Read a GGUF file's header (metadata and tensor table) in O(header), without its arrays.

Why not ``gguf.GGUFReader``: it materialises every element of every metadata
array as a numpy slice, which on a 262,144-token vocabulary costs tens of
seconds before the first node is computed.  ggml's own C parser
(``gguf_init_from_file`` with ``no_alloc``), the one llama.cpp loads models
with, reads the same header in milliseconds and validates it the same way
llama.cpp will; we then ask it only for scalars, array lengths and the
tensor table.  Large arrays stay summarised as :class:`ArraySummary`.

The tensor table also locates weights in the file, which is how the hook
reads weights whose backend buffer cannot be read back (the CPU's repacked
layout).  A capture itself parses no header before llama.cpp loads the model:
it records :func:`read_leading_metadata` and :func:`fingerprint`, both bounded
reads, and parses the tensor table only if a weight turns out unreadable.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from inspector.errors import ModelError
from inspector.files.inputs import open_regular_file

GGUF_MAGIC = b"GGUF"
# Arrays up to this length are returned as lists; longer ones as ArraySummary.
MAX_LISTED_ARRAY = 16
# What a model's fingerprint reads: the start (header and tensor table) and the end of the file.
FINGERPRINT_HEAD_BYTES = 16 * 1024 * 1024
FINGERPRINT_TAIL_BYTES = 64 * 1024
# The sha256 cache is a small JSON file; a larger one is not ours to parse.
MAX_SHA256_CACHE_BYTES = 4 * 1024 * 1024
# How far read_leading_metadata looks for the scalar keys a dump records.
LEADING_METADATA_BYTES = 64 * 1024
# ggml's reason for refusing a file, quoted in our one line, is cut here (it can quote a 64 KiB key).
MAX_REASON_CHARS = 200

GGUF_TYPE_STRING = 8
GGUF_TYPE_ARRAY = 9
# gguf_type -> the suffix of its getter, gguf_get_val_<suffix> (declared in inspector.ggml.signatures).
_SCALAR_GETTERS = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 10: "u64",
                   11: "i64", 12: "f64"}
_ARRAY_ELEMENT = {0: ctypes.c_uint8, 1: ctypes.c_int8, 2: ctypes.c_uint16, 3: ctypes.c_int16, 4: ctypes.c_uint32,
                  5: ctypes.c_int32, 6: ctypes.c_float, 7: ctypes.c_bool, 10: ctypes.c_uint64, 11: ctypes.c_int64,
                  12: ctypes.c_double}
_STRUCT_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_TYPE_NAMES = {0: "u8", 1: "i8", 2: "u16", 3: "i16", 4: "u32", 5: "i32", 6: "f32", 7: "bool", 8: "str",
               10: "u64", 11: "i64", 12: "f64"}


@dataclass(frozen=True)
class ArraySummary:
    """A metadata array too long to list (a vocabulary): its element type and length only."""

    element_type: str
    length: int

    def __str__(self) -> str:
        return f"[{self.length} items]"


@dataclass(frozen=True)
class TensorInfo:
    """One row of the tensor table; ``offset`` is absolute in the file."""

    name: str
    ggml_type: int
    type_name: str
    ne: tuple[int, ...]  # all four ggml dimensions
    n_bytes: int
    offset: int

    @property
    def shape(self) -> tuple[int, ...]:
        """``ne`` without trailing 1s (at least one dimension), as GGUF lists it."""
        dims = list(self.ne)
        while len(dims) > 1 and dims[-1] == 1:
            dims.pop()
        return tuple(dims)


@dataclass
class GgufHeader:
    path: Path
    size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def _value(base: ctypes.CDLL, ctx: int, key_id: int) -> Any:
    kv_type = base.gguf_get_kv_type(ctx, key_id)
    if kv_type == GGUF_TYPE_STRING:
        return _text(base.gguf_get_val_str(ctx, key_id))
    if kv_type in _SCALAR_GETTERS:
        value = getattr(base, f"gguf_get_val_{_SCALAR_GETTERS[kv_type]}")(ctx, key_id)
        return float(value) if kv_type in (6, 12) else value
    if kv_type != GGUF_TYPE_ARRAY:
        return None
    element = base.gguf_get_arr_type(ctx, key_id)
    length = base.gguf_get_arr_n(ctx, key_id)
    if length > MAX_LISTED_ARRAY:
        return ArraySummary(_TYPE_NAMES.get(element, "array"), length)
    if element == GGUF_TYPE_STRING:
        return [_text(base.gguf_get_arr_str(ctx, key_id, i)) for i in range(length)]
    if element not in _ARRAY_ELEMENT:
        return ArraySummary(_TYPE_NAMES.get(element, "array"), length)
    data = base.gguf_get_arr_data(ctx, key_id)
    values = (_ARRAY_ELEMENT[element] * length).from_address(data) if length else []
    return [float(v) if element in (6, 12) else v for v in values]


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """The path, after checking it is a regular file that starts with GGUF's magic; else ModelError saying why.

    A FIFO or a device is refused before it is opened (reading one would hang).
    """
    path = Path(path)
    with open_regular_file(path, "a GGUF file", ModelError) as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
    return path


def _parse_with_ggml(base: ctypes.CDLL, path: Path) -> int:
    """ggml's context for the header, its own log captured; else ModelError quoting ggml's reason.

    ggml's parser bounds every count, length and offset by the file (an
    array of 2^63 elements, a nested array, a key of 2^63 bytes, a tensor
    offset that wraps around), which is why it, not gguf-py, judges a file first.
    """
    from inspector.ggml.abi import GgufInitParams
    from inspector.ggml.log import captured_log  # imports llama_cpp, as the parser's library does

    with captured_log() as log:
        ctx = base.gguf_init_from_file(os.fsencode(path), GgufInitParams(True, None))
    if not ctx:
        reason = _ggml_reason(log.lines)
        raise ModelError(f"{path} is not a valid GGUF file (ggml's parser rejected it: "
                         f"{reason or 'truncated or corrupt'})")
    return ctx


def _ggml_reason(lines: Iterable[str]) -> str:
    """ggml's most specific complaint (else its first), without the function-name prefix or control characters."""
    texts = [re.sub(r"^[A-Za-z_][\w:]*: ", "", line) for line in lines]
    generic = ("failed to read", "failed to load", "failed to initialize")
    chosen = next((text for text in texts if not text.startswith(generic)), texts[0] if texts else "")
    return "".join(c if c.isprintable() else "?" for c in chosen)[:MAX_REASON_CHARS]


def read_header(path: str | os.PathLike[str]) -> GgufHeader:
    """Parse a GGUF file's header with ggml's parser, or raise ModelError saying why it is not one.

    Every tensor's data must lie inside the file (offsets summed as Python
    integers, which cannot wrap around).
    """
    from inspector.ggml import load  # the C parser lives in libggml-base, loaded with llama.cpp

    path = check_gguf_file(path)
    size = path.stat().st_size
    base = load().base
    ctx = _parse_with_ggml(base, path)
    try:
        header = GgufHeader(path=path, size=size, version=base.gguf_get_version(ctx),
                            alignment=base.gguf_get_alignment(ctx), data_offset=base.gguf_get_data_offset(ctx))
        for key_id in range(base.gguf_get_n_kv(ctx)):
            header.metadata[_text(base.gguf_get_key(ctx, key_id))] = _value(base, ctx, key_id)
        type_name = base.ggml_type_name
        for tensor_id in range(base.gguf_get_n_tensors(ctx)):
            name = _text(base.gguf_get_tensor_name(ctx, tensor_id))
            ne_pointer = base.gguf_get_tensor_ne(ctx, tensor_id)
            ggml_type = base.gguf_get_tensor_type(ctx, tensor_id)
            info = TensorInfo(
                name=name, ggml_type=ggml_type, type_name=_text(type_name(ggml_type)),
                ne=tuple(int(ne_pointer[i]) for i in range(4)),
                n_bytes=int(base.gguf_get_tensor_size(ctx, tensor_id)),
                offset=header.data_offset + int(base.gguf_get_tensor_offset(ctx, tensor_id)),
            )
            if info.offset + info.n_bytes > size:
                raise ModelError(f"{path} is truncated: tensor {name!r} ends at byte {info.offset + info.n_bytes}, "
                                 f"file has {size}")
            header.tensors[name] = info
    finally:
        base.gguf_free(ctx)
    return header


def check_loadable(header: GgufHeader) -> None:
    """Refuse a tensor with a zero dimension: ggml builds no op on it (it asserts), so a graph must never see one."""
    for info in header.tensors.values():
        if 0 in info.ne:
            raise ModelError(f"{header.path}: tensor {info.name!r} has a zero dimension (ne {list(info.shape)}); "
                             "a model's tensors have at least one element")


def read_tensor_bytes(header: GgufHeader, name: str) -> bytes:
    """The stored bytes of one tensor, read at its offset (bounded by the table, checked against the file)."""
    info = header.tensors[name]
    with open(header.path, "rb") as handle:
        data = os.pread(handle.fileno(), info.n_bytes, info.offset)
    if len(data) != info.n_bytes:
        raise ModelError(f"{header.path}: tensor {name!r} is truncated (read {len(data)} of {info.n_bytes} bytes)")
    return data


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap model identity: xxh3-128 of the file size, its first 16 MiB and its last 64 KiB.

    The first 16 MiB hold the whole header (metadata and tensor table) of
    any real model, so a different conversion changes it; the time is bounded
    whatever the file's size (a few ms), instead of a minute of sha256 for a
    40 GB model.  A weight retouched inside the data section is what the full
    sha256 (``sha256_of``) is for.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = xxhash.xxh3_128()
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        head = os.pread(handle.fileno(), min(size, FINGERPRINT_HEAD_BYTES), 0)
        digest.update(head)
        tail_start = max(len(head), size - FINGERPRINT_TAIL_BYTES)
        digest.update(os.pread(handle.fileno(), size - tail_start, tail_start))
    return digest.hexdigest()


def _skip_array(data: bytes, offset: int) -> int:
    """The offset after the array value at ``offset``, or past ``len(data)`` when it does not end within ``data``."""
    element_type, count = struct.unpack_from("<IQ", data, offset)
    offset += 12
    if element_type in _STRUCT_FORMATS:
        return offset + count * struct.calcsize(_STRUCT_FORMATS[element_type])
    if element_type != GGUF_TYPE_STRING or count > len(data):
        return len(data) + 1
    for _ in range(count):
        if offset + 8 > len(data):
            return len(data) + 1
        offset += 8 + struct.unpack_from("<Q", data, offset)[0]
    return offset


def read_leading_metadata(path: str | os.PathLike[str], keys: tuple[str, ...],
                          max_bytes: int = LEADING_METADATA_BYTES) -> dict[str, Any]:
    """Scalar metadata values among the keys at the start of the file, reading at most ``max_bytes``.

    Converters write ``general.*`` keys and hyperparameters (``general.file_type``
    among them) first and the vocabulary arrays after them, so the keys a dump
    records are read in microseconds.  An array is skipped when it ends within
    the bound (``general.tags``, before ``general.file_type`` in most converted
    models); the scan stops at the first one that does not (the vocabulary), or
    at the bound, rather than walking O(vocabulary).  A key not found by then is
    absent.
    """
    with open(path, "rb") as handle:
        data = handle.read(max_bytes)
    found: dict[str, Any] = {}
    if data[:4] != GGUF_MAGIC or len(data) < 24:
        return found
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    offset = 24
    try:
        for _ in range(n_kv):
            (key_length,) = struct.unpack_from("<Q", data, offset)
            key = data[offset + 8:offset + 8 + key_length].decode("utf-8", errors="replace")
            offset += 8 + key_length
            (value_type,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if value_type == GGUF_TYPE_STRING:
                (length,) = struct.unpack_from("<Q", data, offset)
                if offset + 8 + length > len(data):
                    break
                value: Any = data[offset + 8:offset + 8 + length].decode("utf-8", errors="replace")
                offset += 8 + length
            elif value_type in _STRUCT_FORMATS:
                value = struct.unpack_from(_STRUCT_FORMATS[value_type], data, offset)[0]
                offset += struct.calcsize(_STRUCT_FORMATS[value_type])
            elif value_type == GGUF_TYPE_ARRAY:
                offset = _skip_array(data, offset)
                if offset > len(data):
                    break  # the vocabulary, or another array past the bound: not worth walking
                continue
            else:
                break
            if key in keys:
                found[key] = value
                if len(found) == len(keys):
                    break
    except struct.error:
        pass  # ran past the bound
    return found


def sha256_of(path: str | os.PathLike[str], chunk: int = 16 * 1024 * 1024) -> str:
    """Hash a (possibly multi-GB) file in bounded memory: the full identity, on request."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ggml-inspector" / "sha256.json"


def cached_sha256(path: str | os.PathLike[str]) -> str:
    """The file's sha256, computed once per (path, size, mtime) and kept in the user's cache folder.

    A 40 GB model hashes in about a minute; a sweep of ten configurations
    should pay that once, not ten times.  A cache that cannot be read or
    written is ignored (the hash is then simply computed).
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = sha256_cache_path()
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.stat().st_size < MAX_SHA256_CACHE_BYTES else {}
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}
    value = cache.get(key)
    if isinstance(value, str) and len(value) == 64:
        return value
    value = sha256_of(resolved)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{resolved}|")}
    cache[key] = value
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(cache))
        temporary.replace(cache_file)
    except OSError:
        pass
    return value
