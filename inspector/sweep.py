"""Capture one model under many configurations and compare each with the first.

The classic question: "my answer changes with --n-gpu-layers".  A sweep runs
the cartesian product of offload counts and ``--vary`` settings, compares
every run with the first (the reference), and summarises, per tensor and per
configuration, the status, the NMSE and the buffer that held it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inspector import gguf_info
from inspector.capture import capture_llama
from inspector.compare import compare_dumps
from inspector.errors import InspectorError
from inspector.ggml import load
from inspector.rpc import LoopbackServer
from inspector.runners.llama import LlamaRunConfig
from inspector.selection import Selection
from inspector.sweep_summary import SweepRun, summarise
from inspector.system import ggml_devices
from inspector.tolerance import Tolerance

ALL_LAYERS = 999  # llama.cpp clamps to the model's layers + output
VARIABLE_SETTINGS = {
    "flash_attn": str, "threads": int, "type_k": str, "type_v": str, "n_ubatch": int, "n_batch": int,
    "op_offload": lambda text: text.lower() in ("1", "true", "on", "yes"),
}
SUMMARY_NAME = "summary.json"


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
