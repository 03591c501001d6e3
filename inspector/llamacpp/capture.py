"""Glue a runner, a TensorHook and a DumpWriter into one capture.

The hook copies, the writer persists, the runner computes; this module only
wires them and turns the outcome (complete, interrupted, failed inside the
callback) into the dump's ``complete`` flag and a summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture.hook import HookCounters, SkippedTensor, TensorHook, stop_on_signals
from inspector.capture.selection import Selection
from inspector.dump.background_writer import BackgroundWriter
from inspector.dump.format import NO_COMPRESSION, Compression
from inspector.dump.writer import DumpWriter
from inspector.errors import CaptureInterrupted, InspectorError, SetupError
from inspector.files.disk_space import DiskFull
from inspector.ggml import load, rpc
from inspector.ggml.system import system_facts
from inspector.gguf.weights import WeightFiles
from inspector.llamacpp import session as llama_runner

Progress = Callable[[str], None]


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
    result: llama_runner.LlamaRunResult | None = None
    skipped: list[SkippedTensor] = field(default_factory=list)


def observer_check(config: llama_runner.LlamaRunConfig, hooked: llama_runner.LlamaRunResult,
                   log: llama_runner._LlamaLog) -> dict[str, Any]:
    """Run once more without the hook and say whether observing changed the logits.

    Asking the scheduler for a node splits the graph there and synchronises,
    which can defeat op fusion (or move an op to another backend) and change
    the very numbers being observed.  The same configuration, no eval
    callback: identical final logits and generated tokens mean the capture
    observed the run it describes.
    """
    plain = llama_runner.run(config, None, lambda _kind, _info: -1, log)
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


def capture_llama(config: llama_runner.LlamaRunConfig, selection: Selection, output: str | Path,
                  *, overwrite: bool = False, verbose: bool = False, progress: Progress | None = None,
                  stats_only: bool = False, compression: Compression = NO_COMPRESSION,
                  check_observer: bool = False) -> CaptureSummary:
    """Run a llama.cpp model and write the selected tensors to ``output``.

    The hook only copies; a :class:`BackgroundWriter` computes statistics and
    writes.  On Ctrl-C the dump is closed with ``complete=False`` and
    :class:`~inspector.errors.CaptureInterrupted` is raised; an exception
    inside the eval callback or the writer ends capturing, keeps the dump
    (incomplete) and is raised as an InspectorError once the run has
    finished; a full disk raises :class:`~inspector.files.disk_space.DiskFull`
    saying how much was kept.  A run refused before any graph ran (model, input,
    placement: :class:`~inspector.errors.SetupError`) leaves no dump behind.
    """
    config.validate()
    started = time.perf_counter()
    lib = load()
    if config.rpc:
        rpc.add_servers(config.rpc)  # before system_facts, so the dump lists the RPC devices
    run_config = {**llama_runner.describe_config(config),
                  "model_facts": llama_runner.model_facts(config.model, config.sha256),
                  **({"mmproj_facts": llama_runner.model_facts(config.mmproj, config.sha256)} if config.mmproj else {}),
                  "select": {"globs": list(selection.globs), "regexes": list(selection.regexes)}}
    log = llama_runner.install_log(verbose)
    writer = BackgroundWriter(DumpWriter(output, run_config, system_facts(lib), overwrite=overwrite,
                                         stats_only=stats_only, compression=compression))
    say = progress or (lambda _message: None)

    hook = TensorHook(selection, writer.write, lib, weights=WeightFiles(*filter(None, (config.model, config.mmproj))))

    def begin_evaluation(kind: str, info: dict) -> int:
        index = writer.begin_evaluation(kind, info)
        say(f"evaluation {index} ({kind}, {info['n_tokens']} tokens); {writer.tensor_count} tensors so far")
        return index

    def keep_skipped() -> None:
        if hook.skipped:
            writer.set_skipped([asdict(skip) for skip in hook.skipped])

    try:
        with stop_on_signals(hook):
            result = llama_runner.run(config, hook, begin_evaluation, log)
        keep_skipped()
        checked = {}
        if check_observer:
            say("observer check: the same run without the hook")
            checked = {"observer_check": observer_check(config, result, log)}
        writer.set_result({
            **checked,
            "token_ids": result.token_ids,
            "generated_ids": result.generated_ids,
            "generated_text": result.generated_text,
            "evaluations": result.evaluations,
            "seconds": round(result.seconds, 3),
            "n_ctx": result.n_ctx,
            **({"formatted_prompt": result.formatted_prompt} if result.formatted_prompt is not None else {}),
            **({"chunks": result.chunks, "images": result.images} if result.chunks is not None else {}),
        })
    except (KeyboardInterrupt, CaptureInterrupted):
        keep_skipped()
        writer.close(False, "interrupted")
        raise CaptureInterrupted(f"interrupted; kept {writer.tensor_count} tensors in {writer.path} "
                                 "(marked incomplete)") from None
    except SetupError as error:
        writer.close(False, f"run refused: {error}")
        if writer.tensor_count == 0:
            writer.path.unlink(missing_ok=True)
        raise
    except BaseException as error:
        writer.close(False, f"{type(error).__name__}: {error}")
        raise
    writer.drain()  # everything queued is written and flushed: the counts below are exact
    failure = writer.error or hook.failure
    if isinstance(failure, DiskFull):
        writer.close(False, f"{failure} after {writer.tensor_count} tensors")
        raise DiskFull(f"{failure} after {writer.tensor_count} tensors; kept in {writer.path}, "
                       "marked incomplete")
    if writer.error is not None or hook.error is not None:
        last_line = hook.error.splitlines()[-1] if hook.error else f"{type(failure).__name__}: {failure}"
        writer.close(False, f"capture stopped: {last_line}")
        raise InspectorError(f"capture stopped after {writer.tensor_count} tensors: {last_line} "
                             f"(kept in {writer.path}, marked incomplete)")
    writer.close(True)
    unmatched = {pattern: selection.suggestions(pattern) for pattern in selection.unmatched_patterns()}
    return CaptureSummary(
        path=writer.path, tensors=writer.tensor_count, bytes=writer.byte_count,
        evaluations=result.evaluations, seconds=time.perf_counter() - started,
        counters=hook.counters, unmatched=unmatched, result=result, skipped=hook.skipped,
    )
