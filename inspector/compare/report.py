"""Presentation of a Comparison: terminal table, JSON (documented schema) and CSV.

The first divergence is printed first, because it is the answer most users
came for.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from typing import Any

import click

from inspector.compare import settings
from inspector.compare.origins import Origin
from inspector.compare.runs import (
    DIVERGED,
    IDENTICAL,
    INCOMPARABLE,
    MISMATCHED,
    MISSING,
    WITHIN,
    Comparison,
    TensorComparison,
)
from inspector.formatting import evaluation_label, number, printable, shape_text, table

JSON_SCHEMA_VERSION = 1
STATUS_COLOURS = {IDENTICAL: "green", WITHIN: "cyan", DIVERGED: "red", MISSING: "yellow", MISMATCHED: "magenta",
                  INCOMPARABLE: "blue"}


def _label(row: TensorComparison) -> str:
    """How the text output names a row, escaped: the names come from the dumps."""
    label = printable(row.name) if row.occurrence == 0 else f"{printable(row.name)} #{row.occurrence}"
    return f"{label} = {printable(row.name_b)}" if row.name_b else label


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def row_json(row: TensorComparison, rules: bool = False) -> dict[str, Any]:
    """One tensor's JSON; ``rules``: tolerance rules were in use, so the row names the one that judged it."""
    metrics = None
    if row.metrics is not None:
        metrics = {key: (_finite(value) if isinstance(value, float) else value)
                   for key, value in asdict(row.metrics).items()}
        metrics["max_abs_index"] = list(row.metrics.max_abs_index)
    return {
        "eval": row.eval_index, "eval_b": row.eval_index if row.eval_index_b is None else row.eval_index_b,
        "eval_kind": row.eval_kind,
        "name": row.name, "name_b": row.name_b or row.name, "occurrence": row.occurrence,
        "status": row.status, "present_in": row.present_in, "node_a": row.node_a, "node_b": row.node_b,
        "op_a": row.op_a, "op_b": row.op_b,
        "shape_a": list(row.shape_a) if row.shape_a is not None else None,
        "shape_b": list(row.shape_b) if row.shape_b is not None else None,
        "type_a": row.type_a, "type_b": row.type_b, "buffer_a": row.buffer_a, "buffer_b": row.buffer_b,
        "note": row.note, "metrics": metrics,
        "rule": row.threshold.name if rules and row.threshold is not None else None,
        "reference": row.reference.to_json() if row.reference is not None else None,
    }


def origin_json(origin: Origin) -> dict[str, Any]:
    return {"eval": origin.eval_index, "eval_kind": origin.eval_kind, "node": origin.node, "name": origin.name,
            "occurrence": origin.occurrence, "op": origin.op, "verdict": origin.verdict,
            "explanation": origin.explanation, "nmse": origin.nmse, "max_abs_diff": origin.max_abs_diff,
            "buffers": origin.buffers, "types": origin.types, "sources": [s.name for s in origin.sources],
            "not_captured": origin.not_captured, "source_details": [asdict(s) for s in origin.sources]}


def describe_origin(origin: Origin) -> str:
    """One line about an origin (names, op and explanation escaped: they quote the dumps)."""
    label = printable(origin.name) if origin.occurrence == 0 else f"{printable(origin.name)} #{origin.occurrence}"
    where = f"eval {evaluation_label(origin.eval_index, origin.eval_kind)}, node {origin.node}, {printable(origin.op)}"
    size = f"nmse {number(origin.nmse)}" if origin.nmse is not None else "differs"
    return f"{label} ({where}): {size}; {printable(origin.explanation)}"


