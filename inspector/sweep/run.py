"""Capture one model under many configurations and compare each with the first.

The classic question: "my answer changes with --n-gpu-layers".  A sweep runs
the cartesian product of offload counts and ``--vary`` settings, compares
every run with the first (the reference), and summarises, per tensor and per
configuration, the status, the NMSE and the buffer that held it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from inspector.capture.selection import Selection
from inspector.compare.runs import compare_dumps
from inspector.compare.tolerance import Tolerance
from inspector.constants import KV_CACHE_TYPES
from inspector.errors import InspectorError
from inspector.files.outputs import recorded_inputs, refuse_inputs, write_text
from inspector.ggml import load
from inspector.ggml.rpc import LoopbackServer
from inspector.ggml.system import ggml_devices
from inspector.gguf.header import read_header
from inspector.llamacpp.capture import capture_llama
from inspector.llamacpp.config import FLASH_ATTN_MODES, LlamaRunConfig
from inspector.sweep.summary import SweepRun, summarise

BOOLEANS = {"true": True, "on": True, "1": True, "yes": True, "false": False, "off": False, "0": False, "no": False}
# Settings whose runs cannot be compared tensor by tensor, with the reason.
UNPAIRABLE_SETTINGS = {
    key: "the runner splits the prompt into ubatches of min(n_batch, n_ubatch) tokens, one evaluation each, so "
         "runs with different values have different evaluations and their tensors cannot be paired by "
         "evaluation index"
    for key in ("n_batch", "n_ubatch")
}
SUMMARY_NAME = "summary.json"


def _choice(choices: Iterable[str]) -> Callable[[str], str]:
    """A parser that accepts exactly one of ``choices`` (so a typo fails before any capture)."""
    allowed = tuple(choices)

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text
    return parse


def _positive_int(text: str) -> int:
    """A count of at least 1 (threads): 0 or a word fails the sweep up front, not at its turn."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{value} is less than 1")
    return value


def _boolean(text: str) -> bool:
    """Only the spellings in BOOLEANS: anything else (``maybe``) is an error, not a silent False."""
    try:
        return BOOLEANS[text.lower()]
    except KeyError:
        raise ValueError(f"{text!r} is not one of {', '.join(BOOLEANS)}") from None


VARIABLE_SETTINGS: dict[str, Callable[[str], Any]] = {
    "flash_attn": _choice(FLASH_ATTN_MODES), "threads": _positive_int, "type_k": _choice(KV_CACHE_TYPES),
    "type_v": _choice(KV_CACHE_TYPES), "op_offload": _boolean,
}


@dataclass
class SweepResult:
    runs: list[SweepRun]
    rpc_endpoint: str | None
    summary_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def parse_layers(text: str) -> list[int | str]:
    """``0,8,16,all`` to layer counts (``all`` offloads everything), as llama-bench's ``-ngl`` list."""
    counts = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "all":
            counts.append("all")
        elif part.isdigit():
            counts.append(int(part))
        else:
            raise InspectorError(f"-ngl/--n-gpu-layers takes numbers and 'all', separated by commas, not {part!r}")
    if not counts:
        raise InspectorError("-ngl/--n-gpu-layers needs at least one value")
    return counts


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """``flash_attn=on,off`` to ("flash_attn", ["on", "off"]), every value checked now.

    Checking here, not when a value's turn comes, means a typo in the last
    value fails before the earlier configurations were captured.
    """
    key, sep, values = text.partition("=")
    if key in UNPAIRABLE_SETTINGS:
        raise InspectorError(f"--vary {key} is not supported: {UNPAIRABLE_SETTINGS[key]}")
    if not sep or key not in VARIABLE_SETTINGS or not values:
        raise InspectorError(f"--vary takes SETTING=V1,V2 with SETTING one of {', '.join(VARIABLE_SETTINGS)}; "
                             f"got {text!r}")
    try:
        return key, [VARIABLE_SETTINGS[key](value.strip()) for value in values.split(",")]
    except ValueError as error:
        raise InspectorError(f"--vary {key}: {error}") from None


