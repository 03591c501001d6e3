"""A sweep's summary: building it from comparisons, and the matrix the terminal and plots show.

Kept apart from running the sweep (``inspector.sweep.run``) so that presenting a
``summary.json`` needs neither llama.cpp nor a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspector.compare.runs import Comparison
from inspector.compare.tolerance import Tolerance
from inspector.formatting import number, printable, table
from inspector.identity import layer_of

STATUS_SYMBOLS = {"identical": "=", "within": "~", "diverged": "X", "missing": "?", "mismatched": "!",
                  "incomparable": "-"}
# Least to most severe: a layer's cell shows the worst status among its tensors.
STATUS_SEVERITY = ["identical", "incomparable", "within", "missing", "diverged", "mismatched"]


@dataclass
class SweepRun:
    label: str
    settings: dict[str, Any]
    dump: Path
    comparison: Comparison | None = None


def summarise(runs: list[SweepRun], tolerance: Tolerance) -> dict[str, Any]:
    """The sweep matrix: tensors in execution order x configurations, plus placement per layer."""
    reference = runs[0]
    tensors: dict[tuple[int, str, int], dict[str, Any]] = {}
    placement: dict[str, dict[str, list[str]]] = {}
    for run in runs[1:]:
        assert run.comparison is not None
        layers: dict[str, set[str]] = {}
        for row in run.comparison.rows:
            key = (row.eval_index, row.name, row.occurrence)
            entry = tensors.setdefault(key, {"eval": row.eval_index, "name": row.name, "occurrence": row.occurrence,
                                             "layer": layer_of(row.name), "buffer_reference": row.buffer_a,
                                             "cells": {}})
            entry["cells"][run.label] = {"status": row.status,
                                         "nmse": row.metrics.nmse if row.metrics else None,
                                         "buffer": row.buffer_b}
            layer = layer_of(row.name)
            if layer is not None and row.buffer_b:
                layers.setdefault(str(layer), set()).add(row.buffer_b)
        placement[run.label] = {layer: sorted(buffers) for layer, buffers in layers.items()}
    configurations = []
    for run in runs:
        item: dict[str, Any] = {"label": run.label, "settings": run.settings, "dump": str(run.dump),
                                "reference": run is reference}
        if run.comparison is not None:
            index = run.comparison.first_divergence
            first = run.comparison.rows[index] if index is not None else None
            item["counts"] = run.comparison.counts()
            item["first_divergence"] = None if first is None else {
                "eval": first.eval_index, "name": first.name, "occurrence": first.occurrence,
                "status": first.status, "nmse": first.metrics.nmse if first.metrics else None,
                "buffer": first.buffer_b}
        configurations.append(item)
    return {
        "reference": reference.label,
        "tolerance": {"name": tolerance.name, "nmse": tolerance.nmse, "atol": tolerance.atol, "rtol": tolerance.rtol},
        "configurations": configurations,
        "placement": placement,
        "tensors": list(tensors.values()),
        "passed": all(run.comparison.passed for run in runs[1:] if run.comparison is not None),
    }


@dataclass
class MatrixCell:
    status: str
    nmse: float | None
    buffer: str  # the buffer kind: CPU, RPC0, CUDA0 (endpoint dropped)


@dataclass
class SweepMatrix:
    """Rows (tensors or layers) x columns (configurations other than the reference)."""

    rows: list[str]
    columns: list[str]
    cells: list[list[MatrixCell | None]]


def _buffer_kind(buffer: str | None) -> str:
    return (buffer or "").split("[")[0]


def sweep_matrix(summary: dict[str, Any], per_layer: bool = False) -> SweepMatrix:
    """The cells of a summary; per layer, the worst status, the largest NMSE and the last buffer seen."""
    columns = [c["label"] for c in summary["configurations"] if not c["reference"]]
    tensors = summary["tensors"]
    if not per_layer:
        rows = [f"{t['eval']}:{t['name']}" + (f" #{t['occurrence']}" if t["occurrence"] else "") for t in tensors]
        cells = [[None if (cell := t["cells"].get(label)) is None else
                  MatrixCell(cell["status"], cell["nmse"], _buffer_kind(cell["buffer"])) for label in columns]
                 for t in tensors]
        return SweepMatrix(rows, columns, cells)
    layers: dict[int, dict[str, MatrixCell]] = {}
    for tensor in tensors:
        if tensor["layer"] is None:
            continue
        bucket = layers.setdefault(tensor["layer"], {})
        for label, cell in tensor["cells"].items():
            worst = bucket.get(label, MatrixCell("identical", 0.0, ""))
            bucket[label] = MatrixCell(max(worst.status, cell["status"], key=STATUS_SEVERITY.index),
                                       max(worst.nmse or 0.0, cell["nmse"] or 0.0), _buffer_kind(cell["buffer"]))
    ordered = sorted(layers)
    return SweepMatrix([f"layer {layer}" for layer in ordered], columns,
                       [[layers[layer].get(label) for label in columns] for layer in ordered])


def render_matrix(summary: dict[str, Any], per_layer: bool = False) -> str:
    """Terminal table: rows = tensors (or layers), columns = configurations; cells = status/NMSE."""
    matrix = sweep_matrix(summary, per_layer)
    rows = []
    for name, cells in zip(matrix.rows, matrix.cells, strict=True):
        texts = []
        for cell in cells:
            if cell is None:
                texts.append("")
            elif per_layer:
                texts.append(f"{STATUS_SYMBOLS[cell.status]} {number(cell.nmse or 0.0)}")
            else:
                nmse = number(cell.nmse) if cell.nmse is not None else ""
                texts.append(f"{STATUS_SYMBOLS[cell.status]} {nmse} {cell.buffer}".rstrip())
        rows.append([name] + texts)
    lines = [table(["layer" if per_layer else "tensor"] + matrix.columns, rows)]
    for config in summary["configurations"]:
        if config["reference"]:
            lines.append(f"reference: {config['label']}")
            continue
        first = config["first_divergence"]
        lines.append(f"{config['label']}: " + ("no divergence" if first is None else
                     f"first divergence {printable(first['name'])} (eval {first['eval']}, {first['status']}, "
                     f"buffer {printable(first['buffer'])})"))
    lines.append("legend: = identical, ~ within tolerance, X diverged, ? missing, ! mismatched, - incomparable; "
                 "then NMSE and buffer")
    return "\n".join(lines)
