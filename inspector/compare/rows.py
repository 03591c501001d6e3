"""Compare per token what two runs computed in other batches (``-ub 512`` against ``-ub 3``).

When the runs split the same rows into other evaluations, evaluation N of
one holds other positions than evaluation N of the other, so tensors cannot
pair by evaluation.  A :class:`~inspector.compare.align.SplitGroup` says which
row of which evaluation fed each position in both runs; this module slices
every tensor of the group's evaluations by those rows and measures the rows
of both runs against each other, position by position, into one verdict per
tensor (``docs/compare.md``, "Different batch splits").

What has token rows is decided from the shapes, not from names: the axis
whose length is, in every evaluation of both runs, that evaluation's count
of rows (its tokens, or its output rows after llama.cpp's ``out_ids``
selection), every other axis the same in all of them.  Other tensors are
*incomparable*, with the reason:

- no such axis: the tensor does not follow the batch (a view of the whole
  KV cache, the attention mask padded to ``GGML_KQ_MASK_PAD``);
- llama.cpp's tensors whose rows depend on the batch (``BATCH_DEPENDENT``):
  attention scores over the cache window, each row of which holds a value
  for every cache cell, including cells one run had already written and the
  other not yet; ``out_ids``, row numbers within the batch;
- a KV-cache write (``SET_ROWS``) compares the cache rows it wrote: a
  capture stores just those rows (``rows_written``), one per token, which
  slice like any token rows; a dump that stored the whole cache finds them
  through the write's row-index input, which must have been captured too.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from inspector.compare import verdict
from inspector.compare.align import RowPair, SplitGroup
from inspector.compare.metrics import PairAccumulator
from inspector.compare.tolerance import Tolerance
from inspector.compare.verdict import INCOMPARABLE, MISSING
from inspector.constants import STREAM_CHUNK_BYTES
from inspector.dump.reader import Dump, Entry
from inspector.dump.record import rows_written_of

# llama.cpp's names (llama-graph.cpp) of tensors whose rows depend on the batch, and why.
_SCORES = "attention scores over the KV-cache window hold a value for every cell, written or not yet"
BATCH_DEPENDENT = {"kq-*": _SCORES, "kq_*": _SCORES, "attn_kq*": _SCORES, "*kq_mask*": _SCORES,
                   "out_ids": "its values are row numbers within the batch"}
TOKENS, OUTPUTS = "tokens", "outputs"
# A tensor is read whole to slice a non-leading axis up to this size; larger ones only along a leading axis.
MAX_SLICED_READ_BYTES = 256 * 1024 * 1024
KV_WRITE_OP = "SET_ROWS"
NOT_ACROSS = "not comparable across different batches"


@dataclass(frozen=True)
class Slicing:
    """How one tensor's rows are found: ``axis`` of its 4-D numpy shape counts ``kind`` rows."""

    axis: int
    kind: str


@dataclass
class SplitTensor:
    """One tensor (A's name and occurrence) across a split group's evaluations of both runs."""

    name: str
    occurrence: int
    entries_a: dict[int, Entry]
    entries_b: dict[int, Entry]
    records_a: dict[int, dict[str, Any]]
    records_b: dict[int, dict[str, Any]]

    @property
    def first_a(self) -> Entry:
        return next(iter(self.entries_a.values()))

    @property
    def first_b(self) -> Entry:
        return next(iter(self.entries_b.values()))


@dataclass(frozen=True)
class RowsResult:
    """What comparing one tensor per token gave: a status, its metrics when measured, the rows and why."""

    status: str
    note: str
    rows: int = 0
    shape: tuple[int, ...] | None = None
    metrics: Any = None


def shape4(record: dict[str, Any]) -> tuple[int, ...]:
    """The tensor's numpy shape with all four ggml axes kept (a stored shape trims trailing ne of 1)."""
    return tuple(int(n) for n in reversed(record["ne"]))


def row_counts(inputs: dict[str, Any]) -> dict[str, int]:
    """An evaluation's rows of each kind: its tokens and its output rows."""
    return {TOKENS: int(inputs.get("n_tokens", 0)), OUTPUTS: len(inputs.get("outputs") or [])}


def find_slicing(shapes: list[tuple[tuple[int, ...], dict[str, int]]]) -> Slicing | str:
    """The axis that counts rows in every (shape, row counts) given, or why there is none."""
    found: list[Slicing] = []
    for kind in (TOKENS, OUTPUTS):
        for axis in range(4):
            rest = {shape[:axis] + shape[axis + 1:] for shape, _ in shapes}
            if len(rest) == 1 and all(shape[axis] == counts[kind] for shape, counts in shapes):
                found.append(Slicing(axis, kind))
    if not found:
        return "it has no token rows (its shape does not follow the batch)"
    # Candidates are interchangeable when every evaluation has at most one row on each of them.
    meaningful = {s for s in found if any(shape[s.axis] > 1 for shape, _ in shapes)}
    if len({s.axis for s in meaningful}) > 1:
        return f"its token axis is ambiguous (ne axes {sorted(3 - s.axis for s in meaningful)} all fit)"
    return next(iter(meaningful), found[0])