def _label(settings: dict[str, Any]) -> str:
    parts = []
    for key, value in settings.items():
        if key == "n_gpu_layers":
            parts.append(f"ngl{value}")
        else:
            parts.append(f"{key}={value}")
    return "-".join(parts)


def has_gpu() -> bool:
    """True when ggml has a real GPU device (RPC devices do not count)."""
    return any(d["type"] in ("GPU", "IGPU") and not d["name"].startswith("RPC") for d in ggml_devices(load()))


@contextmanager
def offload_endpoints(base: LlamaRunConfig, needed: bool, auto_loopback: bool,
                      progress: Callable[[str], None]) -> Iterator[list[str]]:
    """The RPC endpoints runs offload to: ``base.rpc``; with none given, offload ``needed``, ``auto_loopback``
    and no GPU, a loopback RPC server that stands in for one and is stopped afterwards (Ctrl-C and errors too)."""
    if base.rpc or not needed or not auto_loopback or has_gpu():
        yield list(base.rpc)
        return
    server = LoopbackServer(threads=base.threads).start()
    progress(f"no GPU: started a loopback RPC server on {server.endpoint}")
    try:
        yield [server.endpoint]
    finally:
        server.stop()


def run_sweep(base: LlamaRunConfig, layer_counts: list[int | str], varies: list[tuple[str, list[Any]]],
              selection: Selection, out_dir: Path, tolerance: Tolerance, *, auto_loopback: bool = True,
              overwrite: bool = False, progress: Callable[[str], None] = lambda _m: None) -> SweepResult:
    """Capture every configuration into ``out_dir``, compare each with the first, write summary.json.

    Every configuration is validated, and the model opened, before any server
    starts or dump is written: a bad value fails the sweep, not its last run.
    Offload goes to ``base.rpc``; with none and no GPU, ``auto_loopback``
    starts a loopback RPC server to stand in for one.
    """
    keys = ["n_gpu_layers"] + [key for key, _ in varies]
    grid = [dict(zip(keys, values, strict=True))
            for values in itertools.product(layer_counts, *[values for _, values in varies])]
    configs = [replace(base, **settings) for settings in grid]
    for settings, config in zip(grid, configs, strict=True):
        try:
            config.validate()
        except InspectorError as error:
            raise InspectorError(f"sweep configuration {_label(settings)}: {error}") from None
    read_header(base.model)  # a bad model fails before any server starts or dump is written
    inputs = recorded_inputs(asdict(base))
    dumps = [out_dir / f"{index:02d}-{_label(settings)}.h5" for index, settings in enumerate(grid)]
    for planned in (*dumps, out_dir / SUMMARY_NAME):
        refuse_inputs(planned, inputs)  # before the first capture, not after the last
    out_dir.mkdir(parents=True, exist_ok=True)
    offloads = any(count != 0 for count in layer_counts)
    with offload_endpoints(base, offloads, auto_loopback, progress) as endpoints:
        runs = []
        for index, (settings, config, dump) in enumerate(zip(grid, configs, dumps, strict=True)):
            label = _label(settings)
            progress(f"[{index + 1}/{len(grid)}] capturing {label}")
            capture_llama(replace(config, rpc=endpoints), selection, dump, overwrite=overwrite)
            runs.append(SweepRun(label, settings, dump))
        for run in runs[1:]:
            run.comparison = compare_dumps(runs[0].dump, run.dump, tolerance)
    summary = summarise(runs, tolerance)
    summary["rpc"] = endpoints
    summary_path = out_dir / SUMMARY_NAME
    write_text(summary_path, json.dumps(summary, indent=1), inputs=inputs)
    return SweepResult(runs, endpoints[0] if endpoints else None, summary_path, summary)
