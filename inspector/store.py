"""The HDF5 dump: one file per run, written tensor by tensor as they are captured.

Layout (``docs/format.md`` is the reference)::

    /                 attrs: format, format_version, tool_version, created,
                             complete, incomplete_reason, config, system, result (JSON)
    /evals/000000     one group per graph evaluation; attrs: index, kind, info (JSON)
    /evals/000000/000017
                      one dataset per captured tensor (named by capture sequence,
                      so any tensor name round-trips); attr ``record``: the
                      TensorRecord + stats as JSON
    /index            compound table, one row per tensor, for fast listing

The writer flushes after every tensor, so a crash or a kill leaves a valid
file with everything captured so far and ``complete=False``; a full disk is
seen coming (:mod:`inspector.disk_space`) and ends the dump the same way.
Every tensor carries a digest of its stored bytes, which is how a reader
tells a half-written dataset from a whole one.
The hook never touches this module's objects: it hands over a copied array and
a :class:`~inspector.record.TensorRecord`, which is what lets writing move to
a thread later without changing the hook.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xxhash

from inspector.constants import (
    DEFAULT_MAX_READ_BYTES,
    DUMP_FORMAT_NAME,
    DUMP_FORMAT_VERSION,
    TOOL_VERSION,
)
from inspector.disk_space import DiskFull, SpaceGuard, describe_errno, disk_full_errno
from inspector.errors import CaptureInterrupted, DumpError, InspectorError
from inspector.record import TensorRecord

_STR = h5py.string_dtype("utf-8")
# Elements per step of the statistics pass (bounds the NaN/Inf masks of a chunk that needs them).
STATS_CHUNK = 1 << 18

INDEX_DTYPE = np.dtype([
    ("eval", "<i4"),
    ("node", "<i4"),
    ("occurrence", "<i4"),
    ("seq", "<i8"),
    ("name", _STR),
    ("op", _STR),
    ("ggml_type", _STR),
    ("ndim", "<i4"),
    ("shape", "<i8", (4,)),
    ("buffer", _STR),
    ("buffer_type", _STR),
    ("storage", _STR),
    ("is_leaf", "?"),
    ("nbytes", "<i8"),
    ("min", "<f8"),
    ("max", "<f8"),
    ("mean", "<f8"),
    ("std", "<f8"),
    ("n_nan", "<i8"),
    ("n_inf", "<i8"),
    ("digest", _STR),
])


@dataclass(frozen=True)
class TensorStats:
    """Summary statistics over the finite elements, plus counts of the rest."""

    min: float
    max: float
    mean: float
    std: float
    n_nan: int
    n_inf: int

    @classmethod
    def of(cls, array: np.ndarray) -> TensorStats:
        """One streaming pass in chunks: float64 accumulators, no 8-byte-per-element temporaries.

        Mean and variance combine per-chunk (mean, M2) pairs (Chan et al.), which
        stays accurate where one running sum of squares would cancel.  A chunk whose
        float32 min and max are finite holds no NaN or Inf, so masks are only
        built for chunks that need them.
        """
        flat = np.asarray(array).reshape(-1)
        count, mean, m2 = 0, 0.0, 0.0
        low, high = math.inf, -math.inf
        n_nan = n_inf = 0
        for start in range(0, flat.size, STATS_CHUNK):
            chunk = flat[start:start + STATS_CHUNK]
            if chunk.dtype.kind == "f":
                chunk_min, chunk_max = chunk.min(), chunk.max()
                if not (math.isfinite(chunk_min) and math.isfinite(chunk_max)):
                    nan_mask = np.isnan(chunk)
                    inf_mask = np.isinf(chunk)
                    n_nan += int(nan_mask.sum())
                    n_inf += int(inf_mask.sum())
                    chunk = chunk[~(nan_mask | inf_mask)]
                    if not chunk.size:
                        continue
                    chunk_min, chunk_max = chunk.min(), chunk.max()
            else:
                chunk_min, chunk_max = chunk.min(), chunk.max()
            size = chunk.size
            # Shifted to the chunk's centre, so a large common offset does not cancel in the
            # sum of squares; the float64 temporary is one chunk, not the tensor.
            centre = (float(chunk_min) + float(chunk_max)) / 2
            shifted = np.subtract(chunk, centre, dtype=np.float64)
            shifted_mean = float(shifted.sum()) / size
            chunk_mean = centre + shifted_mean
            chunk_m2 = max(float(shifted @ shifted) - size * shifted_mean**2, 0.0)
            total = count + size
            delta = chunk_mean - mean
            mean += delta * size / total
            m2 += chunk_m2 + delta * delta * count * size / total
            count = total
            low, high = min(low, float(chunk_min)), max(high, float(chunk_max))
        if count == 0:
            nan = float("nan")
            return cls(nan, nan, nan, nan, n_nan, n_inf)
        return cls(low, high, mean, math.sqrt(m2 / count), n_nan, n_inf)


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: store non-finite statistics as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def matches_globs(name: str, patterns: list[str]) -> bool:
    """True when a tensor name matches any of the glob patterns (case-sensitive, as ggml names are)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _dataset_path(eval_index: int, seq: int) -> str:
    return f"evals/{eval_index:06d}/{seq:06d}"


