"""How a dump reads on a terminal and in JSON: ``ls`` and ``show``.

Kept apart from :mod:`inspector.dump.reader`, which only reads, as
``compare_report`` is apart from ``compare``.
"""

from __future__ import annotations

import math
from typing import Any

from inspector.dump.reader import Dump, Entry, TensorPreview
from inspector.formatting import evaluation_label, number, printable, shape_text, table


def entry_json(entry: Entry) -> dict[str, Any]:
    stats = entry.stats

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "eval": entry.eval_index, "node": entry.node_index, "name": entry.name, "occurrence": entry.occurrence,
        "op": entry.op, "type": entry.ggml_type, "shape": list(entry.shape), "buffer": entry.buffer,
        "buffer_type": entry.buffer_type, "storage": entry.storage, "is_leaf": entry.is_leaf,
        "nbytes": entry.nbytes, "digest": entry.digest,
        "min": finite(stats.min), "max": finite(stats.max), "mean": finite(stats.mean), "std": finite(stats.std),
        "n_nan": stats.n_nan, "n_inf": stats.n_inf,
    }


def listing_json(dump: Dump, entries: list[Entry]) -> dict[str, Any]:
    return {"path": str(dump.path), "complete": dump.complete, "incomplete_reason": dump.incomplete_reason,
            "dropped_bytes": dump.dropped_bytes, "skipped": dump.skipped, "config": dump.config,
            "evaluations": dump.evaluations, "tensors": [entry_json(e) for e in entries]}


def notes(dump: Dump) -> list[str]:
    """Warnings a reader must see before trusting the listing: incomplete, tensors not captured."""
    lines = []
    if not dump.complete:
        dropped = (f"; dropped {dump.dropped_bytes} bytes written after the last indexed tensor"
                   if dump.dropped_bytes else "")
        lines.append(f"warning: {printable(dump.path)} is incomplete ({printable(dump.incomplete_reason)}){dropped}")
    lines += [f"note: {printable(skip.get('name'))} (eval {printable(skip.get('eval_index'))}) was not captured: "
              f"{printable(skip.get('reason'))}" for skip in dump.skipped]
    return lines


def listing(entries: list[Entry], kinds: dict[int, str] | None = None) -> str:
    """The tensor table; ``kinds`` labels each evaluation (an image encoder's ``encode`` beside ``prompt``)."""
    kinds = kinds or {}
    rows = [[evaluation_label(e.eval_index, kinds.get(e.eval_index, "")),
             str(e.node_index), e.name + ("" if e.occurrence == 0 else f" #{e.occurrence}"),
             e.op, e.ggml_type, shape_text(e.shape), e.buffer, number(e.stats.min), number(e.stats.max),
             number(e.stats.mean), number(e.stats.std), str(e.stats.n_nan), str(e.stats.n_inf)]
            for e in entries]
    return table(["eval", "node", "name", "op", "type", "shape", "buffer", "min", "max", "mean", "std", "nan",
                  "inf"], rows, right_align={0, 1, 7, 8, 9, 10, 11, 12})


# ``ls --evals`` shows this many token ids and positions of each evaluation; --json shows them all.
FIRST_VALUES = 8


def _first(values: object) -> str:
    """The first few values of a recorded list, ``...`` when there are more; anything else as it reads."""
    if not isinstance(values, list):
        return "" if values is None else str(values)
    return " ".join(str(value) for value in values[:FIRST_VALUES]) + (" ..." if len(values) > FIRST_VALUES else "")


def _inputs_row(evaluation: dict[str, Any]) -> list[str]:
    inputs = evaluation.get("inputs")
    if not isinstance(inputs, dict):
        said = "inputs unknown" if "inputs_known" in evaluation else "inputs not recorded (an older dump)"
        return ["", "", said, "", ""]
    fed = (_first(inputs.get("tokens")) if "tokens" in inputs
           else f"embd {inputs.get('embd_digest')} (n_embd {inputs.get('n_embd')})")
    outputs = inputs.get("outputs")
    return [str(inputs.get("source", "")), str(inputs.get("n_tokens", "")), fed, _first(inputs.get("positions")),
            str(len(outputs)) if isinstance(outputs, list) else ""]


