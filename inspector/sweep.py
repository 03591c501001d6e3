"""Capture one model under many configurations and compare each with the first.

The classic question: "my answer changes with --n-gpu-layers".  A sweep runs
the cartesian product of offload counts and ``--vary`` settings, compares
every run with the first (the reference), and summarises, per tensor and per
configuration, the status, the NMSE and the buffer that held it.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inspector import gguf_info
from inspector.capture import capture_llama
from inspector.compare import FAILING, Comparison, compare_dumps
from inspector.errors import InspectorError
from inspector.ggml import load
from inspector.rpc import LoopbackServer
from inspector.runners.llama import LlamaRunConfig
from inspector.selection import Selection
from inspector.system import ggml_devices
from inspector.tolerance import Tolerance

ALL_LAYERS = 999  # llama.cpp clamps to the model's layers + output
VARIABLE_SETTINGS = {
    "flash_attn": str, "threads": int, "type_k": str, "type_v": str, "n_ubatch": int, "n_batch": int,
    "op_offload": lambda text: text.lower() in ("1", "true", "on", "yes"),
}
LAYER_SUFFIX = re.compile(r"-(\d+)$")
SUMMARY_NAME = "summary.json"


@dataclass
class SweepRun:
    label: str
    settings: dict[str, Any]
    dump: Path
    comparison: Comparison | None = None


@dataclass
class SweepResult:
    runs: list[SweepRun]
    rpc_endpoint: str | None
    summary_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def parse_layers(text: str) -> list[int]:
    """``0,8,16,all`` to layer counts (``all`` offloads everything)."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append(ALL_LAYERS)
        elif part.isdigit():
            counts.append(int(part))
        else:
            raise InspectorError(f"--n-gpu-layers takes numbers and 'all', separated by commas, not {part!r}")
    if not counts:
        raise InspectorError("--n-gpu-layers needs at least one value")
    return counts


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """``flash_attn=on,off`` to ("flash_attn", ["on", "off"])."""
    key, sep, values = text.partition("=")
    if not sep or key not in VARIABLE_SETTINGS or not values:
        raise InspectorError(f"--vary takes SETTING=V1,V2 with SETTING one of {', '.join(VARIABLE_SETTINGS)}; "
                             f"got {text!r}")
    try:
        return key, [VARIABLE_SETTINGS[key](value.strip()) for value in values.split(",")]
    except ValueError:
        raise InspectorError(f"--vary {key}: cannot parse {values!r}") from None


def _label(settings: dict[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if key == "n_gpu_layers":
            parts.append(f"ngl{'all' if value == ALL_LAYERS else value}")
        else:
            parts.append(f"{key}={value}")
    return "-".join(parts)


def has_gpu() -> bool:
    """True when ggml has a real GPU device (RPC devices do not count)."""
    return any(d["type"] in ("GPU", "IGPU") and not d["name"].startswith("RPC") for d in ggml_devices(load()))


def layer_of(name: str) -> int | None:
    match = LAYER_SUFFIX.search(name)
    return int(match.group(1)) if match else None


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
        "passed": all(not any(r.status in FAILING for r in run.comparison.rows)
                      for run in runs[1:] if run.comparison is not None),
    }


def run_sweep(base: LlamaRunConfig, layer_counts: list[int], varies: list[tuple[str, list[Any]]],
              rpc_mode: str, selection: Selection, out_dir: Path, tolerance: Tolerance, *,
              overwrite: bool = False, progress: Callable[[str], None] = lambda _m: None) -> SweepResult:
    """Capture every configuration into ``out_dir``, compare each with the first, write summary.json."""
    gguf_info.open_gguf(base.model)  # a bad model fails before any server starts or dump is written
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = ["n_gpu_layers"] + [key for key, _ in varies]
    grid = [dict(zip(keys, values, strict=True))
            for values in itertools.product(layer_counts, *[values for _, values in varies])]
    server: LoopbackServer | None = None
    endpoints = list(base.rpc)
    if rpc_mode == "auto":
        if not has_gpu() and any(count > 0 for count in layer_counts):
            server = LoopbackServer(threads=base.threads).start()
            endpoints = [server.endpoint]
            progress(f"no GPU: started a loopback RPC server on {server.endpoint}")
    elif rpc_mode not in ("", "none"):
        endpoints = [rpc_mode]
    try:
        runs = []
        for index, settings in enumerate(grid):
            label = _label(settings)
            dump = out_dir / f"{index:02d}-{label}.h5"
            config = replace(base, rpc=endpoints, **settings)
            progress(f"[{index + 1}/{len(grid)}] capturing {label}")
            capture_llama(config, selection, dump, overwrite=overwrite)
            runs.append(SweepRun(label, settings, dump))
        for run in runs[1:]:
            run.comparison = compare_dumps(runs[0].dump, run.dump, tolerance)
    finally:
        if server is not None:
            server.stop()
    summary = summarise(runs, tolerance)
    summary["rpc"] = endpoints
    summary_path = out_dir / SUMMARY_NAME
    summary_path.write_text(json.dumps(summary, indent=1))
    return SweepResult(runs, endpoints[0] if endpoints else None, summary_path, summary)


def render_matrix(summary: dict[str, Any], per_layer: bool = False) -> str:
    """Terminal table: rows = tensors (or layers), columns = configurations; cells = status/NMSE."""
    from inspector.formatting import number, table

    labels = [c["label"] for c in summary["configurations"] if not c["reference"]]
    short = {"identical": "=", "within": "~", "diverged": "X", "missing": "?", "mismatched": "!"}
    rows = []
    if per_layer:
        layers: dict[int, dict[str, tuple[str, float]]] = {}
        order = ["identical", "within", "missing", "diverged", "mismatched"]
        for tensor in summary["tensors"]:
            if tensor["layer"] is None:
                continue
            bucket = layers.setdefault(tensor["layer"], {})
            for label, cell in tensor["cells"].items():
                worst = bucket.get(label, ("identical", 0.0))
                nmse = max(worst[1], cell["nmse"] or 0.0)
                status = max(worst[0], cell["status"], key=order.index)
                bucket[label] = (status, nmse)
        for layer in sorted(layers):
            rows.append([f"layer {layer}"] + [f"{short[layers[layer][lb][0]]} {number(layers[layer][lb][1])}"
                                               if lb in layers[layer] else "" for lb in labels])
    else:
        for tensor in summary["tensors"]:
            cells = []
            for label in labels:
                cell = tensor["cells"].get(label)
                cells.append("" if cell is None else
                             f"{short[cell['status']]} {number(cell['nmse']) if cell['nmse'] is not None else ''}"
                             f" {cell['buffer'].split('[')[0]}".rstrip())
            name = tensor["name"] if tensor["occurrence"] == 0 else f"{tensor['name']} #{tensor['occurrence']}"
            rows.append([f"{tensor['eval']}:{name}"] + cells)
    lines = [table(["tensor" if not per_layer else "layer"] + labels, rows)]
    for config in summary["configurations"]:
        if config["reference"]:
            lines.append(f"reference: {config['label']}")
            continue
        first = config["first_divergence"]
        lines.append(f"{config['label']}: " + ("no divergence" if first is None else
                     f"first divergence {first['name']} (eval {first['eval']}, {first['status']}, "
                     f"buffer {first['buffer']})"))
    lines.append("legend: = identical, ~ within tolerance, X diverged, ? missing, ! mismatched; then NMSE and buffer")
    return "\n".join(lines)
