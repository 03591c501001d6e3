"""What a finished capture tells its user: unmatched patterns, generated text, the closing line."""

from __future__ import annotations

from inspector.capture import CaptureSummary
from inspector.formatting import human_bytes


def summary_lines(summary: CaptureSummary) -> list[str]:
    """Lines for stderr, warnings first, the closing line last."""
    lines = [f"warning: pattern {pattern!r} matched no tensor; nearest names seen: {', '.join(names)}"
             for pattern, names in summary.unmatched.items()]
    result = summary.result
    if result and result.generated_ids:
        lines.append(f"generated: {result.generated_text!r}")
    lines.append(f"captured {summary.tensors} tensors ({human_bytes(summary.bytes)}) from {summary.evaluations} "
                 f"evaluations in {summary.seconds:.2f} s -> {summary.path}")
    return lines
