"""Read a dump: cheap to open (one index table), tensor data read on demand.

The writer is :mod:`inspector.dump.writer`; the layout both share is
:mod:`inspector.dump.format` and ``docs/format.md``.  Files come from other
people: nothing here unpickles or evaluates, every dataset read is bounded.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from inspector.constants import (
    ALLOWED_HDF5_FILTERS,
    COMPRESSION_FREE_BYTES,
    DEFAULT_MAX_READ_BYTES,
    DUMP_FORMAT_NAME,
    DUMP_FORMAT_VERSION,
    MAX_COMPRESSION_RATIO,
    MAX_SHOWN_VALUES,
    NUMPY_DTYPE_OF_TYPE_NAME,
    STREAM_CHUNK_BYTES,
    WIDENED_DTYPE,
)
from inspector.dump.format import (
    INDEX_DTYPE,
    SAMPLE_ELEMENTS,
    STORED_FULL,
    STORED_STATS,
    TENSORS_DATASET,
    TensorStats,
)
from inspector.errors import DumpError
from inspector.formatting import evaluation_label

__all__ = ["Dump", "Entry", "TensorPreview", "TensorStats", "matches_globs", "open_dump"]
# A table declaring more rows than the file has room for (at this many bytes a row, far below
# a real row) is a crafted file: refuse it before reading allocates for every row.
MIN_ROW_BYTES = 8
STORED_KINDS = (STORED_FULL, STORED_STATS)
# What kind of numpy column each /index column must be for the reader to make sense of it.
_COLUMN_KINDS = {"i": "iu", "b": "biu", "f": "fiu", "O": "OSU"}
# Record fields the presenters read, and their JSON kinds: (field, kind, kind of each item or None).
_RECORD_FIELDS = (("ne", list, int), ("nb", list, int), ("sources", list, str), ("flags", list, str),
                  ("op_params", list, int), ("view_source", str, None), ("buffer", str, None),
                  ("consumer", str, None), ("source_details", list, dict))


def matches_globs(name: str, patterns: list[str]) -> bool:
    """True when a tensor name matches any of the glob patterns (case-sensitive, as ggml names are)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


@dataclass(frozen=True)
class Entry:
    """One row of a dump's index: a captured tensor, without its data."""

    eval_index: int
    node_index: int
    occurrence: int
    seq: int
    name: str
    op: str
    ggml_type: str
    shape: tuple[int, ...]
    buffer: str
    storage: str
    is_leaf: bool
    nbytes: int
    stats: TensorStats
    buffer_type: str = ""
    digest: str = ""
    dtype: str = ""
    # "full": /tensors holds the tensor; "stats": a --stats-only dump holds statistics and a sample.
    stored: str = STORED_FULL
    # Where its stored bytes start in /tensors (``nbytes`` of them).
    offset: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.eval_index, self.name, self.occurrence)



