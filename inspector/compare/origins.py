"""Origins: the ops that introduced a difference between two runs, given identical inputs.

``compare``'s first divergence is where a difference crossed the tolerance;
by then it has usually grown through many ops.  An *origin* is a node whose
output differs while every input it read was identical in both runs: the
captured activations bit for bit, and weights with the same bytes in both
model files.  What differs at an origin is the op itself (its kernel, its
backend, its buffer types or the type it writes), or a weight the two model
files disagree on.  The hook records, per node, the pairing key, buffer and
type of every source (``source_details``), so the two runs' nodes and their
inputs are found again here.  A node with an input that was not captured is
reported as open: it may be an origin, or its input may already have differed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture.selection import SelectionDescription
from inspector.compare.verdict import IDENTICAL, INCOMPARABLE
from inspector.dump.reader import Dump, Entry
from inspector.errors import InspectorError
from inspector.gguf.header import GgufHeader, fingerprint, read_header, read_tensor_bytes
from inspector.identity import KV_CACHE_PREFIX, PARAMETER_SUFFIXES, kv_cache_of

# Enough to read: each further origin is usually a consequence the first one explains.
MAX_ORIGINS = 20
# Verdicts.
OP_DIFFERS = "op"  # identical inputs and weights: the op computed differently
WEIGHT_DIFFERS = "weight"  # identical activations, a weight the model files disagree on
OPEN = "open"  # an input was not captured: an origin, or a consequence of that input
# A source's state when it could not be compared (other batch splits): as unknown as one not captured.
NOT_COMPARED = "not compared"
GRAPH_DIFFERS = "graph"  # an input exists in one run only: the two graphs differ here


@dataclass
class SourceState:
    """One input of an origin: whether it was identical, and where it lived in each run."""

    name: str
    occurrence: int
    state: str  # identical, differs, same weight, weight differs, not captured, not compared
    buffer_a: str = ""
    buffer_b: str = ""
    buffer_type_a: str = ""
    buffer_type_b: str = ""
    type_a: str = ""
    type_b: str = ""


@dataclass
class Origin:
    eval_index: int
    eval_kind: str
    node: int
    name: str
    occurrence: int
    op: str
    verdict: str
    explanation: str
    nmse: float | None
    max_abs_diff: float | None
    buffers: dict[str, str]
    types: dict[str, str]
    sources: list[SourceState] = field(default_factory=list)

    @property
    def not_captured(self) -> list[str]:
        return [s.name for s in self.sources if s.state == "not captured"]


def _is_weight(name: str) -> bool:
    return name.endswith(PARAMETER_SUFFIXES) and not name.startswith(KV_CACHE_PREFIX)


class _Weights:
    """Whether a weight has the same bytes in both runs' model files, read in O(tensor) from each header.

    The fingerprint hashes a file's ends only, so equal fingerprints prove
    nothing about a weight in the middle: only equal full sha256s (``--sha256``)
    skip the comparison.  A file is read only if it is still the one its run
    used (same fingerprint now as recorded), else its weights are unknown.
    """

    def __init__(self, dump_a: Dump, dump_b: Dump) -> None:
        facts = [dump.config.get("model_facts") or {} for dump in (dump_a, dump_b)]
        self.same_file = bool(facts[0].get("sha256")) and facts[0].get("sha256") == facts[1].get("sha256")
        self.facts = facts
        self.paths = [dump.config.get("model") for dump in (dump_a, dump_b)]
        self._headers: list[GgufHeader | None] | None = None
        self._answers: dict[str, str] = {}

    def _opened(self) -> list[GgufHeader | None]:
        """Each run's header, None where its file is gone or changed; one header object for one file.

        Both runs naming the same file (the usual case) share a header, and
        :meth:`state` then knows without reading that each weight's bytes are
        the same: reading them twice from one file could not disagree.
        """
        if self._headers is None:
            self._headers = []
            for index, (path, facts) in enumerate(zip(self.paths, self.facts, strict=True)):
                try:
                    unchanged = bool(path) and Path(path).is_file() and bool(facts.get("fingerprint")) \
                        and fingerprint(path) == facts["fingerprint"]
                    if unchanged and index and self._headers[0] is not None and os.path.samefile(self.paths[0], path):
                        self._headers.append(self._headers[0])
                    else:
                        self._headers.append(read_header(path) if unchanged else None)
                except (InspectorError, OSError):
                    self._headers.append(None)
        return self._headers

    def state(self, name: str) -> str:
        if self.same_file:
            return "same weight"
        if name not in self._answers:
            headers = self._opened()
            if None in headers or any(name not in header.tensors for header in headers):
                self._answers[name] = "not captured"
            else:
                equal = headers[0] is headers[1] \
                    or read_tensor_bytes(headers[0], name) == read_tensor_bytes(headers[1], name)
                self._answers[name] = "same weight" if equal else "weight differs"
        return self._answers[name]


def _sources(details_a: list[Any], details_b: list[Any]) -> list[SourceState]:
    """The two runs' source details, paired by position; raises TypeError/ValueError on a malformed one."""
    sources = []
    for detail_a, detail_b in zip(details_a, details_b, strict=True):
        if not isinstance(detail_a, dict) or not isinstance(detail_b, dict):
            raise TypeError("a source detail that is not an object")
        sources.append(SourceState(
            str(detail_a["name"]), int(detail_a["occurrence"]), "", str(detail_a.get("buffer", "")),
            str(detail_b.get("buffer", "")), str(detail_a.get("buffer_type", "")),
            str(detail_b.get("buffer_type", "")), str(detail_a.get("type", "")), str(detail_b.get("type", ""))))
    return sources


