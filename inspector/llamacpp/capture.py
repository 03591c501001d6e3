"""Glue the llama.cpp runner (text and images) to a TensorHook inside one CaptureSession.

The hook copies, the session's writer persists, the runner computes; this
module only says what the dump records of the run and sums the capture up.
How the capture ends (complete, interrupted, a full disk, a failure inside
the callback) is the session's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inspector.capture.hook import HookCounters, SkippedTensor
from inspector.capture.selection import Selection
from inspector.capture.session import CaptureSession, Progress
from inspector.dump.format import NO_COMPRESSION, Compression, StatsOf, TensorStats
from inspector.ggml import load, rpc
from inspector.ggml.log import LogBuffer, install_log
from inspector.ggml.system import system_facts
from inspector.gguf.weights import WeightFiles
from inspector.llamacpp.config import LlamaRunConfig, describe_config
from inspector.llamacpp.decode import LlamaRunResult
from inspector.llamacpp.decode import run as run_llama
from inspector.llamacpp.facts import model_facts


@dataclass
class CaptureSummary:
    """What a capture did, for the CLI's closing line and for tests."""

    path: Path
    tensors: int
    bytes: int
    evaluations: int
    seconds: float
    counters: HookCounters
    unmatched: dict[str, list[str]] = field(default_factory=dict)
    result: LlamaRunResult | None = None
    skipped: list[SkippedTensor] = field(default_factory=list)
    # How the evaluations were captured: the hook that ran and, for the native one, the modes it used.
    capture_mode: dict[str, Any] = field(default_factory=dict)


class CapturingHook(Protocol):
    """A hook that is not the session's TensorHook (the preloaded native hook): the runner's view of it."""

    callback: Any
    interrupted: bool
    counters: HookCounters
    skipped: list[SkippedTensor]

    def begin_evaluation(self, index: int) -> None: ...
    def catch_up(self) -> None: ...
    def should_abort(self) -> bool: ...
    def request_stop(self) -> None: ...
    def modes(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


# Makes the capture's hook inside its session, before the model loads.
HookFactory = Callable[[CaptureSession], CapturingHook]


def observer_check(config: LlamaRunConfig, hooked: LlamaRunResult,
                   log: LogBuffer) -> dict[str, Any]:
    """Run once more without the hook and say whether observing changed the logits.

    Asking the scheduler for a node splits the graph there and synchronises,
    which can defeat op fusion (or move an op to another backend) and change
    the very numbers being observed.  The same configuration, no eval
    callback: identical final logits and generated tokens mean the capture
    observed the run it describes.
    """
    plain = run_llama(config, None, lambda _kind, _info: -1, log)
    a, b = hooked.prompt_logits, plain.prompt_logits
    # Bits, not values: a NaN the unobserved run also produced is the same result.
    identical = a.shape == b.shape and a.tobytes() == b.tobytes()
    difference = None
    if a.shape == b.shape and a.size:
        gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
        difference = None if np.isnan(gap).all() else float(np.nanmax(gap))
    return {"identical": identical and hooked.generated_ids == plain.generated_ids,
            "logits_identical": identical, "max_abs_diff": difference,
            "generated_identical": hooked.generated_ids == plain.generated_ids,
            "plain_generated_ids": plain.generated_ids}


def recorded_config(config: LlamaRunConfig, selection: Selection) -> dict[str, Any]:
    """What the dump records of the run: the options, the model files' facts, the selection."""
    return {**describe_config(config),
            "model_facts": model_facts(config.model, config.sha256),
            **({"mmproj_facts": model_facts(config.mmproj, config.sha256)} if config.mmproj else {}),
            "select": selection.describe()}


def recorded_result(result: LlamaRunResult, checked: dict[str, Any]) -> dict[str, Any]:
    """What the dump records of the run's outcome (with the observer check's verdict, when asked)."""
    return {
        **checked,
        "token_ids": result.token_ids,
        "generated_ids": result.generated_ids,
        "generated_text": result.generated_text,
        "evaluations": result.evaluations,
        "seconds": round(result.seconds, 3),
        "n_ctx": result.n_ctx,
        **({"formatted_prompt": result.formatted_prompt} if result.formatted_prompt is not None else {}),
        **({"chunks": result.chunks, "images": result.images} if result.chunks is not None else {}),
    }


def capture_llama(config: LlamaRunConfig, selection: Selection, output: str | Path,
                  *, overwrite: bool = False, verbose: bool = False, progress: Progress | None = None,
                  stats_only: bool = False, compression: Compression = NO_COMPRESSION,
                  check_observer: bool = False, hook_factory: HookFactory | None = None,
                  capture_mode: dict[str, Any] | None = None, stats_of: StatsOf = TensorStats.of) -> CaptureSummary:
    """Run a llama.cpp model and write the selected tensors to ``output``.

    The hook only copies; the :class:`CaptureSession`'s background writer
    computes statistics and writes, and the session turns how the run ended
    (SIGINT or SIGTERM, a full disk, a failure inside the eval callback, a
    run refused before any graph ran) into the dump's state and one error.
    ``hook_factory`` makes another hook than the Python eval callback (the
    command line's preloaded native hook); ``capture_mode`` is recorded in
    the dump's config (which hook ran, the mode asked for, why not another);
    ``stats_of`` computes the tensors' statistics (the command line's is in C).
    """
    config.validate()
    started = time.perf_counter()
    lib = load()
    if config.rpc:
        rpc.add_servers(config.rpc)  # before system_facts, so the dump lists the RPC devices
    log = install_log(verbose)
    capture_mode = capture_mode or {"hook": "python",
                                    "python_hook_because": "called through the Python API, with no native hook"}
    recorded = {**recorded_config(config, selection), "capture_mode": capture_mode}
    with CaptureSession(output, recorded, system_facts(lib), overwrite=overwrite, stats_only=stats_only,
                        compression=compression, progress=progress, stats_of=stats_of) as session:
        native = hook_factory(session) if hook_factory is not None else None
        hook = session.use_hook(native) if native is not None else session.tensor_hook(
            selection, lib, weights=WeightFiles(*filter(None, (config.model, config.mmproj))))

        def begin_evaluation(kind: str, info: dict) -> int:
            return session.begin_evaluation(kind, info, f"{kind}, {info['n_tokens']} tokens")

        try:
            result = run_llama(config, hook, begin_evaluation, log)
        finally:
            if native is not None:
                native.close()  # every frame read, the hook off: the observer check runs unhooked
        checked = {}
        if check_observer:
            session.say("observer check: the same run without the hook")
            checked = {"observer_check": observer_check(config, result, log)}
        session.finish(recorded_result(result, checked))
    unmatched = {pattern: selection.suggestions(pattern) for pattern in selection.unmatched_patterns()}
    return CaptureSummary(
        path=session.path, tensors=session.tensor_count, bytes=session.byte_count,
        evaluations=result.evaluations, seconds=time.perf_counter() - started,
        counters=hook.counters, unmatched=unmatched, result=result, skipped=hook.skipped,
        capture_mode={**recorded["capture_mode"], **(native.modes() if native is not None else {})},
    )
