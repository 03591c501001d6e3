"""How ``mllama encode`` and ``sched-check`` read: what was captured where, and which memory was overwritten."""

from __future__ import annotations

from inspector.formatting import human_bytes, number, table
from inspector.mllama.encode import EncodeSummary
from inspector.mllama.generate import GenerateSummary


def encode_line(summary: EncodeSummary) -> str:
    placed = sorted(set(summary.placement.values()))
    return (f"captured {summary.tensors} tensors in {summary.seconds:.2f} s (weights on {', '.join(placed)}) "
            f"-> {summary.path}")


def _state(overwritten: bool) -> str:
    return "OVERWRITTEN" if overwritten else "intact"


def sched_check_text(summary: EncodeSummary) -> str:
    reads = summary.late_reads
    if summary.reallocated:
        lines = ["the scheduler reallocated its compute buffers for the next graph: the captured tensors' memory "
                 "was freed, so they were not re-read"]
    else:
        lines = [table(["tensor", "after its own graph", "after the next graph", "nmse vs capture"],
                       [[r.name + (f" #{r.occurrence}" if r.occurrence else ""), _state(r.overwritten_by_own_graph),
                         _state(r.overwritten_by_next_graph), number(r.nmse_after_next_graph)] for r in reads],
                       right_align={3})]
        own = sum(r.overwritten_by_own_graph for r in reads)
        later = sum(r.overwritten_by_next_graph for r in reads)
        lines.append(f"{own} of {len(reads)} captured tensors were overwritten by later nodes of their own graph, "
                     f"{later} after the next graph ran on the same scheduler; the hook's copies in the dump are "
                     "intact")
    lines += [f"{buffer.backend} compute buffer: {human_bytes(buffer.after_own_graph)} after its own graph, "
              f"{human_bytes(buffer.after_next_graph)} after the next graph" for buffer in summary.compute_buffers]
    return "\n".join(lines)


def generate_line(summary: GenerateSummary) -> str:
    placed = sorted(set(summary.placement.values()))
    return (f"generated {summary.generated_ids}; captured {summary.tensors} tensors in {summary.seconds:.2f} s "
            f"(weights on {', '.join(placed)}) -> {summary.path}")