def _explain(verdict: str, sources: list[SourceState], record_a: dict[str, Any], record_b: dict[str, Any]) -> str:
    if verdict == WEIGHT_DIFFERS:
        changed = [s.name for s in sources if s.state == "weight differs"]
        return f"its inputs are identical but the model files' {', '.join(changed)} differ"
    if verdict == GRAPH_DIFFERS:
        alone = [f"{s.name} ({s.state})" for s in sources if s.state.startswith("only in")]
        return (f"the runs computed different graphs here: it reads {', '.join(alone)}; compare the ops around "
                "it, since the same name no longer means the same computation")
    if verdict == OPEN:
        uncompared = [s.name for s in sources if s.state == NOT_COMPARED]
        if uncompared:
            return (f"{', '.join(uncompared)} could not be compared across the runs' different batches: this op "
                    "may have introduced the difference, or that input already differed")
        missing = [s.name for s in sources if s.state == "not captured"]
        return (f"{', '.join(missing)} not captured: this op may have introduced the difference, or "
                f"{'that input' if len(missing) == 1 else 'those inputs'} already differed (capture "
                f"{'it' if len(missing) == 1 else 'them'} to decide)")
    placements = []
    if record_a.get("ggml_type") != record_b.get("ggml_type"):
        placements.append(f"it writes {record_a.get('ggml_type')} in A and {record_b.get('ggml_type')} in B")
    if _where(str(record_a.get("buffer", ""))) != _where(str(record_b.get("buffer", ""))):
        placements.append(f"its output lived in {record_a.get('buffer')} in A and {record_b.get('buffer')} in B")
    for source in sources:
        where_a = _where(source.buffer_type_a or source.buffer_a)
        where_b = _where(source.buffer_type_b or source.buffer_b)
        if where_a != where_b or source.type_a != source.type_b:
            placements.append(f"{source.name} was {source.type_a} in {where_a} in A and {source.type_b} in "
                              f"{where_b} in B")
    detail = "; ".join(placements) if placements else "placed and typed alike in both runs (a kernel that is not "\
        "deterministic, or one that depends on the graph around it)"
    return f"identical inputs, different output: the op itself differs ({detail})"


def _captured_everything(dump: Dump) -> bool:
    return SelectionDescription.from_config(dump.config).selects_all


def _where(buffer: str) -> str:
    """``RPC0[127.0.0.1:50052]`` -> ``RPC0``: two captures against loopback servers differ only in the port."""
    return buffer.split("[", 1)[0]


def _read_a_difference(record_a: dict[str, Any], eval_index: int, status: dict[tuple[int, str, int], str]) -> bool:
    """Whether A's record names a source whose comparison differed (False where it cannot tell)."""
    details = record_a.get("source_details")
    if not isinstance(details, list):
        return False
    for detail in details:
        try:
            key = (eval_index, str(detail["name"]), int(detail["occurrence"]))
        except (TypeError, ValueError, KeyError):
            return False  # malformed: left to find_origins, which skips the node
        if status.get(key, IDENTICAL) not in (IDENTICAL, INCOMPARABLE):
            return True
    return False


