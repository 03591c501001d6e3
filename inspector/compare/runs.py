"""Align two dumps tensor by tensor and find the first divergence.

Evaluations are first aligned by what they computed (``inspector.compare.align``):
B's evaluation that fed the same tokens at the same positions as A's, so a
warm-up or a retry in one run does not shift every pair.  Tensors are then
paired by (aligned evaluation, name, occurrence), the identity that survives
offload changes and graph edits; ``name_map`` pairs tensors whose names
differ between the runs.  A pair is read side by side in pieces of
``STREAM_CHUNK_BYTES`` (metrics accumulate over them), so two multi-GB
tensors compare in a few MB of RAM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inspector.compare import rows as split_rows
from inspector.compare import verdict
from inspector.compare.align import Alignment, SplitGroup, align, stop_at_inputs_difference
from inspector.compare.metrics import PairAccumulator, PairMetrics, identical_metrics
from inspector.compare.origins import Origin, find_origins
from inspector.compare.rules import Rules
from inspector.compare.tolerance import Tolerance, ToleranceRequest
from inspector.compare.verdict import DIVERGED, IDENTICAL, INCOMPARABLE, MISMATCHED, MISSING, STATUSES, WITHIN
from inspector.constants import REFERENCE_RUNNER, STREAM_CHUNK_BYTES
from inspector.dump.format import STORED_STATS
from inspector.dump.reader import Dump, Entry, matches_globs, open_dump
from inspector.dump.record import rows_written_of
from inspector.formatting import evaluation_label
from inspector.identity import tensor_key

__all__ = ["DIVERGED", "IDENTICAL", "INCOMPARABLE", "MISMATCHED", "MISSING", "STATUSES", "WITHIN", "Comparison",
           "TensorComparison", "compare_dumps", "config_differences", "flatten_config"]
CONTEXT_ROWS = 3
# Ops given to arrays that no ggml graph computed (preprocessing, imports): they
# match any op, so an imported inp_raw compares with a captured one.
EXTERNAL_OPS = frozenset({"PREPROCESS", "IMPORT", "REFERENCE"})
KV_WRITE_OPS = frozenset({"SET_ROWS"})


@dataclass
class TensorComparison:
    """One aligned pair (or a tensor found in one run only) and its verdict."""

    eval_index: int
    name: str
    occurrence: int
    status: str
    name_b: str = ""
    node_a: int | None = None
    node_b: int | None = None
    op_a: str = ""
    op_b: str = ""
    shape_a: tuple[int, ...] | None = None
    shape_b: tuple[int, ...] | None = None
    type_a: str = ""
    type_b: str = ""
    buffer_a: str = ""
    buffer_b: str = ""
    note: str = ""
    metrics: PairMetrics | None = None
    # The evaluation's kind (prompt, generate, encode, graph...): an image encoder's graph is told apart.
    eval_kind: str = ""
    # B's evaluation aligned with A's ``eval_index`` (None: the tensor is in A only, or pairing is by index).
    eval_index_b: int | None = None
    # The thresholds that judged the pair: the preset, or the tolerance rule its name matched (``--rules``).
    threshold: Tolerance | None = None
    # Which run is closer to a reference run (``--reference``): an inspector.compare.reference.Closeness.
    reference: Any = None

    @property
    def evaluation_label(self) -> str:
        """``1 encode``: the evaluation's index and kind, as listings name it."""
        return evaluation_label(self.eval_index, self.eval_kind)

    @property
    def present_in(self) -> str:
        return "both" if self.node_a is not None and self.node_b is not None else ("a" if self.node_b is None else "b")


