"""Read a dump: cheap to open (one index table), tensor data read on demand.

The writer is :mod:`inspector.dump_writer`; the layout both share is
:mod:`inspector.dump_format` and ``docs/format.md``.  Files come from other
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

from inspector.constants import DEFAULT_MAX_READ_BYTES, DUMP_FORMAT_NAME, DUMP_FORMAT_VERSION
from inspector.dump_format import (
    INDEX_DTYPE,
    SAMPLE_ELEMENTS,
    STORED_FULL,
    STORED_STATS,
    TENSORS_DATASET,
    TensorStats,
)
from inspector.errors import DumpError
from inspector.formatting import evaluation_label

__all__ = ["Dump", "Entry", "TensorStats", "matches_globs", "open_dump"]
# A table declaring more rows than the file has room for (at this many bytes a row, far below
# a real row) is a crafted file: refuse it before reading allocates for every row.
MIN_ROW_BYTES = 8


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



def _text(value: Any) -> str:
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _entries_from_rows(rows: np.ndarray) -> list[Entry]:
    """Index rows to entries; ``tolist`` once per table, not a numpy field lookup per value."""
    names = rows.dtype.names or ()
    entries = []
    for values in rows.tolist():
        r = dict(zip(names, values, strict=True))
        ndim = int(r["ndim"])
        if not 0 <= ndim <= 4:
            raise ValueError(f"a row has {ndim} dimensions")
        entries.append(Entry(
            eval_index=int(r["eval"]), node_index=int(r["node"]), occurrence=int(r["occurrence"]), seq=int(r["seq"]),
            name=_text(r["name"]), op=_text(r["op"]), ggml_type=_text(r["ggml_type"]),
            shape=tuple(int(n) for n in r["shape"][:ndim]), buffer=_text(r["buffer"]), storage=_text(r["storage"]),
            is_leaf=bool(r["is_leaf"]), nbytes=int(r["nbytes"]),
            stats=TensorStats(float(r["min"]), float(r["max"]), float(r["mean"]), float(r["std"]), int(r["n_nan"]),
                              int(r["n_inf"])),
            buffer_type=_text(r["buffer_type"]), digest=_text(r["digest"]), dtype=_text(r["dtype"]),
            stored=_text(r["stored"]), offset=int(r["offset"]),
        ))
    return entries


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DumpError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise DumpError(f"{self.path} is a folder, not a dump")
        if not h5py.is_hdf5(self.path):
            raise DumpError(f"{self.path} is not a ggml-inspector dump (not an HDF5 file)")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise DumpError(f"{self.path} cannot be read (truncated or corrupt HDF5: {error})") from None
        try:
            self._validate()
            self._entries = self._read_entries()
        except DumpError:
            self._file.close()
            raise
        except (OSError, KeyError, ValueError, TypeError, IndexError, OverflowError, AttributeError,
                ZeroDivisionError, RecursionError) as error:
            # Files come from other people: whatever a crafted one trips, say it in one line.
            self._file.close()
            raise DumpError(f"{self.path} is damaged: {type(error).__name__}: {error}") from None

    def _validate(self) -> None:
        attrs = self._file.attrs
        if _text(attrs.get("format", "")) != DUMP_FORMAT_NAME:
            raise DumpError(f"{self.path} is an HDF5 file but not a ggml-inspector dump")
        raw_version = attrs.get("format_version", -1)
        version = int(raw_version) if np.ndim(raw_version) == 0 else -1
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

    def _read_entries(self) -> list[Entry]:
        """The index rows: the writer appends a tensor's row only once its bytes are in the file.

        In an incomplete dump, bytes past the last indexed tensor (written
        after the last flush, or half-written when the disk filled) are not
        listed: ``dropped_bytes`` says how many there are.
        """
        index = self._table("index", INDEX_DTYPE.names)
        entries = _entries_from_rows(index[()]) if index is not None else []
        tensors = self._file.get(TENSORS_DATASET)
        if tensors is not None and not (isinstance(tensors, h5py.Dataset) and tensors.ndim == 1
                                        and tensors.dtype == np.uint8):
            raise DumpError(f"{self.path}: /{TENSORS_DATASET} is not a byte stream")
        self._tensors = tensors
        records = self._table("records", None)
        self._n_records = records.shape[0] if records is not None else 0
        stream = self._tensors.shape[0] if self._tensors is not None else 0
        self.dropped_bytes = max(0, stream - max((e.offset + e.nbytes for e in entries), default=0))
        for entry in entries:
            if entry.offset < 0 or entry.nbytes < 0 or entry.offset + entry.nbytes > stream:
                raise DumpError(f"{self.path}: {entry.name!r} points outside the stored data")
            if len(entry.shape) > 4 or any(n < 0 for n in entry.shape):
                raise DumpError(f"{self.path}: {entry.name!r} has an impossible shape {entry.shape}")
        entries.sort(key=lambda e: (e.eval_index, e.node_index, e.seq))
        return entries

    def _table(self, name: str, fields: tuple[str, ...] | None) -> h5py.Dataset | None:
        """A one-dimensional table, checked before it is read: its fields and a row count the file can hold."""
        table = self._file.get(name)
        if table is None:
            return None
        if not isinstance(table, h5py.Dataset) or table.ndim != 1:
            raise DumpError(f"{self.path}: /{name} is not a table")
        if fields is not None and not set(fields) <= set(table.dtype.names or ()):
            raise DumpError(f"{self.path}: /{name} lacks the columns this tool reads")
        if table.shape[0] > max(1, self.path.stat().st_size // MIN_ROW_BYTES):
            raise DumpError(f"{self.path}: /{name} claims {table.shape[0]} rows, more than the file can hold")
        return table

    @staticmethod
    def _groups(parent: Any) -> list[h5py.Group]:
        """Children that are whole groups; a crash can leave a link to an object never written."""
        if not isinstance(parent, h5py.Group):
            return []
        groups = []
        for name in parent:
            try:
                child = parent[name]
            except (KeyError, OSError, RuntimeError):
                continue
            if isinstance(child, h5py.Group):
                groups.append(child)
        return groups

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """Per evaluation: its index, kind and the runner's info (tokens, positions)."""
        result = []
        for group in self._groups(self._file.get("evals")):
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
        """Load one tensor as numpy, refusing datasets larger than ``max_bytes``."""
        if isinstance(entry, str):
            entry = self.find(entry, eval_index, occurrence)
        if entry.stored == STORED_STATS:
            raise DumpError(f"{self.path} holds statistics only (--stats-only): {entry.name!r} has no values; "
                            "show and compare use its statistics, digest and first values")
        return self._dataset(entry, max_bytes)

    def sample(self, entry: Entry) -> np.ndarray:
        """The first values of a tensor (all a stats-only dump keeps), flattened."""
        return self._dataset(entry, DEFAULT_MAX_READ_BYTES).reshape(-1)[:SAMPLE_ELEMENTS]

    def _dataset(self, entry: Entry, max_bytes: int) -> np.ndarray:
        """The stored bytes of ``entry`` as its dtype and shape (the full shape, or a flat sample)."""
        if entry.nbytes > max_bytes:
            raise DumpError(f"{self.path}: {entry.name!r} holds {entry.nbytes} bytes, over the {max_bytes}-byte "
                            "read limit")
        try:
            dtype = np.dtype(entry.dtype)
        except (TypeError, ValueError):
            raise DumpError(f"{self.path}: {entry.name!r} has an unknown dtype {entry.dtype!r}") from None
        if dtype.kind not in "biuf" or dtype.subdtype is not None or dtype.names or not dtype.itemsize \
                or entry.nbytes % dtype.itemsize:
            raise DumpError(f"{self.path}: {entry.name!r} has {entry.nbytes} bytes of dtype {entry.dtype!r}")
        if self._tensors is None:
            raise DumpError(f"{self.path}: the tensor data is missing")
        try:
            raw = self._tensors[entry.offset:entry.offset + entry.nbytes]
        except (OSError, ValueError) as error:
            raise DumpError(f"{self.path}: cannot read {entry.name!r}: {error}") from None
        values = raw.view(dtype)
        if entry.stored == STORED_FULL:
            if values.size != math.prod(entry.shape):
                raise DumpError(f"{self.path}: {entry.name!r} holds {values.size} values for shape {entry.shape}")
            return values.reshape(entry.shape)
        return values

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
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dump(path: str | os.PathLike[str]) -> Dump:
    """Open a dump for reading; raises :class:`~inspector.errors.DumpError` for anything else."""
    return Dump(path)
