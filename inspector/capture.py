"""Glue a runner, a TensorHook and a DumpWriter into one capture.

The hook copies, the writer persists, the runner computes; this module only
wires them and turns the outcome (complete, interrupted, failed inside the
callback) into the dump's ``complete`` flag and a summary.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from inspector import rpc
from inspector.errors import CaptureInterrupted, InspectorError
from inspector.ggml import load
from inspector.hook import HookCounters, TensorHook
from inspector.record import TensorRecord
from inspector.runners import llama as llama_runner
from inspector.selection import Selection
from inspector.store import DumpWriter
from inspector.system import system_facts

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


@contextmanager
def _signals_stop(hook: TensorHook) -> Iterator[None]:
    """While the graph computes, Ctrl-C and SIGTERM ask the hook to stop instead of raising.

    A KeyboardInterrupt raised by Python's default handler can surface at the
    very entry of the ctypes callback, where ctypes swallows it ("Exception
    ignored on calling ctypes callback"); a flag cannot be lost that way.  The
    hook's flag also feeds llama.cpp's abort callback, which ends the compute.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda _signum, _frame: hook.request_stop())
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def capture_llama(config: llama_runner.LlamaRunConfig, selection: Selection, output: str | Path,
                  *, overwrite: bool = False, verbose: bool = False,
                  progress: Progress | None = None) -> CaptureSummary:
    """Run a llama.cpp model and write the selected tensors to ``output``.

    On Ctrl-C the dump is closed with ``complete=False`` and
    :class:`~inspector.errors.CaptureInterrupted` is raised; an exception
    inside the eval callback ends capturing, keeps the dump (incomplete) and
    is raised as an InspectorError once the run has finished.
    """
    config.validate()
    started = time.perf_counter()
    lib = load()
    if config.rpc:
        rpc.add_servers(config.rpc)  # before system_facts, so the dump lists the RPC devices
    run_config = {**llama_runner.describe_config(config), "model_facts": llama_runner.model_facts(config.model),
                  "select": {"globs": list(selection.globs), "regexes": list(selection.regexes)}}
    log = llama_runner.install_log(verbose)
    writer = DumpWriter(output, run_config, system_facts(lib), overwrite=overwrite)
    say = progress or (lambda _message: None)

    def sink(record: TensorRecord, array) -> None:
        writer.write(record, array)

    hook = TensorHook(selection, sink, lib)

    def begin_evaluation(kind: str, info: dict) -> int:
        index = writer.begin_evaluation(kind, info)
        say(f"evaluation {index} ({kind}, {info['n_tokens']} tokens); {writer.tensor_count} tensors so far")
        return index

    try:
        with _signals_stop(hook):
            result = llama_runner.run(config, hook, begin_evaluation, log)
        writer.set_result({
            "token_ids": result.token_ids,
            "generated_ids": result.generated_ids,
            "generated_text": result.generated_text,
            "evaluations": result.evaluations,
            "seconds": round(result.seconds, 3),
        })
    except (KeyboardInterrupt, CaptureInterrupted):
        writer.close(False, "interrupted")
        raise CaptureInterrupted(f"interrupted; kept {writer.tensor_count} tensors in {writer.path} "
                                 "(marked incomplete)") from None
    except BaseException as error:
        writer.close(False, f"{type(error).__name__}: {error}")
        raise
    if hook.error is not None:
        last_line = hook.error.splitlines()[-1]
        writer.close(False, f"capture stopped: {last_line}")
        raise InspectorError(f"capture stopped after {writer.tensor_count} tensors: {last_line} "
                             f"(kept in {writer.path}, marked incomplete)")
    writer.close(True)
    unmatched = {pattern: selection.suggestions(pattern) for pattern in selection.unmatched_patterns()}
    return CaptureSummary(
        path=writer.path, tensors=writer.tensor_count, bytes=writer.byte_count,
        evaluations=result.evaluations, seconds=time.perf_counter() - started,
        counters=hook.counters, unmatched=unmatched, result=result,
    )