def first_divergence_json(comparison: Comparison) -> dict[str, Any] | None:
    index = comparison.first_divergence
    if index is None:
        return None
    rules = comparison.rules is not None
    return {**row_json(comparison.rows[index], rules),
            "preceding": [row_json(row, rules) for row in comparison.context_before(index)]}


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The ``compare --json`` document (schema in docs/compare.md)."""
    tolerance = comparison.tolerance
    return {
        "schema_version": JSON_SCHEMA_VERSION,
        "a": comparison.path_a,
        "b": comparison.path_b,
        "tolerance": {"name": tolerance.name, "nmse": tolerance.nmse, "atol": tolerance.atol,
                      "rtol": tolerance.rtol, "reason": tolerance.reason or None},
        "passed": comparison.passed,
        "alignment": comparison.alignment.to_json() if comparison.alignment is not None else None,
        "counts": comparison.counts(),
        "config_differences": {k: list(v) for k, v in comparison.config_differences.items()},
        "setting_differences": {k: list(v) for k, v in
                                settings.setting_differences(comparison.config_differences).items()},
        "origins": [origin_json(origin) for origin in comparison.origins],
        "different_model": comparison.different_model,
        "incomplete_dumps": comparison.incomplete,
        "observer_check_failed": comparison.observer_failed,
        "first_divergence": first_divergence_json(comparison),
        "tensors": [row_json(row, comparison.rules is not None) for row in comparison.rows],
        "rules": {"source": comparison.rules.source, "count": len(comparison.rules.rules)} if comparison.rules
        else None,
        "reference": comparison.reference.to_json() if comparison.reference is not None else None,
    }


CSV_COLUMNS = ["eval", "name", "name_b", "occurrence", "status", "present_in", "node_a", "node_b", "op_a", "op_b",
               "shape_a", "shape_b", "type_a", "type_b", "buffer_a", "buffer_b", "identical", "max_abs_diff",
               "max_abs_index", "mean_abs_diff", "rmse", "nmse", "cosine", "nan_a", "nan_b", "inf_a", "inf_b", "note",
               "rule", "closer"]


def to_csv(comparison: Comparison) -> str:
    """One row per tensor; text cells escaped like the terminal table, so one row is one line."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in comparison.rows:
        data = row_json(row, comparison.rules is not None)
        data["closer"] = row.reference.closer if row.reference is not None else None
        metrics = data.pop("metrics") or {}
        flat = {key: data.get(key, metrics.get(key)) for key in CSV_COLUMNS}
        for key in ("shape_a", "shape_b", "max_abs_index"):
            value = data.get(key, metrics.get(key))
            flat[key] = "x".join(str(n) for n in value) if value else ""
        writer.writerow({key: printable(value) if isinstance(value, str) else value for key, value in flat.items()})
    return out.getvalue()


def row_note(row: TensorComparison, rules: bool) -> str:
    """The row's note, the rule that judged it (with ``--rules``) and the run closer to R (``--reference``)."""
    parts = [row.note] if row.note else []
    if rules and row.threshold is not None and row.metrics is not None:
        parts.append(f"rule {row.threshold.name}")
    if row.reference is not None:
        parts.append(row.reference.describe())
    return "; ".join(parts)


def _describe(row: TensorComparison, rules: bool) -> str:
    where = f"eval {row.evaluation_label}, node {row.node_a if row.node_a is not None else row.node_b}"
    buffers = f"buffer A {printable(row.buffer_a or '-')}, B {printable(row.buffer_b or '-')}"
    note = row_note(row, rules)
    if row.metrics is None:
        return f"{_label(row)} ({where}): {row.status}: {printable(note)}; {buffers}"
    m = row.metrics
    return (f"{_label(row)} ({where}, {printable(row.op_a)}): {row.status}: nmse {number(m.nmse)}, max |a-b| "
            f"{number(m.max_abs_diff)} at ne{list(m.max_abs_index)}, cosine {number(m.cosine)}"
            + (f"; {printable(note)}" if note else "") + f"; {buffers}")


def _incomparable_summary(rows: list[TensorComparison], show_all: bool) -> list[str]:
    """One line per reason tensors could not be compared, with a few names: they neither pass nor fail."""
    reasons: dict[str, list[str]] = {}
    for row in rows:
        if row.status == INCOMPARABLE:
            reasons.setdefault(row.note, []).append(_label(row))
    lines = []
    for reason, names in reasons.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{len(names)} tensor{'s' if len(names) != 1 else ''} {printable(reason)} ({shown})")
    if lines and not show_all:
        lines[-1] += "; --all lists them"
    return lines