def evaluations_listing(evaluations: list[dict[str, Any]]) -> str:
    """One line per evaluation: what it computed (docs/format.md, "Evaluation inputs"), or that nobody knows.

    Every cell goes through :func:`~inspector.formatting.printable` (in :func:`table`): a dump's info is
    someone else's text.
    """
    rows = [[evaluation_label(e["index"], str(e["kind"])), *_inputs_row(e), _taken(e)] for e in evaluations]
    return table(["eval", "source", "n", "tokens", "positions", "outputs", "taken"], rows, right_align={0, 2, 5})


def _taken(evaluation: dict[str, Any]) -> str:
    """How the evaluation's tensors were taken: in one piece (with how many held), or node by node and why."""
    mode = evaluation.get("capture_mode")
    if mode == "unsplit":
        held = evaluation.get("capture_held")
        return f"unsplit, {held} held" if held else "unsplit"
    reason = evaluation.get("capture_mode_reason")
    return f"node by node: {reason}" if mode == "callback" and reason else "node by node"



def configuration(dump: Dump, command_line: str | None) -> str:
    """The recorded run configuration, key by key, then the command line that reproduces it (one line each)."""
    lines = [f"{printable(key)} = {printable(value)}" for key, value in dump.config.items()
             if key not in ("model_facts", "select")]
    facts = dump.config.get("model_facts", {})
    if isinstance(facts, dict) and facts:
        weights = f", weights {printable(facts['file_type'])}" if facts.get("file_type") else ""
        lines.append(f"model: {printable(facts.get('name') or '-')} ({printable(facts.get('architecture') or '?')}), "
                     f"{printable(facts.get('size'))} bytes, fingerprint {printable(facts.get('fingerprint'))}"
                     f"{weights}")
    if dump.result and dump.result.get("token_ids") is not None:
        lines.append(f"tokens: {printable(dump.result['token_ids'])}")
    if command_line:
        lines += ["", printable(command_line)]
    return "\n".join(lines)


def tensor_json(entry: Entry, values: TensorPreview, metadata: dict[str, Any]) -> dict[str, Any]:
    """``show --json``: the index row, the record, and the values ``Dump.preview`` read (not the tensor)."""
    return {**entry_json(entry), "metadata": metadata, "sum": values.total, "head": values.head, "tail": values.tail}


def tensor_text(entry: Entry, values: TensorPreview, metadata: dict[str, Any]) -> str:
    """``show``: the index row, the record, and the values ``Dump.preview`` read (not the tensor)."""
    head, tail, total = values.head, values.tail, values.total
    stats = entry.stats
    sources = metadata.get("sources") or []
    lines = [
        f"{printable(entry.name)}  (eval {entry.eval_index}, node {entry.node_index}, occurrence {entry.occurrence})",
        f"  op {printable(entry.op)}, type {printable(entry.ggml_type)} stored as {values.dtype} "
        f"({printable(entry.storage)}), numpy shape {shape_text(values.shape)}, "
        f"ggml ne {printable(shape_text(metadata.get('ne', [])))}",
        f"  buffer {printable(entry.buffer or '-')}; sources: "
        f"{', '.join(printable(source) for source in sources) or '-'}"
        + (f"; view of {printable(metadata['view_source'])}" if metadata.get("view_source") else ""),
        f"  min {number(stats.min)}  max {number(stats.max)}  mean {number(stats.mean)}  "
        f"std {number(stats.std)}  sum {number(total)}  nan {stats.n_nan}  inf {stats.n_inf}",
    ]
    if head:
        lines.append("  first: " + " ".join(number(float(v)) for v in head))
    if tail:
        lines.append("  last:  " + " ".join(number(float(v)) for v in tail))
    return "\n".join(lines)