@dataclass(frozen=True)
class TensorPreview:
    """What ``show`` prints of a tensor's values, read without holding the tensor.

    ``head``/``tail``: the first and last values in memory order (no tail when
    the head already holds every value); ``total``: their float64 sum, over
    pieces.
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    head: list[Any]
    tail: list[Any]
    total: float


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _entries_from_rows(rows: np.ndarray, path: Path) -> list[Entry]:
    """Index rows to entries; ``tolist`` once per table, not a numpy field lookup per value."""
    names = rows.dtype.names or ()
    entries = []
    for values in rows.tolist():
        r = dict(zip(names, values, strict=True))
        ndim = int(r["ndim"])
        name = _text(r["name"])
        if not 0 <= ndim <= 4:
            raise DumpError(f"{path}: {name!r} has {ndim} dimensions; ggml has at most 4")
        entries.append(Entry(
            eval_index=int(r["eval"]), node_index=int(r["node"]), occurrence=int(r["occurrence"]), seq=int(r["seq"]),
            name=name, op=_text(r["op"]), ggml_type=_text(r["ggml_type"]),
            shape=tuple(int(n) for n in r["shape"][:ndim]), buffer=_text(r["buffer"]), storage=_text(r["storage"]),
            is_leaf=bool(r["is_leaf"]), nbytes=int(r["nbytes"]),
            stats=TensorStats(float(r["min"]), float(r["max"]), float(r["mean"]), float(r["std"]), int(r["n_nan"]),
                              int(r["n_inf"])),
            buffer_type=_text(r["buffer_type"]), digest=_text(r["digest"]), dtype=_text(r["dtype"]),
            stored=_text(r["stored"]), offset=int(r["offset"]),
        ))
    return entries


def _check_entry(entry: Entry, stream: int, path: Path) -> None:
    """Refuse a row whose sizes disagree with each other or with the stream: one line naming the tensor.

    Every later read trusts what is checked here: the dtype is a plain
    little-endian numpy type matching the ggml type, and ``nbytes`` is exactly
    the shape's bytes (or the sample's, for a stats-only row).
    """
    where = f"{path}: {entry.name!r}"
    if entry.stored not in STORED_KINDS:
        raise DumpError(f"{where} has stored={entry.stored!r}; a dump stores 'full' or 'stats'")
    if entry.offset < 0 or entry.nbytes < 0 or entry.offset + entry.nbytes > stream:
        raise DumpError(f"{where} points outside the stored data")
    if any(n < 0 for n in entry.shape):
        raise DumpError(f"{where} has an impossible shape {entry.shape}")
    expected = NUMPY_DTYPE_OF_TYPE_NAME.get(entry.ggml_type, WIDENED_DTYPE)
    if entry.dtype != expected:
        raise DumpError(f"{where} is ggml type {entry.ggml_type!r} stored as dtype {entry.dtype!r}; "
                        f"the writer stores it as {expected!r}")
    elements = math.prod(entry.shape)
    if entry.stored == STORED_STATS:
        elements = min(elements, SAMPLE_ELEMENTS)
    itemsize = np.dtype(entry.dtype).itemsize
    if elements * itemsize != entry.nbytes:
        raise DumpError(f"{where} declares {entry.nbytes} bytes, but {elements} values of shape {entry.shape} "
                        f"and dtype {entry.dtype} are {elements * itemsize} bytes")


def _column_mismatch(table: h5py.Dataset) -> str:
    """The first /index column whose numpy kind or shape the reader cannot use, as a phrase; "" if none."""
    for name in INDEX_DTYPE.names:
        expected = INDEX_DTYPE.fields[name][0]
        actual = table.dtype.fields[name][0]
        base, actual_base = expected.base, actual.base
        kind_ok = actual_base.kind in _COLUMN_KINDS[base.kind] and actual_base.names is None
        if not kind_ok or actual.shape != expected.shape:
            return f"column {name!r} is {actual}, where this tool reads {expected}"
    return ""


def _filters(dataset: h5py.Dataset) -> dict[int, str]:
    """The HDF5 filters of a dataset, code to name."""
    plist = dataset.id.get_create_plist()
    result = {}
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        result[int(code)] = _text(name)
    return result


def _load_json(value: Any, what: str, path: Path, kind: type = dict) -> Any:
    """A JSON attribute of the expected kind (object or list), or DumpError."""
    try:
        loaded = json.loads(_text(value))
    except (json.JSONDecodeError, TypeError, RecursionError):
        raise DumpError(f"{path}: attribute {what!r} is not valid JSON") from None
    if not isinstance(loaded, kind):
        raise DumpError(f"{path}: attribute {what!r} is not a JSON {kind.__name__}")
    return loaded


class Dump:
    """A dump opened for reading.  Cheap to open; tensor data is read on demand."""

    def __init__(self, path: str | os.PathLike[str], *, max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> None:
        """Open and check the whole index; ``max_compression_ratio`` admits a stream that compresses better.

        A dump from someone else may declare any sizes: every row is checked
        against the bytes the file really stores before anything is read.
        """
        self.path = Path(path)
        self.max_compression_ratio = max_compression_ratio
        if not self.path.exists():
            raise DumpError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise DumpError(f"{self.path} is a folder, not a dump")
        if not self.path.is_file():
            raise DumpError(f"{self.path} is not a regular file (a FIFO or a device), so not a dump")
        if not h5py.is_hdf5(self.path):
            raise DumpError(f"{self.path} is not a ggml-inspector dump (not an HDF5 file)")
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, RuntimeError) as error:
            raise DumpError(f"{self.path} cannot be read (truncated or corrupt HDF5: {error})") from None
        try:
            self._validate()
            self._entries = self._read_entries()
        except DumpError:
            self._file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError, RuntimeError,
                ZeroDivisionError, RecursionError) as error:
            # Files come from other people: whatever a crafted one trips, say it in one line.
            self._file.close()
            raise DumpError(f"{self.path} is damaged: {type(error).__name__}: {error}") from None

    def _validate(self) -> None:
        attrs = self._file.attrs
        if _text(attrs.get("format", "")) != DUMP_FORMAT_NAME:
            raise DumpError(f"{self.path} is an HDF5 file but not a ggml-inspector dump")
        raw_version = attrs.get("format_version", -1)
        version = int(raw_version) if np.ndim(raw_version) == 0 and np.asarray(raw_version).dtype.kind in "iu" else -1
        if version != DUMP_FORMAT_VERSION:
            raise DumpError(f"{self.path} has dump format version {version}; this tool reads {DUMP_FORMAT_VERSION}")
        self.format_version = version
        self.tool_version = _text(attrs.get("tool_version", ""))
        self.created = _text(attrs.get("created", ""))
        complete = attrs.get("complete", False)
        self.complete = isinstance(complete, (bool, np.bool_)) and bool(complete)
        self.incomplete_reason = _text(attrs.get("incomplete_reason", ""))
        self.config: dict[str, Any] = _load_json(attrs.get("config", "{}"), "config", self.path, dict)
        self.system: dict[str, Any] = _load_json(attrs.get("system", "{}"), "system", self.path, dict)
        self.result: dict[str, Any] = _load_json(attrs.get("result", "{}"), "result", self.path, dict)
        self.skipped: list[dict[str, Any]] = _load_json(attrs.get("skipped", "[]"), "skipped", self.path, list)

    def _member(self, parent: h5py.Group, name: str) -> Any:
        """``parent[name]`` through a hard link only: a dump never makes this tool follow a link or open a file.

        A soft link (to itself, to nowhere, to another member) and an external
        link (to another file) are each refused with their own line.
        """
        where = f"{self.path}: {parent.name.rstrip('/')}/{name}"
        link = parent.get(name, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.SoftLink):
            raise DumpError(f"{where} is a soft link to {link.path!r}; a dump holds its members themselves")
        if isinstance(link, h5py.ExternalLink):
            raise DumpError(f"{where} is an external link to {link.filename}:{link.path}; "
                            "a dump never points into another file, and this tool does not follow it")
        if not isinstance(link, h5py.HardLink):
            raise DumpError(f"{where} is a {type(link).__name__}, not a member this tool reads")
        try:
            return parent[name]
        except (KeyError, OSError, RuntimeError, ValueError) as error:
            raise DumpError(f"{where} cannot be opened ({error})") from None

    def _dataset_member(self, name: str) -> h5py.Dataset | None:
        """A root dataset of a dump, or None; a group, external storage or a virtual dataset is refused."""
        member = self._member(self._file, name)
        if member is None:
            return None
        if not isinstance(member, h5py.Dataset):
            raise DumpError(f"{self.path}: /{name} is a {type(member).__name__.lower()}, where a dump holds a dataset")
        if member.is_virtual:
            raise DumpError(f"{self.path}: /{name} is a virtual dataset mapping other files; this tool does not "
                            "open them")
        if member.id.get_create_plist().get_external_count():
            raise DumpError(f"{self.path}: /{name} keeps its data in external files; this tool does not open them")
        return member

    def _check_extent(self, dataset: h5py.Dataset, declared: int, what: str, ratio: float, free: int) -> None:
        """Refuse ``declared`` bytes of ``dataset`` that its stored bytes cannot hold.

        Uncompressed, every declared byte must be stored (HDF5 returns zeros
        for chunks never written, at no cost to the file). Compressed, at most
        ``ratio`` declared bytes per stored byte once over ``free`` bytes.
        """
        if declared <= 0:
            return
        filters = _filters(dataset)
        unknown = sorted(code for code in filters if code not in ALLOWED_HDF5_FILTERS)
        if unknown:
            raise DumpError(f"{self.path}: /{dataset.name.lstrip('/')} uses the HDF5 filter {unknown[0]} "
                            f"({filters[unknown[0]] or 'unnamed'}); a dump uses only gzip or lzf")
        stored = dataset.id.get_storage_size()
        if not filters and declared > stored:
            raise DumpError(f"{self.path}: {what} declares {declared} bytes, but the file stores {stored} of them")
        if filters and declared > max(stored * ratio, free):
            raise DumpError(f"{self.path}: {what} declares {declared} bytes in {stored} compressed bytes, a ratio "
                            f"over {ratio:g}:1 (real captures compress far less; a crafted file claims more than it "
                            "holds). Open it with Dump(path, max_compression_ratio=...) if you made it yourself")

    def _read_entries(self) -> list[Entry]:
        """The index rows: the writer appends a tensor's row only once its bytes are in the file.

        In an incomplete dump, bytes past the last indexed tensor (written
        after the last flush, or half-written when the disk filled) are not
        listed: ``dropped_bytes`` says how many there are.
        """
        for name in ("evals",):
            member = self._member(self._file, name)
            if member is not None and not isinstance(member, h5py.Group):
                raise DumpError(f"{self.path}: /{name} is a dataset, where a dump holds a group")
        index = self._table("index", INDEX_DTYPE.names)
        entries = _entries_from_rows(index[()], self.path) if index is not None else []
        tensors = self._dataset_member(TENSORS_DATASET)
        if tensors is not None and not (tensors.ndim == 1 and tensors.dtype == np.uint8):
            raise DumpError(f"{self.path}: /{TENSORS_DATASET} is not a byte stream (it is {tensors.dtype} of shape "
                            f"{tensors.shape})")
        self._tensors = tensors
        records = self._table("records", None)
        if records is not None and h5py.check_string_dtype(records.dtype) is None and records.dtype.kind != "S":
            raise DumpError(f"{self.path}: /records holds {records.dtype}, where a dump holds JSON strings")
        self._n_records = records.shape[0] if records is not None else 0
        stream = self._tensors.shape[0] if self._tensors is not None else 0
        reach = max((e.offset + e.nbytes for e in entries), default=0)
        self.dropped_bytes = max(0, stream - reach)
        for entry in entries:
            _check_entry(entry, stream, self.path)
        if self._tensors is not None:
            self._check_extent(self._tensors, reach, "the index", self.max_compression_ratio, COMPRESSION_FREE_BYTES)
        entries.sort(key=lambda e: (e.eval_index, e.node_index, e.seq))
        return entries

    def _table(self, name: str, fields: tuple[str, ...] | None) -> h5py.Dataset | None:
        """A one-dimensional table, checked before it is read: its fields and a row count the file can hold."""
        table = self._dataset_member(name)
        if table is None:
            return None
        if table.ndim != 1:
            raise DumpError(f"{self.path}: /{name} is not a table (it has {table.ndim} dimensions)")
        if fields is not None:
            if not set(fields) <= set(table.dtype.names or ()):
                raise DumpError(f"{self.path}: /{name} lacks the columns this tool reads")
            mismatch = _column_mismatch(table)
            if mismatch:
                raise DumpError(f"{self.path}: /{name} {mismatch}")
        if table.shape[0] > max(1, self.path.stat().st_size // MIN_ROW_BYTES):
            raise DumpError(f"{self.path}: /{name} claims {table.shape[0]} rows, more than the file can hold")
        # The writer never compresses its tables: a compressed one gets the stream's ratio, with no free bytes.
        self._check_extent(table, table.shape[0] * table.dtype.itemsize, f"/{name}", self.max_compression_ratio, 0)
        return table

    def _groups(self, parent: Any) -> list[h5py.Group]:
        """Children that are whole groups; a crash can leave a link to an object never written."""
        if not isinstance(parent, h5py.Group):
            return []
        groups = []
        for name in parent:
            if not isinstance(parent.get(name, getlink=True), h5py.HardLink):
                self._member(parent, name)  # refuses a soft or external link, in its own words
            try:
                child = parent[name]
            except (KeyError, OSError, RuntimeError, ValueError):
                continue
            if isinstance(child, h5py.Group):
                groups.append(child)
        return groups

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """Per evaluation: its index, kind and the runner's info (tokens, positions)."""
        result = []
        for group in self._groups(self._member(self._file, "evals")):
            if "index" not in group.attrs or "kind" not in group.attrs:
                continue  # a group whose attributes a crash never wrote
            info = _load_json(group.attrs.get("info", "{}"), "info", self.path)
            try:
                index = int(group.attrs["index"])
            except (TypeError, ValueError):
                raise DumpError(f"{self.path}: evaluation {group.name} has no valid index") from None
            result.append({**info, "index": index, "kind": _text(group.attrs["kind"])})
        return result

    def evaluation_label(self, eval_index: int) -> str:
        """``3 prompt``, ``1 encode``: the index and the kind, how listings and plots name an evaluation."""
        return evaluation_label(eval_index, next((e["kind"] for e in self.evaluations if e["index"] == eval_index), ""))

    def entries(self, patterns: list[str] | None = None) -> list[Entry]:
        """Index rows in execution order, optionally filtered by glob patterns on the name."""
        if not patterns:
            return list(self._entries)
        return [e for e in self._entries if matches_globs(e.name, patterns)]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Distinct tensor names in first-seen execution order."""
        return list(dict.fromkeys(e.name for e in self._entries))

    def find(self, name: str, eval_index: int | None = None, occurrence: int = 0) -> Entry:
        """The entry for (name, evaluation, occurrence); evaluation defaults to the first holding it."""
        for entry in self._entries:
            if entry.name == name and entry.occurrence == occurrence and eval_index in (None, entry.eval_index):
                return entry
        where = f" in evaluation {eval_index}" if eval_index is not None else ""
        raise DumpError(f"{self.path}: no tensor {name!r} (occurrence {occurrence}){where}")

    def read(self, entry: Entry | str, eval_index: int | None = None, occurrence: int = 0,
             max_bytes: int = DEFAULT_MAX_READ_BYTES) -> np.ndarray:
        """Load one whole tensor as numpy, refusing tensors larger than ``max_bytes``.

        For larger tensors, :meth:`iter_chunks` and :meth:`read_range` read
        them in pieces (``ggml-inspector export`` writes one to .npy that way).
        """
        if isinstance(entry, str):
            entry = self.find(entry, eval_index, occurrence)
        self.require_values(entry)
        if entry.nbytes > max_bytes:
            raise DumpError(f"{self.path}: {entry.name!r} holds {entry.nbytes} bytes, over the {max_bytes}-byte "
                            "read limit for a whole tensor; export it (written in pieces) or read it with "
                            "Dump.iter_chunks, or pass a larger max_bytes to Dump.read")
        values = self._stored(entry, 0, entry.nbytes // self._itemsize(entry))
        return values.reshape(entry.shape)

    def sample(self, entry: Entry) -> np.ndarray:
        """The first values of a tensor (all a stats-only dump keeps), flattened."""
        return self.read_range(entry, 0, SAMPLE_ELEMENTS)

    def value_count(self, entry: Entry) -> int:
        """How many values the stream holds for ``entry``: all of them, or a stats-only row's sample."""
        return entry.nbytes // self._itemsize(entry)

    def preview(self, entry: Entry, count: int) -> TensorPreview:
        """The first and last ``count`` values and the sum: ``count`` values read twice, the sum in pieces.

        The tail starts at ``size - count``, not ``-count``: ``flat[-0:]`` is
        every value, so ``-n 0`` would print all of them instead of none.
        """
        self.require_values(entry)
        if count > MAX_SHOWN_VALUES:
            raise DumpError(f"show prints at most {MAX_SHOWN_VALUES} leading and trailing values; export the "
                            "tensor to .npy for all of them")
        size = self.value_count(entry)
        tail = self.read_range(entry, size - count, size).tolist() if size > count else []
        total = math.fsum(float(np.sum(piece, dtype=np.float64)) for piece in self.iter_chunks(entry))
        return TensorPreview(np.dtype(entry.dtype), entry.shape, self.read_range(entry, 0, count).tolist(), tail,
                             total)

    def export_npy(self, entry: Entry, path: str | os.PathLike[str]) -> None:
        """Write a full tensor to a .npy file: the header, then its values piece by piece (memory: one piece)."""
        self.require_values(entry)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(entry.dtype)), "fortran_order": False,
                  "shape": entry.shape}
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for piece in self.iter_chunks(entry):
                handle.write(piece.tobytes())

    def read_range(self, entry: Entry, start: int, stop: int) -> np.ndarray:
        """Stored values ``start:stop`` (flat, C order), clipped to what is stored; only those bytes are read."""
        count = self.value_count(entry)
        start, stop = max(0, min(start, count)), max(0, min(stop, count))
        return self._stored(entry, start, max(start, stop))

    def iter_chunks(self, entry: Entry, chunk_elements: int | None = None) -> Iterator[np.ndarray]:
        """A full tensor's values, flat in C order, in pieces of ``chunk_elements`` (default: 4 MiB of them).

        Memory stays one piece whatever the tensor's size: the way to read a
        tensor over the whole-read limit.
        """
        self.require_values(entry)
        count = self.value_count(entry)
        step = chunk_elements or max(1, STREAM_CHUNK_BYTES // self._itemsize(entry))
        for start in range(0, count, step):
            yield self._stored(entry, start, min(start + step, count))

    def require_values(self, entry: Entry) -> None:
        """Refuse a stats-only row, whose stream holds a sample, where all values are needed."""
        if entry.stored == STORED_STATS:
            raise DumpError(f"{self.path} holds statistics only (--stats-only): {entry.name!r} has no values; "
                            "show and compare use its statistics, digest and first values")

    @staticmethod
    def _itemsize(entry: Entry) -> int:
        return np.dtype(entry.dtype).itemsize  # checked when the dump was opened

    def _stored(self, entry: Entry, start: int, stop: int) -> np.ndarray:
        """Values ``start:stop`` of ``entry``'s stored bytes, as its dtype (the caller keeps them in range)."""
        if self._tensors is None:
            if stop == start:
                return np.empty(0, dtype=np.dtype(entry.dtype))
            raise DumpError(f"{self.path}: the tensor data is missing")
        itemsize = self._itemsize(entry)
        first, last = entry.offset + start * itemsize, entry.offset + stop * itemsize
        try:
            raw = self._tensors[first:last]
        except MemoryError:
            raise DumpError(f"{self.path}: not enough memory to read {last - first} bytes of {entry.name!r}; "
                            "read it in pieces (Dump.iter_chunks)") from None
        except (OSError, ValueError, RuntimeError) as error:
            raise DumpError(f"{self.path}: cannot read {entry.name!r}: {error}") from None
        return raw.view(np.dtype(entry.dtype))

    def metadata(self, entry: Entry) -> dict[str, Any]:
        """Every field stored with a tensor (ne, nb, sources, view source, flags, stats, ...)."""
        if not 0 <= entry.seq < self._n_records:
            raise DumpError(f"{self.path}: the record of {entry.name!r} is missing")
        try:
            text = self._file["records"][entry.seq]
        except (KeyError, IndexError, ValueError):
            raise DumpError(f"{self.path}: the record of {entry.name!r} is missing") from None
        return self._parsed_record(text, entry)

    def metadata_of(self, entries: list[Entry]) -> dict[int, dict[str, Any]]:
        """The records of many entries by seq, read in one pass (compare's origins read hundreds)."""
        if not entries:
            return {}
        if any(not 0 <= entry.seq < self._n_records for entry in entries):
            raise DumpError(f"{self.path}: a record is missing")
        texts = self._file["records"][:]
        return {entry.seq: self._parsed_record(texts[entry.seq], entry) for entry in entries}

    def _parsed_record(self, text: Any, entry: Entry) -> dict[str, Any]:
        try:
            record = json.loads(_text(text))
        except (ValueError, RecursionError):
            raise DumpError(f"{self.path}: the record of {entry.name!r} is not JSON") from None
        if not isinstance(record, dict) or record.get("seq") != entry.seq or record.get("name") != entry.name:
            raise DumpError(f"{self.path}: the record of {entry.name!r} does not match its index row")
        for field, kind, item in _RECORD_FIELDS:
            value = record.get(field)
            if value is not None and not (isinstance(value, kind) and (
                    item is None or all(isinstance(v, item) and not isinstance(v, bool) for v in value))):
                raise DumpError(f"{self.path}: the record of {entry.name!r} has a malformed {field!r}")
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dump(path: str | os.PathLike[str], *, max_compression_ratio: float = MAX_COMPRESSION_RATIO) -> Dump:
    """Open a dump for reading; raises :class:`~inspector.errors.DumpError` for anything else."""
    return Dump(path, max_compression_ratio=max_compression_ratio)
