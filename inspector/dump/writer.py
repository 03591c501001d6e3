"""Write a dump: tensors as they are captured, made durable at flushes.

Why flushes and not a flush per tensor: HDF5's flush writes every dirty piece
of metadata, and doing that after each of 6,000 tensors cost more than the
run being captured.  The writer flushes at every evaluation boundary and at
least every ``FLUSH_INTERVAL_S`` seconds; tensor bytes are appended to the
``/tensors`` stream in blocks of up to ``BLOCK_BYTES``, and a tensor's index
row and record are appended only once its bytes are in the file.  Between flushes HDF5 keeps the new
metadata in its cache (sized so that it is not evicted early), so the file
on disk stays the one of the last flush: a crash or ``kill -9`` at any moment
leaves a file that opens and holds every tensor up to the last flush.

A full disk is seen coming (:mod:`inspector.files.disk_space`) and ends the dump
the same way, marked incomplete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import orjson

from inspector.constants import DUMP_FORMAT_NAME, DUMP_FORMAT_VERSION, TOOL_VERSION
from inspector.dump.format import (
    CHUNK_BYTES,
    INDEX_DTYPE,
    NO_COMPRESSION,
    SAMPLE_ELEMENTS,
    STORED_FULL,
    STORED_STATS,
    STR_DTYPE,
    TENSORS_DATASET,
    Compression,
    StatsOf,
    TensorStats,
    digest_of,
)
from inspector.dump.record import TensorRecord
from inspector.errors import CaptureInterrupted, DumpError, InspectorError
from inspector.files.disk_space import DiskFull, SpaceGuard, describe_errno, disk_full_errno
from inspector.files.outputs import discard_in_background, recorded_inputs, refuse_inputs

FLUSH_INTERVAL_S = 1.0
# Rows per chunk of /index and /records: small enough that growing them fits the space reserve.
INDEX_CHUNK_ROWS = 256
# Small tensors are gathered into blocks of this size before they are appended to /tensors.
BLOCK_BYTES = 8 * 1024 * 1024
_ROW_OFFSET = INDEX_DTYPE.names.index("offset")
_ROW_NBYTES = INDEX_DTYPE.names.index("nbytes")
# HDF5 metadata cache: large enough that new metadata waits in memory for the next flush.
METADATA_CACHE_BYTES = 64 * 1024 * 1024


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: store non-finite statistics as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _record_json(fields: dict[str, Any]) -> str:
    """A tensor's record as JSON: orjson's (8x the standard library's, which cost a capture-all 40 us a tensor),
    or the standard library's for what orjson refuses (an integer past 64 bits from a forged stream)."""
    try:
        return orjson.dumps(fields).decode("utf-8")
    except TypeError:
        return json.dumps(fields)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _hold_metadata_until_flush(handle: h5py.File) -> None:
    config = handle.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = METADATA_CACHE_BYTES
    config.min_size = METADATA_CACHE_BYTES
    config.max_size = METADATA_CACHE_BYTES
    handle.id.set_mdc_config(config)


class DumpWriter:
    """Write captured tensors into a new dump, crash-safely.

    Use as a context manager: leaving the block normally marks the dump
    complete; leaving it through an exception (Ctrl-C included) closes it with
    ``complete=False`` and the exception's description.  ``stats_only``
    stores per tensor its statistics, digest and first values instead of the
    data; ``compression`` applies to tensor datasets. An output that is one of
    the files ``config`` records as the run's inputs is refused, ``overwrite``
    or not.  ``stats_of`` computes each tensor's statistics: numpy's by
    default, the native hook's C function where a caller has it
    (:mod:`inspector.native.tensor_stats`).
    """

    def __init__(self, path: str | os.PathLike[str], config: dict[str, Any], system: dict[str, Any], *,
                 overwrite: bool = False, check_space: bool = True, compression: Compression = NO_COMPRESSION,
                 stats_only: bool = False, stats_of: StatsOf = TensorStats.of) -> None:
        """``check_space=False`` leaves a full disk to HDF5's own write error (with the reserve to close)."""
        self.path = Path(path)
        self._check_space = check_space
        self.compression = compression
        self.stats_only = stats_only
        self._stats_of = stats_of
        # Before anything is created: opening with "w" would truncate an input the run is about to read.
        refuse_inputs(self.path, recorded_inputs(config))
        if self.path.exists() and not overwrite:
            raise InspectorError(f"{self.path} exists; pass --overwrite to replace it")
        # The dump it replaces is freed meanwhile; its space counts as free from the first check on.
        self._discarding = discard_in_background(self.path) if self.path.exists() else None
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
            # No chunk cache: a failed write must not leave dirty chunks for HDF5 to retry at close.
            self._file = h5py.File(self.path, "w", rdcc_nbytes=0)
        except OSError as error:
            self._guard.release()
            raise InspectorError(f"cannot create {self.path}: {error}") from None
        _hold_metadata_until_flush(self._file)
        # Set when the disk filled: no further write is attempted.
        self.failure = ""
        attrs = self._file.attrs
        attrs["format"] = DUMP_FORMAT_NAME
        attrs["format_version"] = DUMP_FORMAT_VERSION
        attrs["tool_version"] = TOOL_VERSION
        attrs["created"] = _now()
        attrs["complete"] = False
        attrs["incomplete_reason"] = "capture in progress"
        attrs["config"] = json.dumps({**config, "storage": {"stats_only": stats_only,
                                                            "compression": asdict(compression)}}, sort_keys=True)
        attrs["system"] = json.dumps(system, sort_keys=True)
        attrs["result"] = json.dumps({})
        attrs["skipped"] = json.dumps([])
        self._evals = self._file.create_group("evals")
        self._index = self._file.create_dataset(
            "index", shape=(0,), maxshape=(None,), dtype=INDEX_DTYPE, chunks=(INDEX_CHUNK_ROWS,))
        self._records = self._file.create_dataset(
            "records", shape=(0,), maxshape=(None,), dtype=STR_DTYPE, chunks=(INDEX_CHUNK_ROWS,))
        self._tensors = self._file.create_dataset(
            TENSORS_DATASET, shape=(0,), maxshape=(None,), dtype=np.uint8, **compression.dataset_options())
        # Tensors whose bytes wait in the block (not in the file yet), and those whose bytes are
        # in the file but whose rows wait for the next flush.
        self._block: list[np.ndarray] = []
        self._block_bytes = 0
        self._unwritten: list[tuple[list[Any], str]] = []
        self._pending_rows: list[tuple[Any, ...]] = []
        self._pending_records: list[str] = []
        self._rows = 0  # rows in /index (and records in /records) on disk
        self._eval_index = -1
        self._seq = 0
        self.tensor_count = 0
        self.byte_count = 0
        try:
            self.flush()
        except BaseException:
            # No tensor yet, so no dump: an HDF5 file left open here would retry its failed write
            # when Python exits, and crash the process.
            self._guard.release()
            with contextlib.suppress(OSError, RuntimeError):
                self._file.close()
            self.path.unlink(missing_ok=True)
            raise

    @property
    def current_evaluation(self) -> int:
        return self._eval_index

    def begin_evaluation(self, kind: str, info: dict[str, Any]) -> int:
        """Open the group for the next graph evaluation (a flush point) and return its index."""
        self._eval_index += 1
        group = self._evals.create_group(f"{self._eval_index:06d}")
        group.attrs["index"] = self._eval_index
        group.attrs["kind"] = kind
        group.attrs["info"] = json.dumps(info, sort_keys=True)
        self.flush()
        return self._eval_index

    def update_evaluation(self, index: int, info: dict[str, Any]) -> None:
        """Merge ``info`` into evaluation ``index``'s: what is learnt only while its graph computes (its inputs)."""
        attrs = self._evals[f"{index:06d}"].attrs
        attrs["info"] = json.dumps({**json.loads(attrs["info"]), **info}, sort_keys=True)

    def write(self, record: TensorRecord, array: np.ndarray) -> None:
        """Store one captured tensor; durable at the next flush.

        Raises :class:`~inspector.files.disk_space.DiskFull` when the tensor does not
        fit; the dump stays valid and every later write is refused.
        """
        if record.eval_index != self._eval_index:
            raise ValueError(f"record for evaluation {record.eval_index} while {self._eval_index} is open")
        if self.failure:
            raise DiskFull(self.failure)
        try:
            if self._check_space:
                if self._discarding is not None:
                    self._discarding.join()
                    self._discarding = None
                stored_bytes = SAMPLE_ELEMENTS * array.itemsize if self.stats_only else array.nbytes
                # The gathered block and a partly filled last chunk land in the file too.
                self._guard.check(stored_bytes + self._block_bytes + CHUNK_BYTES,
                                  pending_tensors=len(self._pending_rows) + len(self._unwritten))
        except DiskFull as full:
            self.failure = str(full)
            raise
        try:
            self._write(record, array)
        except (OSError, RuntimeError) as error:
            self._fail_on_full_disk(error)
            raise
        if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
            self.flush()

    def _fail_on_full_disk(self, error: BaseException) -> None:
        code = disk_full_errno(error)
        if code is None:
            return
        self.failure = describe_errno(code)
        self._guard.release()
        raise DiskFull(self.failure) from None

    def _write(self, record: TensorRecord, array: np.ndarray) -> None:
        seq = self._seq
        self._seq += 1
        stats = self._stats_of(array)
        digest = digest_of(array)
        stored = STORED_STATS if self.stats_only else STORED_FULL
        data = np.ascontiguousarray(array.reshape(-1)[:SAMPLE_ELEMENTS] if self.stats_only else array)
        # vars(), not dataclasses.asdict: asdict deep-copies every field and cost a second per 5k tensors.
        record_json = _record_json({**vars(record), "seq": seq, "digest": digest, "stored": stored,
                                    **_finite_or_none(vars(stats))})
        shape = list(array.shape) + [0] * (4 - array.ndim)
        # The offset (position _ROW_OFFSET) is known once the block lands in /tensors.
        row = [
            record.eval_index, record.node_index, record.occurrence, seq, record.name, record.op,
            record.ggml_type, array.ndim, shape, array.dtype.str, self._block_bytes, record.buffer,
            record.buffer_type, record.storage, stored, record.is_leaf, data.nbytes, stats.min, stats.max, stats.mean,
            stats.std, stats.n_nan, stats.n_inf, digest,
        ]
        self._block.append(data.reshape(-1).view(np.uint8))
        self._block_bytes += data.nbytes
        self._unwritten.append((row, record_json))
        if self._block_bytes >= BLOCK_BYTES:
            self._write_block()

    def _write_block(self) -> None:
        """Append the gathered bytes to /tensors; their tensors' rows then wait only for the flush.

        If the append fails (a full disk), the block's tensors are dropped with
        it: no row may point at bytes that are not in the file.
        """
        start = self._tensors.shape[0]
        try:
            if self._block:
                data = np.concatenate(self._block) if len(self._block) > 1 else self._block[0]
                self._tensors.resize((start + data.size,))
                self._tensors[start:] = data
        except BaseException:
            self._unwritten.clear()
            # Give back the half-written extent: HDF5 would otherwise retry its dirty chunks at close.
            with contextlib.suppress(OSError, RuntimeError):
                self._tensors.resize((start,))
            raise
        finally:
            self._block.clear()
            self._block_bytes = 0
        for row, record_json in self._unwritten:
            row[_ROW_OFFSET] += start
            self._pending_rows.append(tuple(row))
            self._pending_records.append(record_json)
            self.tensor_count += 1
            self.byte_count += row[_ROW_NBYTES]
        self._unwritten.clear()

    def flush(self) -> None:
        """Write the gathered bytes, append the pending index rows and records, then make the file whole.

        Raises :class:`~inspector.files.disk_space.DiskFull` when the disk fills meanwhile.
        """
        try:
            self._flush()
        except (OSError, RuntimeError) as error:
            self._fail_on_full_disk(error)
            raise

    def _flush(self) -> None:
        try:
            self._write_block()
            if self._pending_rows:
                rows = np.array(self._pending_rows, dtype=INDEX_DTYPE)
                end = self._rows + len(rows)
                try:
                    self._index.resize((end,))
                    self._index[self._rows:end] = rows
                    self._records.resize((end,))
                    self._records[self._rows:end] = self._pending_records
                except BaseException:
                    # /index and /records grow together or not at all: row i is always record i.
                    with contextlib.suppress(OSError, RuntimeError):
                        self._index.resize((self._rows,))
                        self._records.resize((self._rows,))
                    raise
                self._rows = end
                self._pending_rows.clear()
                self._pending_records.clear()
            self._file.flush()
        except BaseException as error:
            self.failure = self.failure or f"{type(error).__name__}: {error}"
            raise
        self._last_flush = time.monotonic()

    def set_skipped(self, skipped: list[dict[str, Any]]) -> None:
        """Record the selected tensors that could not be captured, with why (an unreadable buffer)."""
        self._file.attrs["skipped"] = json.dumps(skipped, sort_keys=True)

    def set_result(self, result: dict[str, Any]) -> None:
        """Record what the run produced (generated text, timings); kept on interruption too."""
        self._file.attrs["result"] = json.dumps(result, sort_keys=True)
        self.flush()

    def close(self, complete: bool, reason: str = "") -> None:
        """Flush what is pending, mark the dump complete (or not, with the reason) and close it.

        The space reserve goes first, so that closing after a full disk has
        room to flush HDF5's metadata.
        """
        if not self._file.id.valid:
            return
        self._guard.release()
        complete = complete and not self.failure
        try:
            self._flush()
            self._file.attrs["complete"] = complete
            self._file.attrs["incomplete_reason"] = "" if complete else (reason or self.failure or "unknown")
        except (OSError, RuntimeError) as error:
            raise DumpError(f"{self.path}: could not record why the capture ended ({error}); "
                            "the tensors written so far remain readable") from None
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                self._file.close()
            self._guard.restore()

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close(True)
        elif isinstance(exc, (KeyboardInterrupt, CaptureInterrupted)):
            self.close(False, "interrupted")
        else:
            self.close(False, f"{type(exc).__name__}: {exc}")
