"""How a dump reads on a terminal and in JSON: ``ls`` and ``show``.

Kept apart from :mod:`inspector.store`, which only reads, as
``compare_report`` is apart from ``compare``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from inspector.formatting import evaluation_label, number, shape_text, table
from inspector.store import Dump, Entry


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
        lines.append(f"warning: {dump.path} is incomplete ({dump.incomplete_reason}){dropped}")
    lines += [f"note: {skip['name']} (eval {skip['eval_index']}) was not captured: {skip['reason']}"
              for skip in dump.skipped]
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


def configuration(dump: Dump, command_line: str | None) -> str:
    """The recorded run configuration, key by key, then the command line that reproduces it."""
    lines = [f"{key} = {value}" for key, value in dump.config.items() if key not in ("model_facts", "select")]
    facts = dump.config.get("model_facts", {})
    if facts:
        lines.append(f"model: {facts.get('name') or '-'} ({facts.get('architecture') or '?'}), "
                     f"{facts.get('size')} bytes, fingerprint {facts.get('fingerprint')}")
    if dump.result and dump.result.get("token_ids") is not None:
        lines.append(f"tokens: {dump.result['token_ids']}")
    if command_line:
        lines += ["", command_line]
    return "\n".join(lines)


def edge_values(array: np.ndarray, count: int) -> tuple[list[float], list[float]]:
    """The first and the last ``count`` values (no tail when the head already holds every value).

    The tail slice starts at ``size - count`` rather than ``-count``: ``flat[-0:]``
    is the whole array, so ``-n 0`` would print every value instead of none.
    """
    flat = array.reshape(-1)
    return flat[:count].tolist(), flat[flat.size - count:].tolist() if flat.size > count else []


def tensor_json(entry: Entry, array: np.ndarray, metadata: dict[str, Any], count: int) -> dict[str, Any]:
    head, tail = edge_values(array, count)
    return {**entry_json(entry), "metadata": metadata, "sum": float(np.sum(array, dtype=np.float64)),
            "head": head, "tail": tail}


def tensor_text(entry: Entry, array: np.ndarray, metadata: dict[str, Any], count: int) -> str:
    head, tail = edge_values(array, count)
    stats = entry.stats
    total = float(np.sum(array, dtype=np.float64))
    lines = [
        f"{entry.name}  (eval {entry.eval_index}, node {entry.node_index}, occurrence {entry.occurrence})",
        f"  op {entry.op}, type {entry.ggml_type} stored as {array.dtype} ({entry.storage}), "
        f"numpy shape {shape_text(array.shape)}, ggml ne {shape_text(metadata.get('ne', []))}",
        f"  buffer {entry.buffer or '-'}; sources: {', '.join(metadata.get('sources', [])) or '-'}"
        + (f"; view of {metadata['view_source']}" if metadata.get("view_source") else ""),
        f"  min {number(stats.min)}  max {number(stats.max)}  mean {number(stats.mean)}  "
        f"std {number(stats.std)}  sum {number(total)}  nan {stats.n_nan}  inf {stats.n_inf}",
    ]
    if head:
        lines.append("  first: " + " ".join(number(float(v)) for v in head))
    if tail:
        lines.append("  last:  " + " ".join(number(float(v)) for v in tail))
    return "\n".join(lines)
