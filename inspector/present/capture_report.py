"""What a finished capture or exec tells its user: unmatched patterns, generated text, the closing line."""

from __future__ import annotations

from typing import TYPE_CHECKING

from inspector.formatting import human_bytes, printable

if TYPE_CHECKING:
    from inspector.llamacpp.capture import CaptureSummary
    from inspector.native.exec import ExecSummary


def summary_lines(summary: CaptureSummary) -> list[str]:
    """Lines for stderr, warnings first, the closing line last."""
    lines = [f"warning: pattern {printable(repr(pattern))} matched no tensor; nearest names seen: "
             f"{', '.join(printable(name) for name in names)}" for pattern, names in summary.unmatched.items()]
    mode = summary.capture_mode
    if mode.get("hook") == "python" and mode.get("python_hook_because"):
        lines.append(f"note: the Python eval callback captured node by node: {printable(mode['python_hook_because'])}")
    elif mode.get("hook") == "native":
        lines.append(f"native hook: {mode.get('unsplit', 0)} evaluations computed in one piece")
        lines += [f"  {count} captured node by node: {printable(reason)}"
                  for reason, count in mode.get("callback", {}).items()]
    result = summary.result
    if result and result.generated_ids:
        lines.append(f"generated: {printable(repr(result.generated_text))}")
    lines.append(f"captured {summary.tensors} tensors ({human_bytes(summary.bytes)}) from {summary.evaluations} "
                 f"evaluations in {summary.seconds:.2f} s -> {summary.path}")
    return lines


def exec_lines(summary: ExecSummary) -> list[str]:
    """Lines for stderr after ``exec``: each process's graphs, then the closing line (the names the streams
    sent are escaped)."""
    lines = []
    for p in summary.processes:
        lines.append(f"process {p.pid} ({printable(p.argv0)}): {p.schedulers} schedulers, {p.computes} graph "
                     f"computations, {p.tensors} tensors; {p.unsplit} computed in one piece")
        lines += [f"  {count} captured node by node: {printable(reason)}"
                  for reason, count in p.callback_reasons.items()]
    lines += [f"note: {printable(skip.name)} (eval {skip.eval_index}) was not captured: {printable(skip.reason)}"
              for skip in summary.skipped]
    status = f"exit status {summary.exit_status}" if summary.exit_status >= 0 else "killed by a signal"
    lines.append(f"captured {summary.tensors} tensors ({human_bytes(summary.bytes)}) from {summary.evaluations} "
                 f"evaluations in {summary.seconds:.2f} s ({status}) -> {summary.path}")
    return lines