def find_origins(rows: list[Any], dump_a: Dump, dump_b: Dump, limit: int = MAX_ORIGINS,
                 filtered: bool = False) -> list[Origin]:
    """The origins among ``rows`` (a comparison's, execution order), the first ``limit`` of them.

    ``filtered``: the comparison left tensors out (``compare -T``), so a KV
    cache's writes may be missing and its content cannot be vouched for.
    """
    status = {(row.eval_index, row.name, row.occurrence): row.status for row in rows if row.present_in == "both"}
    one_sided = {(row.eval_index, row.name, row.occurrence): row.present_in for row in rows
                 if row.present_in != "both"}
    candidates = [row for row in rows if row.present_in == "both" and row.status not in (IDENTICAL, INCOMPARABLE)]
    if not candidates:
        return []
    # A KV cache is a leaf no run captures; its content differs from the first write to it that differed.
    # Known only when every write was captured and compared.
    caches_known = not filtered and _captured_everything(dump_a) and _captured_everything(dump_b)
    first_bad_write: dict[str, int] = {}
    for position, row in enumerate(rows):
        cache = kv_cache_of(row.name)
        if cache and row.present_in == "both" and row.status != IDENTICAL and row.op_a in ("SET_ROWS", "CPY"):
            first_bad_write.setdefault(cache, position)
    position_of = {id(row): position for position, row in enumerate(rows)}
    entries_a = {entry.key: entry for entry in dump_a.entries()}
    entries_b = {}
    for entry in dump_b.entries():
        entries_b.setdefault(entry.key, entry)
    pairs: list[tuple[Any, Entry, Entry]] = []
    for row in candidates:
        a = entries_a.get((row.eval_index, row.name, row.occurrence))
        # B's own evaluation index: alignment may pair A's evaluation N with another of B's.
        b_eval = row.eval_index if row.eval_index_b is None else row.eval_index_b
        b = entries_b.get((b_eval, row.name_b or row.name, row.occurrence))
        if a is not None and b is not None and not a.is_leaf:
            pairs.append((row, a, b))
    records_a = dump_a.metadata_of([a for _row, a, _b in pairs])
    # A node that read a differing input is a consequence whatever B recorded: B's records are parsed only
    # for the rest (after a run diverged, nearly every node reads a difference).
    pairs = [(row, a, b) for row, a, b in pairs if not _read_a_difference(records_a[a.seq], row.eval_index, status)]
    records_b = dump_b.metadata_of([b for _row, _a, b in pairs])
    weights = _Weights(dump_a, dump_b)
    origins: list[Origin] = []
    for row, a, b in pairs:
        record_a, record_b = records_a[a.seq], records_b[b.seq]
        details_a, details_b = record_a.get("source_details"), record_b.get("source_details")
        if not isinstance(details_a, list) or not isinstance(details_b, list) or not details_a \
                or len(details_a) != len(details_b):
            continue  # captured before sources were recorded, or a different op: nothing to decide on
        try:
            sources = _sources(details_a, details_b)
        except (TypeError, ValueError):
            continue  # a malformed record (someone else's file): no verdict on this node
        for source in sources:
            key = (row.eval_index, source.name, source.occurrence)
            if key in status:
                source.state = {IDENTICAL: "identical", INCOMPARABLE: NOT_COMPARED}.get(status[key], "differs")
            elif key in one_sided:
                source.state = f"only in {one_sided[key].upper()}"
            elif kv_cache_of(source.name) == source.name and caches_known:  # the cache leaf, not a view of it
                # Cleared at the start, then what the writes before this node put there.
                source.state = "differs" if first_bad_write.get(source.name, len(rows)) < position_of[id(row)] \
                    else "same content"
            elif _is_weight(source.name):
                source.state = weights.state(source.name)
            else:
                source.state = "not captured"
        states = {source.state for source in sources}
        if "differs" in states:
            continue  # a consequence: it was handed a different input
        if any(state.startswith("only in") for state in states):
            verdict = GRAPH_DIFFERS
        else:
            verdict = OPEN if states & {"not captured", NOT_COMPARED} \
                else WEIGHT_DIFFERS if "weight differs" in states else OP_DIFFERS
        metrics = row.metrics
        origins.append(Origin(
            eval_index=row.eval_index, eval_kind=row.eval_kind, node=a.node_index, name=row.name,
            occurrence=row.occurrence, op=row.op_a, verdict=verdict,
            explanation=_explain(verdict, sources, record_a, record_b),
            nmse=None if metrics is None or not np.isfinite(metrics.nmse) else float(metrics.nmse),
            max_abs_diff=None if metrics is None or not np.isfinite(metrics.max_abs_diff)
            else float(metrics.max_abs_diff),
            buffers={"a": a.buffer, "b": b.buffer, "a_type": a.buffer_type, "b_type": b.buffer_type},
            types={"a": a.ggml_type, "b": b.ggml_type}, sources=sources))
        if len(origins) >= limit:
            break
    return origins