def _row_of(kind: str, inputs: dict[str, Any], row: int) -> int | None:
    """Where token row ``row`` sits along an axis of ``kind`` rows: itself, or its place among the outputs."""
    if kind == TOKENS:
        return row
    outputs = [int(r) for r in inputs.get("outputs") or []]
    return outputs.index(row) if row in outputs else None


def _runs(indices: list[tuple[int, int, int, int]]) -> Iterator[tuple[int, int, int, int, int]]:
    """Consecutive (eval_a, index_a, eval_b, index_b) merged into (eval_a, start_a, eval_b, start_b, count)."""
    run: list[int] | None = None
    for eval_a, index_a, eval_b, index_b in indices:
        if run is not None and (eval_a, eval_b) == (run[0], run[2]) and index_a == run[1] + run[4] \
                and index_b == run[3] + run[4]:
            run[4] += 1
            continue
        if run is not None:
            yield tuple(run)  # type: ignore[misc]
        run = [eval_a, index_a, eval_b, index_b, 1]
    if run is not None:
        yield tuple(run)  # type: ignore[misc]


class _Slicer:
    """Reads blocks of consecutive rows of one run's tensors, holding at most one whole tensor."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.held: tuple[int, np.ndarray] | None = None

    def block(self, entry: Entry, shape: tuple[int, ...], axis: int, start: int, count: int) -> np.ndarray:
        """Rows ``start``..``start+count`` along ``axis``, that axis moved first."""
        if math.prod(shape[:axis]) == 1:
            # Every axis before this one has length 1: the rows are one run of values in the file.
            step = math.prod(shape[axis + 1:])
            values = self.dump.read_range(entry, start * step, (start + count) * step)
            return values.reshape((count, *shape[axis + 1:]))
        if self.held is None or self.held[0] != entry.seq:
            self.held = (entry.seq, self.dump.read(entry, max_bytes=MAX_SLICED_READ_BYTES).reshape(shape))
        return np.moveaxis(self.held[1], axis, 0)[start:start + count]


def _index_rows(dump: Dump, records: dict[int, dict[str, Any]],
                by_key: dict[tuple[int, str, int], Entry], counts: dict[int, dict[str, int]]
                ) -> dict[int, list[int]] | str:
    """For a KV-cache write: per evaluation, the cache cell each token row wrote, or why it is not known."""
    cells: dict[int, list[int]] = {}
    for eval_index, record in records.items():
        details = [d for d in record.get("source_details") or [] if d.get("slot") == 1]
        if not details:
            return "a KV-cache write whose row indices were not recorded"
        index_entry = by_key.get((eval_index, str(details[0].get("name")), int(details[0].get("occurrence", 0))))
        if index_entry is None or index_entry.stored != "full":
            return (f"a KV-cache write: the cache rows it wrote are not known; capture its row-index input "
                    f"{details[0].get('name')!r} too")
        values = dump.read(index_entry).reshape(-1)
        if values.size != counts[eval_index][TOKENS]:
            return _not_per_token(values.size, counts[eval_index][TOKENS])
        cells[eval_index] = [int(v) for v in values]
    return cells


def compare_rows(dump_a: Dump, dump_b: Dump, group: SplitGroup, tensor: SplitTensor,
                 inputs_a: dict[int, dict[str, Any]], inputs_b: dict[int, dict[str, Any]],
                 keys_a: dict[tuple[int, str, int], Entry], keys_b: dict[tuple[int, str, int], Entry],
                 tolerance: Tolerance) -> RowsResult:
    """One tensor of a split group measured row by row in both runs (``keys_*``: each dump's entries by key)."""
    reason = next((why for pattern, why in BATCH_DEPENDENT.items() if fnmatch.fnmatchcase(tensor.name, pattern)),
                  None)
    if reason is not None:
        return RowsResult(INCOMPARABLE, f"{NOT_ACROSS}: {reason}")
    counts_a = {e: row_counts(inputs_a[e]) for e in tensor.entries_a}
    counts_b = {e: row_counts(inputs_b[e]) for e in tensor.entries_b}
    stored_rows = any(record.get("rows_written") for record in (*tensor.records_a.values(),
                                                                 *tensor.records_b.values()))
    if tensor.first_a.op == KV_WRITE_OP and not stored_rows:
        cells_a = _index_rows(dump_a, tensor.records_a, keys_a, counts_a)
        cells_b = _index_rows(dump_b, tensor.records_b, keys_b, counts_b)
        if isinstance(cells_a, str) or isinstance(cells_b, str):
            return RowsResult(INCOMPARABLE, f"{NOT_ACROSS}: {cells_a if isinstance(cells_a, str) else cells_b}")
        shapes = {shape4(r) for r in (*tensor.records_a.values(), *tensor.records_b.values())}
        if len(shapes) != 1:
            return RowsResult(INCOMPARABLE, f"{NOT_ACROSS}: the caches differ in shape")
        # The cache's cells are ne[1]: numpy axis 2 of the 4-D shape.
        return _measure(dump_a, dump_b, group.rows, tensor, Slicing(2, TOKENS),
                        _cells(cells_a), _cells(cells_b), tolerance)
    if stored_rows and tensor.first_a.op == KV_WRITE_OP:
        written = [(len(rows_written_of(r)), counts[e][TOKENS]) for records, counts in
                   ((tensor.records_a, counts_a), (tensor.records_b, counts_b)) for e, r in records.items()]
        uneven = next(((rows, tokens) for rows, tokens in written if rows != tokens), None)
        if uneven is not None:
            return RowsResult(INCOMPARABLE, f"{NOT_ACROSS}: {_not_per_token(*uneven)}")
    slicing = find_slicing([(shape4(tensor.records_a[e]), counts_a[e]) for e in tensor.entries_a]
                           + [(shape4(tensor.records_b[e]), counts_b[e]) for e in tensor.entries_b])
    if isinstance(slicing, str):
        return RowsResult(INCOMPARABLE, f"{NOT_ACROSS}: {slicing}")
    return _measure(dump_a, dump_b, group.rows, tensor, slicing, _along(slicing.kind, inputs_a),
                    _along(slicing.kind, inputs_b), tolerance)


Locate = Callable[[int, int], "int | None"]


def _not_per_token(rows: int, tokens: int) -> str:
    return (f"a KV-cache write of {rows} rows for {tokens} tokens (a transposed V cache, one row per value): "
            "compare with flash attention on")


def _cells(cells: dict[int, list[int]]) -> Locate:
    """Token row ``row`` of evaluation ``e`` wrote cache cell ``cells[e][row]``."""
    return lambda eval_index, row: cells[eval_index][row]


def _along(kind: str, inputs: dict[int, dict[str, Any]]) -> Locate:
    """Token row ``row`` of evaluation ``e`` along an axis of ``kind`` rows."""
    return lambda eval_index, row: _row_of(kind, inputs[eval_index], row)


def _measure(dump_a: Dump, dump_b: Dump, rows: tuple[RowPair, ...], tensor: SplitTensor, slicing: Slicing,
             locate_a: Locate, locate_b: Locate, tolerance: Tolerance) -> RowsResult:
    """Feed the matched rows of both runs, in position order, to one accumulator."""
    indices, positions, lacking = [], [], 0
    for row in rows:
        if row.eval_a not in tensor.entries_a or row.eval_b not in tensor.entries_b:
            lacking += 1
            continue
        index_a, index_b = locate_a(row.eval_a, row.row_a), locate_b(row.eval_b, row.row_b)
        if index_a is not None and index_b is not None:
            indices.append((row.eval_a, index_a, row.eval_b, index_b))
            positions.append(row.position)
        elif (index_a is None) != (index_b is None):
            lacking += 1
    if not indices:
        status = MISSING if lacking else INCOMPARABLE
        return RowsResult(status, f"no row of it was computed by both runs ({lacking} in one run only)")
    entries = [*tensor.entries_a.values(), *tensor.entries_b.values()]
    finite = all(e.stats.n_nan == e.stats.n_inf == 0 for e in entries)
    accumulator = PairAccumulator(tolerance.atol, tolerance.rtol, finite)
    slicer_a, slicer_b = _Slicer(dump_a), _Slicer(dump_b)
    for eval_a, start_a, eval_b, start_b, count in _runs(indices):
        shape_a, shape_b = shape4(tensor.records_a[eval_a]), shape4(tensor.records_b[eval_b])
        itemsize = max(np.dtype(e.dtype).itemsize for e in entries)
        step = max(1, STREAM_CHUNK_BYTES // max(1, itemsize * math.prod(shape_a) // max(1, shape_a[slicing.axis])))
        for offset in range(0, count, step):
            size = min(step, count - offset)
            accumulator.add(slicer_a.block(tensor.entries_a[eval_a], shape_a, slicing.axis, start_a + offset, size),
                            slicer_b.block(tensor.entries_b[eval_b], shape_b, slicing.axis, start_b + offset, size))
    rest = shape4(next(iter(tensor.records_a.values())))
    shape = (len(indices), *(rest[:slicing.axis] + rest[slicing.axis + 1:]))
    metrics = accumulator.result(shape)
    what = "cache rows written" if slicing.kind == TOKENS and tensor.first_a.op == KV_WRITE_OP else (
        "token rows" if slicing.kind == TOKENS else "output rows")
    note = f"compared per token: {len(indices)} {what}" + (f", {lacking} in one run only" if lacking else "")
    if not metrics.identical and metrics.max_abs_index:
        note += f"; largest difference at position {positions[metrics.max_abs_index[-1]]}"
    return RowsResult(verdict.judge(metrics, tolerance), note, len(indices), shape, metrics)