def render_text(comparison: Comparison, show_all: bool, colour: bool) -> str:
    """First divergence, then the table (only non-identical rows unless ``show_all``), then a summary."""
    def paint(text: str, status: str) -> str:
        return click.style(text, fg=STATUS_COLOURS[status]) if colour else text

    lines = []
    rules = comparison.rules is not None
    alignment = comparison.alignment
    if alignment is not None and alignment.inputs_differ is not None:
        lines.append(paint(printable(alignment.inputs_differ.describe()), DIVERGED))
    if comparison.origins:
        first, *others = comparison.origins
        lines.append("first origin: " + describe_origin(first))
        if others:
            lines.append(f"  then {len(others)} more origin{'s' if len(others) > 1 else ''} (--json lists them): "
                         + ", ".join(f"{printable(o.name)} (eval {o.eval_index}, node {o.node})" for o in others[:4])
                         + (" ..." if len(others) > 4 else ""))
    index = comparison.first_divergence
    if index is None:
        lines.append("first divergence: none")
    else:
        lines.append("first divergence: " + paint(_describe(comparison.rows[index], rules),
                                                  comparison.rows[index].status))
        for row in comparison.context_before(index):
            lines.append("  preceded by " + paint(_describe(row, rules), row.status))
    if alignment is not None:
        lines.append(printable(alignment.summary()))
    changes = settings.describe(comparison.config_differences)
    if changes:
        lines.append(f"runs differ in: {printable(changes)}")
    if comparison.different_model:
        lines.append("warning: the runs used different model files (their fingerprints differ)")
    for path in comparison.incomplete:
        lines.append(f"warning: {printable(path)} is incomplete")
    for side in comparison.observer_failed:
        lines.append(f"warning: run {side}'s observer check failed: capturing changed its logits, so its tensors "
                     "describe a run that differs from the unobserved one")
    lines.extend(_incomparable_summary(comparison.rows, show_all))
    shown = [row for row in comparison.rows if show_all or row.status not in (IDENTICAL, INCOMPARABLE)]
    if shown:
        cells = []
        for row in shown:
            m = row.metrics
            cells.append([
                row.evaluation_label, str(row.node_a if row.node_a is not None else row.node_b), _label(row),
                row.status, shape_text(row.shape_a or row.shape_b or ()),
                number(m.nmse) if m else "", number(m.max_abs_diff) if m else "", number(m.cosine) if m else "",
                row.buffer_a or "-", row.buffer_b or "-", row_note(row, rules),
            ])
        rendered = table(["eval", "node", "tensor", "status", "shape", "nmse", "max|a-b|", "cosine", "buffer A",
                          "buffer B", "note"], cells, right_align={0, 1, 5, 6, 7})
        status_column = rendered.splitlines()
        if colour:
            status_column = status_column[:2] + [line.replace(row.status, paint(row.status, row.status), 1)
                                                 for line, row in zip(status_column[2:], shown, strict=True)]
        lines.extend(status_column)
    counts = comparison.counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in (IDENTICAL, WITHIN, DIVERGED, MISSING, MISMATCHED)) \
        + (f", {counts[INCOMPARABLE]} {INCOMPARABLE}" if counts[INCOMPARABLE] else "")
    verdict = "PASS" if comparison.passed else "FAIL"
    if comparison.tolerance.reason:
        lines.append(printable(comparison.tolerance.reason))
    if comparison.rules is not None:
        lines.append(_rules_summary(comparison))
    if comparison.reference is not None:
        lines.append(printable(comparison.reference.summary()))
    lines.append(f"{verdict}: {len(comparison.rows)} tensors: {summary} "
                 f"(tolerance {comparison.tolerance.name})")
    return "\n".join(lines)


def _rules_summary(comparison: Comparison) -> str:
    """``rules reference (3 rules): 40 tensors judged by a rule (activations 38, inputs 2), 2 by preset f32``."""
    judged: dict[str, int] = {}
    for row in comparison.rows:
        if row.threshold is not None and row.metrics is not None:
            judged[row.threshold.name] = judged.get(row.threshold.name, 0) + 1
    preset = "preset " + comparison.tolerance.name
    by_rules = {name: n for name, n in judged.items() if name != preset}
    listed = ", ".join(f"{name} {n}" for name, n in by_rules.items())
    return printable(f"{comparison.rules.describe()}: {sum(by_rules.values())} tensors judged by a rule"
                     + (f" ({listed})" if listed else "") + f", {judged.get(preset, 0)} by {preset}")