def digest_of(array: np.ndarray) -> str:
    """xxh3-64 of the array's C-contiguous bytes: fast (~15 GB/s), enough to tell equal from different."""
    return xxhash.xxh3_64_hexdigest(np.ascontiguousarray(array).data)


class DumpWriter:
    """Write captured tensors into a new dump, crash-safely.

    Use as a context manager: leaving the block normally marks the dump
    complete; leaving it through an exception (Ctrl-C included) closes it with
    ``complete=False`` and the exception's description.
    """

    def __init__(self, path: str | os.PathLike[str], config: dict[str, Any],
                 system: dict[str, Any], *, overwrite: bool = False, check_space: bool = True) -> None:
        """``check_space=False`` leaves a full disk to HDF5's own write error (with the reserve to close)."""
        self.path = Path(path)
        self._check_space = check_space
        if self.path.exists() and not overwrite:
            raise InspectorError(f"{self.path} exists; pass --overwrite to replace it")
        parent = self.path.parent
        if not parent.is_dir():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InspectorError(f"cannot create output folder {parent}: {error.strerror}") from None
        if not os.access(parent, os.W_OK):
            raise InspectorError(f"output folder {parent} is not writable")
        self._guard = SpaceGuard(self.path)
        try:
            self._file = h5py.File(self.path, "w")
        except OSError as error:
            self._guard.release()
            raise InspectorError(f"cannot create {self.path}: {error}") from None
        # Set when the disk filled: no further write is attempted.
        self.failure = ""
        attrs = self._file.attrs
        attrs["format"] = DUMP_FORMAT_NAME
        attrs["format_version"] = DUMP_FORMAT_VERSION
        attrs["tool_version"] = TOOL_VERSION
        attrs["created"] = _now()
        attrs["complete"] = False
        attrs["incomplete_reason"] = "capture in progress"
        attrs["config"] = json.dumps(config, sort_keys=True)
        attrs["system"] = json.dumps(system, sort_keys=True)
        attrs["result"] = json.dumps({})
        attrs["skipped"] = json.dumps([])
        self._evals = self._file.create_group("evals")
        self._index = self._file.create_dataset(
            "index", shape=(0,), maxshape=(None,), dtype=INDEX_DTYPE, chunks=(512,))
        self._eval_index = -1
        self._seq = 0
        self.tensor_count = 0
        self.byte_count = 0
        self._file.flush()

    @property
    def current_evaluation(self) -> int:
        return self._eval_index

    def begin_evaluation(self, kind: str, info: dict[str, Any]) -> int:
        """Open the group for the next graph evaluation and return its index."""
        self._eval_index += 1
        group = self._evals.create_group(f"{self._eval_index:06d}")
        group.attrs["index"] = self._eval_index
        group.attrs["kind"] = kind
        group.attrs["info"] = json.dumps(info, sort_keys=True)
        self._file.flush()
        return self._eval_index

    def write(self, record: TensorRecord, array: np.ndarray) -> None:
        """Persist one captured tensor and its index row, then flush.

        Raises :class:`~inspector.disk_space.DiskFull` when the tensor does not
        fit; the dump stays valid and every later write is refused.
        """
        if record.eval_index != self._eval_index:
            raise ValueError(f"record for evaluation {record.eval_index} while {self._eval_index} is open")
        if self.failure:
            raise DiskFull(self.failure)
        try:
            if self._check_space:
                self._guard.check(array.nbytes)
        except DiskFull as full:
            self.failure = str(full)
            raise
        try:
            self._write(record, array)
        except (OSError, RuntimeError) as error:
            code = disk_full_errno(error)
            if code is None:
                raise
            self.failure = describe_errno(code)
            self._guard.release()
            raise DiskFull(self.failure) from None

    def _write(self, record: TensorRecord, array: np.ndarray) -> None:
        seq = self._seq
        self._seq += 1
        stats = TensorStats.of(array)
        digest = digest_of(array)
        dataset = self._file.create_dataset(_dataset_path(record.eval_index, seq), data=array)
        # One JSON attribute rather than one attribute per field: HDF5 attribute
        # creation dominated write time (docs/performance.md).
        dataset.attrs["record"] = json.dumps({**asdict(record), "seq": seq, "digest": digest,
                                              **_finite_or_none(asdict(stats))})
        shape = list(array.shape) + [0] * (4 - array.ndim)
        row = np.array([(
            record.eval_index, record.node_index, record.occurrence, seq, record.name, record.op,
            record.ggml_type, array.ndim, shape, record.buffer, record.buffer_type, record.storage, record.is_leaf,
            array.nbytes, stats.min, stats.max, stats.mean, stats.std, stats.n_nan, stats.n_inf, digest,
        )], dtype=INDEX_DTYPE)
        n = self._index.shape[0]
        self._index.resize((n + 1,))
        self._index[n] = row[0]
        self._file.flush()
        self.tensor_count += 1
        self.byte_count += array.nbytes

    def set_skipped(self, skipped: list[dict[str, Any]]) -> None:
        """Record the selected tensors that could not be captured, with why (an unreadable buffer)."""
        self._file.attrs["skipped"] = json.dumps(skipped, sort_keys=True)
        self._file.flush()

    def set_result(self, result: dict[str, Any]) -> None:
        """Record what the run produced (generated text, timings); kept on interruption too."""
        self._file.attrs["result"] = json.dumps(result, sort_keys=True)
        self._file.flush()

    def close(self, complete: bool, reason: str = "") -> None:
        """Mark the dump complete (or not, with the reason) and close it.

        The space reserve goes first, so that closing after a full disk has
        room to flush HDF5's metadata.
        """
        if not self._file.id.valid:
            return
        self._guard.release()
        try:
            self._file.attrs["complete"] = complete and not self.failure
            self._file.attrs["incomplete_reason"] = "" if complete and not self.failure else (
                reason or self.failure or "unknown")
        except (OSError, RuntimeError) as error:
            raise DumpError(f"{self.path}: could not record why the capture ended ({error}); "
                            "the tensors written so far remain readable") from None
        finally:
            self._file.close()

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close(True)
        elif isinstance(exc, (KeyboardInterrupt, CaptureInterrupted)):
            self.close(False, "interrupted")
        else:
            self.close(False, f"{type(exc).__name__}: {exc}")


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

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.eval_index, self.name, self.occurrence)

    @property
    def dataset_path(self) -> str:
        return _dataset_path(self.eval_index, self.seq)


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)