@dataclass
class Comparison:
    """The whole comparison: rows in execution order, the first divergence, counts."""

    path_a: str
    path_b: str
    tolerance: Tolerance
    rows: list[TensorComparison]
    config_differences: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    incomplete: list[str] = field(default_factory=list)
    # The ops that introduced a difference on identical inputs (inspector.compare.origins), execution order.
    origins: list[Origin] = field(default_factory=list)
    # Runs whose capture --observer-check found that observing changed their logits: "A", "B".
    observer_failed: list[str] = field(default_factory=list)
    # Which evaluation of B computed what each of A's did (inspector.compare.align).
    alignment: Alignment | None = None
    # The tolerance rules in use (``--rules``), which judged the rows their patterns match.
    rules: Rules | None = None
    # What a reference run says of the differences (``--reference``): an inspector.compare.reference.Finding.
    reference: Any = None

    @property
    def first_divergence(self) -> int | None:
        """Index into ``rows`` of the first diverged or mismatched tensor in execution order."""
        return verdict.first_divergence(self.rows)

    def context_before(self, index: int, count: int = CONTEXT_ROWS) -> list[TensorComparison]:
        """The compared tensors just before ``index``, to show whether they still agreed."""
        earlier = [row for row in self.rows[:index] if row.present_in == "both"]
        return earlier[-count:]

    def counts(self) -> dict[str, int]:
        return verdict.count(self.rows)

    @property
    def passed(self) -> bool:
        """Every compared tensor within tolerance, and both runs fed the same inputs."""
        differ = self.alignment is not None and self.alignment.inputs_differ is not None
        return verdict.passed(self.rows) and not differ

    @property
    def different_model(self) -> bool:
        """True when both runs name their model file and the files differ (fingerprint or sha256).

        A run that cannot know its model (``exec`` of another program, an
        imported file) records none: unknown is not different.
        """
        return any(key in self.config_differences and None not in self.config_differences[key]
                   for key in ("model_facts.fingerprint", "model_facts.sha256"))


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Run-configuration keys whose values differ, e.g. ``n_gpu_layers: (0, 8)``."""
    flat_a, flat_b = flatten_config(a), flatten_config(b)
    return {key: (flat_a.get(key), flat_b.get(key)) for key in sorted(set(flat_a) | set(flat_b))
            if flat_a.get(key) != flat_b.get(key)}


def _compare_pair(dump_a: Dump, a: Entry, dump_b: Dump, b: Entry, tolerance: Tolerance) -> TensorComparison:
    row = TensorComparison(
        eval_index=a.eval_index, eval_index_b=b.eval_index, name=a.name, occurrence=a.occurrence, status=IDENTICAL,
        name_b=b.name if b.name != a.name else "", node_a=a.node_index, node_b=b.node_index,
        op_a=a.op, op_b=b.op, shape_a=a.shape, shape_b=b.shape, type_a=a.ggml_type, type_b=b.ggml_type,
        buffer_a=a.buffer, buffer_b=b.buffer, threshold=tolerance,
    )
    notes = []
    ops_differ = a.op != b.op and not {a.op, b.op} & EXTERNAL_OPS
    if ops_differ:
        notes.append(f"op {a.op} vs {b.op}")
    if a.ggml_type != b.ggml_type:
        notes.append(f"type {a.ggml_type} vs {b.ggml_type}")
    if a.shape != b.shape:
        written = _written_rows_of_whole(dump_a, a, dump_b, b) if KV_WRITE_OPS & {a.op, b.op} else None
        if written is None:
            row.status = MISMATCHED
            row.note = "; ".join([f"shape {a.shape} vs {b.shape}", *notes])
            return row
        accumulator = PairAccumulator(tolerance.atol, tolerance.rtol)
        accumulator.add(*written)
        row.metrics = accumulator.result(written[0].shape)
        row.shape_a = row.shape_b = written[0].shape
        row.status = MISMATCHED if ops_differ else verdict.judge(row.metrics, tolerance)
        row.note = "; ".join([*notes, f"the {written[0].shape[0]} cache rows written (one run stored the whole cache)"])
        return row
    if a.digest and a.digest == b.digest and a.dtype == b.dtype:
        # Equal xxh3 digests of the stored bytes: identical, decided without reading either tensor.
        row.metrics = identical_metrics(a.stats.n_nan, a.stats.n_inf)
    elif STORED_STATS in (a.stored, b.stored):
        row.status = MISMATCHED if ops_differ else DIVERGED
        row.note = "; ".join([*notes, "digests differ (a stats-only dump holds no values to measure by): "
                                      f"mean {a.stats.mean:.6g} vs {b.stats.mean:.6g}, "
                                      f"std {a.stats.std:.6g} vs {b.stats.std:.6g}"])
        return row
    else:
        finite = a.stats.n_nan == a.stats.n_inf == b.stats.n_nan == b.stats.n_inf == 0
        row.metrics = _streamed_metrics(dump_a, a, dump_b, b, tolerance, finite)
    row.status = MISMATCHED if ops_differ else verdict.judge(row.metrics, tolerance)
    row.note = "; ".join(notes)
    return row


def _written_rows_of_whole(dump_a: Dump, a: Entry, dump_b: Dump, b: Entry) -> tuple[np.ndarray, np.ndarray] | None:
    """A KV-cache write stored as its rows in one run and as the whole cache in the other: the same rows of both.

    A dump made before writes were stored by rows (or by a hook that still
    stores them whole) holds the whole destination; the rows the other run
    recorded writing are cut out of it.  None when neither side fits that.
    """
    record_a, record_b = dump_a.metadata(a), dump_b.metadata(b)
    rows_a, rows_b = rows_written_of(record_a), rows_written_of(record_b)
    if bool(rows_a) == bool(rows_b):
        return None
    stored, rows_record, whole_dump, whole, whole_record = (
        (dump_a.read(a), record_a, dump_b, b, record_b) if rows_a else (dump_b.read(b), record_b, dump_a, a, record_a))
    if list(whole_record.get("ne") or []) != list(rows_record["written_of_ne"]):
        return None
    width = stored.shape[-1]
    # One read per run of consecutive rows, as the writer recorded them (rows_written_of checked them above).
    cut = np.concatenate([whole_dump.read_range(whole, first * width, (first + count) * width)
                          for first, count in rows_record["rows_written"]])
    cut = cut.reshape(stored.shape)
    return (stored, cut) if rows_a else (cut, stored)


def _streamed_metrics(dump_a: Dump, a: Entry, dump_b: Dump, b: Entry, tolerance: Tolerance,
                      all_finite: bool) -> PairMetrics:
    """The pair's metrics from pieces of both tensors read side by side: memory is a piece, not a tensor."""
    accumulator = PairAccumulator(tolerance.atol, tolerance.rtol, all_finite)
    step = max(1, STREAM_CHUNK_BYTES // max(np.dtype(a.dtype).itemsize, np.dtype(b.dtype).itemsize))
    for piece_a, piece_b in zip(dump_a.iter_chunks(a, step), dump_b.iter_chunks(b, step), strict=True):
        accumulator.add(piece_a, piece_b)
    return accumulator.result(a.shape)


def _one_sided(entry: Entry, side: str, eval_index: int) -> TensorComparison:
    """A tensor in one run only; ``eval_index`` is A's evaluation it belongs with (B's own under index pairing)."""
    row = TensorComparison(eval_index=eval_index, name=entry.name, occurrence=entry.occurrence,
                           status=MISSING, note=f"only in run {side.upper()}")
    if side == "a":
        row.node_a, row.op_a, row.shape_a, row.type_a, row.buffer_a = (
            entry.node_index, entry.op, entry.shape, entry.ggml_type, entry.buffer)
    else:
        row.eval_index_b = entry.eval_index
        row.node_b, row.op_b, row.shape_b, row.type_b, row.buffer_b = (
            entry.node_index, entry.op, entry.shape, entry.ggml_type, entry.buffer)
    return row


def _absent_from_references(rows: list[TensorComparison], dump_a: Dump, dump_b: Dump) -> None:
    """Tensors missing from a reference implementation's dump are what its map does not name, not a failure."""
    for side, dump in (("a", dump_a), ("b", dump_b)):
        if dump.config.get("runner") != REFERENCE_RUNNER:
            continue
        for row in rows:
            if row.status == MISSING and row.present_in not in ("both", side):
                row.status, row.note = INCOMPARABLE, "not in the reference: its name map does not name it"


def _split_comparisons(dump_a: Dump, dump_b: Dump, group: SplitGroup, entries_a: list[Entry],
                       entries_b: list[tuple[str, Entry]], inputs: tuple[dict[int, Any], dict[int, Any]],
                       keys: tuple[dict[tuple[int, str, int], Entry], dict[tuple[int, str, int], Entry]],
                       judge_with: Callable[[str], Tolerance]) -> list[tuple[tuple[int, int, int], TensorComparison]]:
    """Every tensor of a split group's evaluations, compared per token (``inspector.compare.rows``).

    ``entries_b`` carry the name each B tensor has in A (``--map``).  A row
    stands for the whole group: A's first evaluation of it, and B's.
    ``judge_with`` gives the thresholds for an A name.
    """
    tensors: dict[tuple[str, int], split_rows.SplitTensor] = {}
    records_a, records_b = dump_a.metadata_of(entries_a), dump_b.metadata_of([e for _, e in entries_b])
    for entry in entries_a:
        tensor = tensors.setdefault((entry.name, entry.occurrence),
                                    split_rows.SplitTensor(entry.name, entry.occurrence, {}, {}, {}, {}))
        tensor.entries_a[entry.eval_index], tensor.records_a[entry.eval_index] = entry, records_a[entry.seq]
    for name, entry in entries_b:
        tensor = tensors.setdefault((name, entry.occurrence),
                                    split_rows.SplitTensor(name, entry.occurrence, {}, {}, {}, {}))
        tensor.entries_b[entry.eval_index], tensor.records_b[entry.eval_index] = entry, records_b[entry.seq]
    compared = []
    for position, tensor in enumerate(tensors.values()):
        if not tensor.entries_a or not tensor.entries_b:
            side, entry = ("a", tensor.first_a) if tensor.entries_a else ("b", tensor.first_b)
            row = _one_sided(entry, side, group.evals_a[0])
        else:
            threshold = judge_with(tensor.name)
            result = split_rows.compare_rows(dump_a, dump_b, group, tensor, *inputs, *keys, threshold)
            a, b = tensor.first_a, tensor.first_b
            row = TensorComparison(
                eval_index=group.evals_a[0], eval_index_b=group.evals_b[0], name=tensor.name,
                occurrence=tensor.occurrence, status=result.status, name_b=b.name if b.name != a.name else "",
                node_a=a.node_index, node_b=b.node_index, op_a=a.op, op_b=b.op,
                shape_a=result.shape or a.shape, shape_b=result.shape or b.shape, type_a=a.ggml_type,
                type_b=b.ggml_type, buffer_a=a.buffer, buffer_b=b.buffer, note=result.note, metrics=result.metrics,
                threshold=threshold)
            if a.op != b.op and not {a.op, b.op} & EXTERNAL_OPS:
                row.status, row.note = MISMATCHED, f"op {a.op} vs {b.op}; {result.note}"
        node = row.node_a if row.node_a is not None else row.node_b
        compared.append(((group.evals_a[0], node or 0, position), row))
    return compared


def _thresholds(rules: Rules | None, preset: Tolerance, name: str) -> Tolerance:
    """What judges tensor ``name``: its first matching rule, else the preset."""
    return rules.judge_with(name, preset) if rules is not None else preset


def compare_dumps(path_a: str | Path, path_b: str | Path, tolerance: Tolerance | ToleranceRequest,
                  patterns: list[str] | None = None, name_map: dict[str, str] | None = None,
                  past_inputs: bool = False, rules: Rules | None = None) -> Comparison:
    """Compare dump B against reference dump A.

    A ``ToleranceRequest`` is resolved from both runs' configurations and
    whether the alignment found them batched otherwise (``docs/compare.md``,
    "Default tolerance").

    ``patterns`` (globs) filter by A's names; ``name_map`` maps an A name to
    the B name it should be paired with.  When the runs were fed different
    inputs, only what they computed before the first difference is compared,
    unless ``past_inputs``.  ``rules`` judge the tensors their patterns match
    (first match wins), the tolerance the rest.
    """
    name_map = name_map or {}
    b_to_a = {b: a for a, b in name_map.items()}
    with open_dump(path_a) as dump_a, open_dump(path_b) as dump_b:
        # Read once: each read walks every evaluation group of the file and parses its info.
        evaluations_a, evaluations_b = dump_a.evaluations, dump_b.evaluations
        alignment = align(evaluations_a, evaluations_b)
        if isinstance(tolerance, ToleranceRequest):
            tolerance = tolerance.resolve(dump_a.config, dump_b.config, splits_differ=alignment.batched_otherwise)
        judge_with = partial(_thresholds, rules, tolerance)
        if not past_inputs:
            stop_at_inputs_difference(alignment, evaluations_a, evaluations_b)
        # B's evaluation index as A's; identity when pairing by index, so unpaired evaluations keep theirs.
        a_of_b = {b: a for a, b in alignment.b_of_a().items()}
        only_a, only_b = alignment.uncompared("a"), alignment.uncompared("b")
        group_a = {index: group for group in alignment.splits for index in group.evals_a}
        group_b = {index: group for group in alignment.splits for index in group.evals_b}
        split_a: dict[int, list[Entry]] = {id(g): [] for g in alignment.splits}
        split_b: dict[int, list[tuple[str, Entry]]] = {id(g): [] for g in alignment.splits}
        entries_a = []
        for entry in dump_a.entries(patterns):
            if entry.eval_index in group_a:
                split_a[id(group_a[entry.eval_index])].append(entry)
            elif entry.eval_index not in only_a:
                entries_a.append(entry)
        by_key_b: dict[tuple[int, str, int], Entry] = {}
        for entry in dump_b.entries():
            name_as_a = b_to_a.get(entry.name, entry.name)
            if entry.eval_index in only_b or (patterns and not matches_globs(name_as_a, patterns)):
                continue
            if entry.eval_index in group_b:
                split_b[id(group_b[entry.eval_index])].append((name_as_a, entry))
            else:
                by_key_b[tensor_key(a_of_b.get(entry.eval_index, entry.eval_index), name_as_a,
                                    entry.occurrence)] = entry
        ordered: list[tuple[tuple[int, int, int], TensorComparison]] = []
        if alignment.splits:
            inputs = ({e["index"]: e.get("inputs") or {} for e in evaluations_a},
                      {e["index"]: e.get("inputs") or {} for e in evaluations_b})
            keys = ({entry.key: entry for entry in dump_a.entries()}, {entry.key: entry for entry in dump_b.entries()})
            for group in alignment.splits:
                ordered.extend(_split_comparisons(dump_a, dump_b, group, split_a[id(group)], split_b[id(group)],
                                                  inputs, keys, judge_with))
        for position, entry in enumerate(entries_a):
            partner = by_key_b.pop(tensor_key(*entry.key), None)
            row = _one_sided(entry, "a", entry.eval_index) if partner is None \
                else _compare_pair(dump_a, entry, dump_b, partner, judge_with(entry.name))
            ordered.append(((entry.eval_index, entry.node_index, position), row))
        for position, (key, entry) in enumerate(by_key_b.items()):
            ordered.append(((key[0], entry.node_index, len(entries_a) + position), _one_sided(entry, "b", key[0])))
        ordered.sort(key=lambda item: item[0])
        kinds = {a_of_b.get(e["index"], e["index"]): e["kind"] for e in evaluations_b}
        kinds.update({e["index"]: e["kind"] for e in evaluations_a})
        for _key, row in ordered:
            row.eval_kind = kinds.get(row.eval_index, "")
        incomplete = [str(d.path) for d in (dump_a, dump_b) if not d.complete]
        rows = [row for _, row in ordered]
        _absent_from_references(rows, dump_a, dump_b)
        return Comparison(path_a=str(path_a), path_b=str(path_b), tolerance=tolerance, rows=rows,
                          config_differences=config_differences(dump_a.config, dump_b.config),
                          incomplete=incomplete, origins=find_origins(rows, dump_a, dump_b, filtered=bool(patterns)),
                          observer_failed=[side for side, dump in (("A", dump_a), ("B", dump_b))
                                           if (dump.result.get("observer_check") or {}).get("identical") is False],
                          alignment=alignment, rules=rules)