def _entry_from_row(row: np.void) -> Entry:
    ndim = int(row["ndim"])
    return Entry(
        eval_index=int(row["eval"]), node_index=int(row["node"]), occurrence=int(row["occurrence"]),
        seq=int(row["seq"]), name=_text(row["name"]), op=_text(row["op"]),
        ggml_type=_text(row["ggml_type"]), shape=tuple(int(s) for s in row["shape"][:ndim]),
        buffer=_text(row["buffer"]), storage=_text(row["storage"]), is_leaf=bool(row["is_leaf"]),
        nbytes=int(row["nbytes"]),
        stats=TensorStats(float(row["min"]), float(row["max"]), float(row["mean"]), float(row["std"]),
                          int(row["n_nan"]), int(row["n_inf"])),
        buffer_type=_text(row["buffer_type"]), digest=_text(row["digest"]),
    )


def _record_of(dataset: h5py.Dataset) -> dict[str, Any]:
    try:
        record = json.loads(_text(dataset.attrs["record"]))
    except (KeyError, json.JSONDecodeError):
        raise DumpError(f"dataset {dataset.name} has no valid tensor record") from None
    if not isinstance(record, dict):
        raise DumpError(f"dataset {dataset.name} has no valid tensor record")
    return record


def _stat(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _entry_from_dataset(dataset: h5py.Dataset) -> Entry:
    r = _record_of(dataset)
    return Entry(
        eval_index=int(r["eval_index"]), node_index=int(r["node_index"]), occurrence=int(r["occurrence"]),
        seq=int(r["seq"]), name=str(r["name"]), op=str(r["op"]), ggml_type=str(r["ggml_type"]),
        shape=tuple(int(s) for s in dataset.shape), buffer=str(r["buffer"]), storage=str(r["storage"]),
        is_leaf=bool(r["is_leaf"]), nbytes=int(dataset.size * dataset.dtype.itemsize),
        stats=TensorStats(_stat(r["min"]), _stat(r["max"]), _stat(r["mean"]), _stat(r["std"]),
                          int(r["n_nan"]), int(r["n_inf"])),
        buffer_type=str(r.get("buffer_type", "")), digest=str(r["digest"]),
    )


def _load_json(value: Any, what: str, path: Path) -> Any:
    try:
        return json.loads(_text(value))
    except (json.JSONDecodeError, TypeError):
        raise DumpError(f"{path}: attribute {what!r} is not valid JSON") from None


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
        except (OSError, KeyError, ValueError) as error:
            self._file.close()
            raise DumpError(f"{self.path} is damaged: {error}") from None

    def _validate(self) -> None:
        attrs = self._file.attrs
        if _text(attrs.get("format", "")) != DUMP_FORMAT_NAME:
            raise DumpError(f"{self.path} is an HDF5 file but not a ggml-inspector dump")
        version = int(attrs.get("format_version", -1))
        if version != DUMP_FORMAT_VERSION:
            raise DumpError(f"{self.path} has dump format version {version}; this tool reads {DUMP_FORMAT_VERSION}")
        self.format_version = version
        self.tool_version = _text(attrs.get("tool_version", ""))
        self.created = _text(attrs.get("created", ""))
        self.complete = bool(attrs.get("complete", False))
        self.incomplete_reason = _text(attrs.get("incomplete_reason", ""))
        self.config: dict[str, Any] = _load_json(attrs.get("config", "{}"), "config", self.path)
        self.system: dict[str, Any] = _load_json(attrs.get("system", "{}"), "system", self.path)
        self.result: dict[str, Any] = _load_json(attrs.get("result", "{}"), "result", self.path)
        self.skipped: list[dict[str, Any]] = _load_json(attrs.get("skipped", "[]"), "skipped", self.path)

    def _read_entries(self) -> list[Entry]:
        entries = [_entry_from_row(row) for row in self._file["index"][()]] if "index" in self._file else []
        self.dropped = 0
        if not self.complete:
            # A crash between a dataset's write and its index row leaves rows missing:
            # recover them from the datasets' own records, keeping only those whose
            # data is whole (its digest matches) and dropping half-written ones.
            indexed = {entry.seq for entry in entries}
            for group in self._groups(self._file.get("evals")):
                for dataset in self._datasets(group):
                    entry = self._recover(dataset)
                    if entry is None:
                        self.dropped += 1
                    elif entry.seq not in indexed:
                        entries.append(entry)
        entries.sort(key=lambda e: (e.eval_index, e.node_index, e.seq))
        return entries

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

    @staticmethod
    def _datasets(group: h5py.Group) -> list[Any]:
        """The group's members; those that cannot even be opened count as dropped (None)."""
        members: list[Any] = []
        for name in group:
            try:
                child = group[name]
            except (KeyError, OSError, RuntimeError):
                members.append(None)
                continue
            if isinstance(child, h5py.Dataset):
                members.append(child)
        return members

    @staticmethod
    def _recover(dataset: h5py.Dataset | None) -> Entry | None:
        """The entry of an unindexed dataset whose data reads back with its recorded digest, else None."""
        if dataset is None:
            return None
        try:
            entry = _entry_from_dataset(dataset)
            whole = digest_of(dataset[()]) == entry.digest
        except (DumpError, KeyError, ValueError, TypeError, OSError, RuntimeError):
            return None
        return entry if whole else None

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """Per evaluation: its index, kind and the runner's info (tokens, positions)."""
        result = []
        for group in self._groups(self._file.get("evals")):
            if "index" not in group.attrs or "kind" not in group.attrs:
                continue  # a group whose attributes a crash never wrote
            info = _load_json(group.attrs.get("info", "{}"), "info", self.path)
            result.append({"index": int(group.attrs["index"]), "kind": _text(group.attrs["kind"]), **info})
        return result

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
        try:
            dataset = self._file[entry.dataset_path]
        except KeyError:
            raise DumpError(f"{self.path}: data of {entry.name!r} is missing") from None
        size = dataset.size * dataset.dtype.itemsize
        if size > max_bytes:
            raise DumpError(f"{self.path}: {entry.name!r} holds {size} bytes, over the {max_bytes}-byte read limit")
        try:
            return dataset[()]
        except OSError as error:
            raise DumpError(f"{self.path}: cannot read {entry.name!r}: {error}") from None

    def metadata(self, entry: Entry) -> dict[str, Any]:
        """Every field stored with a tensor (ne, nb, sources, view source, flags, stats, ...)."""
        try:
            return _record_of(self._file[entry.dataset_path])
        except KeyError:
            raise DumpError(f"{self.path}: data of {entry.name!r} is missing") from None

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dump(path: str | os.PathLike[str]) -> Dump:
    """Open a dump for reading; raises :class:`~inspector.errors.DumpError` for anything else."""
    return Dump(path)
