"""The computation graph around the first origin: the nodes and edges a picture of it needs, read from the dumps.

An origin is a node whose inputs agreed while its output did not, so what a
reader wants to see is those inputs, where they lived, and how far the
difference went.  The hook records every captured node's sources
(``source_details``: name, occurrence, buffer, buffer type, type), so the
graph of one evaluation is rebuilt from that evaluation's records alone: the
origin, its sources a few levels back, its consumers a level or two forward,
bounded so that the picture stays readable.  A node the dump did not capture
(a weight, the KV cache, anything a selection left out) is known only from its
consumers' records: it appears with its buffer and type, without an op or
sources of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from inspector.compare.runs import Comparison, TensorComparison
from inspector.dump.reader import Dump
from inspector.identity import canonical_name, is_model_state, kv_cache_of, tensor_key

# Enough to show an op's inputs and their inputs, and where the difference went; more is unreadable.
MAX_NODES = 40
SOURCE_LEVELS = 3
CONSUMER_LEVELS = 2
# What the sources leave for the consumers when they could fill the picture.
CONSUMER_SHARE = 12
# States of nodes that no comparison row covers.
WEIGHT = "weight"
KV_CACHE = "KV cache"
NOT_CAPTURED = "not captured"
NOT_COMPARED = "not compared"

NodeKey = tuple[str, int]


@dataclass
class _Known:
    """What one dump's records say about a node of one evaluation."""

    op: str = ""
    buffer: str = ""
    buffer_type: str = ""
    type: str = ""
    sources: list[NodeKey] = field(default_factory=list)
    captured: bool = False


@dataclass(frozen=True)
class GraphNode:
    """One node of the picture; ``level`` < 0 for sources, > 0 for consumers, 0 for the origin."""

    name: str
    occurrence: int
    level: int
    status: str
    op: str = ""
    captured: bool = False
    buffer_a: str = ""
    buffer_b: str = ""
    buffer_type_a: str = ""
    buffer_type_b: str = ""
    type_a: str = ""
    type_b: str = ""
    nmse: float | None = None


@dataclass(frozen=True)
class Neighbourhood:
    """The nodes around the first origin (nodes[0]) in A's evaluation, and source -> consumer edges by position."""

    eval_index: int
    eval_kind: str
    nodes: list[GraphNode]
    edges: list[tuple[int, int]]
    # Nodes within reach that the bound left out (those seen; the walk does not go on past the bound).
    left_out: int


def _source_key(detail: dict[str, Any]) -> NodeKey | None:
    """A source detail's pairing key; None for a malformed one (the dump is someone else's file)."""
    name, occurrence = detail.get("name"), detail.get("occurrence")
    if not isinstance(name, str) or not isinstance(occurrence, int) or isinstance(occurrence, bool):
        return None
    return canonical_name(name), occurrence


def _evaluation_graph(dump: Dump, eval_index: int) -> dict[NodeKey, _Known]:
    """Every node of one evaluation the records name, captured or only read by a captured node."""
    entries = [entry for entry in dump.entries() if entry.eval_index == eval_index]
    records = dump.metadata_of(entries)
    graph: dict[NodeKey, _Known] = {}
    for entry in entries:
        node = graph.setdefault((entry.name, entry.occurrence), _Known())
        if node.captured:
            continue
        node.op, node.buffer, node.buffer_type, node.type = entry.op, entry.buffer, entry.buffer_type, entry.ggml_type
        node.captured, node.sources = True, []
        for detail in records[entry.seq].get("source_details") or []:
            key = _source_key(detail)
            if key is None:
                continue
            node.sources.append(key)
            source = graph.setdefault(key, _Known())
            if not source.captured and not source.buffer:
                source.buffer, source.buffer_type = str(detail.get("buffer", "")), str(detail.get("buffer_type", ""))
                source.type = str(detail.get("type", ""))
    return graph


def _walk(start: NodeKey, neighbours: Callable[[NodeKey], Iterable[NodeKey]], levels: int, sign: int,
          budget: int, chosen: dict[NodeKey, int]) -> int:
    """Breadth first from ``start`` for ``levels`` steps, adding to ``chosen`` (key -> level) while it holds
    fewer than ``budget`` nodes; returns how many nodes it reached and left out."""
    frontier, left_out = [start], set()
    for level in range(1, levels + 1):
        reached = []
        for key in frontier:
            for other in neighbours(key):
                if other in chosen or other in left_out:
                    continue
                if len(chosen) >= budget:
                    left_out.add(other)
                    continue
                chosen[other] = sign * level
                reached.append(other)
        frontier = reached
    return len(left_out)


def _origin_row(comparison: Comparison) -> TensorComparison | None:
    """The comparison row of the first origin, None without one."""
    if not comparison.origins:
        return None
    origin = comparison.origins[0]
    return next((row for row in comparison.rows if (row.eval_index, row.name, row.occurrence)
                 == (origin.eval_index, origin.name, origin.occurrence)), None)


def _status(key: NodeKey, row: TensorComparison | None, known: _Known, origin_states: dict[NodeKey, str]) -> str:
    """A comparison status for a compared node; for any other, what the records and the origin know of it."""
    if row is not None:
        return row.status
    if key in origin_states:
        return origin_states[key]  # same weight, weight differs, same content...: decided by origins
    if known.captured:
        return NOT_COMPARED
    if kv_cache_of(key[0]) == key[0]:
        return KV_CACHE
    return WEIGHT if is_model_state(key[0]) else NOT_CAPTURED


def find_neighbourhood(comparison: Comparison, dump_a: Dump, dump_b: Dump) -> Neighbourhood | None:
    """The graph around the first origin of ``comparison`` between A and B.

    None without an origin, or when A's records do not hold it.  Nodes are
    A's; B's placement of each comes from B's records of the evaluation
    alignment paired with A's.
    """
    origin_row = _origin_row(comparison)
    if origin_row is None:
        return None
    graph_a = _evaluation_graph(dump_a, origin_row.eval_index)
    origin = (origin_row.name, origin_row.occurrence)
    if origin not in graph_a:
        return None
    eval_b = origin_row.eval_index if origin_row.eval_index_b is None else origin_row.eval_index_b
    graph_b = _evaluation_graph(dump_b, eval_b)
    consumers: dict[NodeKey, list[NodeKey]] = {}
    for key, node in graph_a.items():
        for source in node.sources:
            consumers.setdefault(source, []).append(key)
    chosen = {origin: 0}
    left_out = _walk(origin, lambda key: graph_a[key].sources, SOURCE_LEVELS, -1, MAX_NODES - CONSUMER_SHARE, chosen)
    left_out += _walk(origin, lambda key: consumers.get(key, ()), CONSUMER_LEVELS, 1, MAX_NODES, chosen)
    rows: dict[tuple[int, str, int], TensorComparison] = {}
    for row in comparison.rows:
        rows.setdefault(tensor_key(row.eval_index, row.name, row.occurrence), row)
    origin_states = {(source.name, source.occurrence): source.state for source in comparison.origins[0].sources}
    nodes = []
    for key, level in chosen.items():
        row = rows.get(tensor_key(origin_row.eval_index, *key))
        known_a = graph_a[key]
        name_b = row.name_b if row is not None and row.name_b else key[0]
        known_b = graph_b.get((name_b, key[1]), _Known())
        nodes.append(GraphNode(
            name=key[0], occurrence=key[1], level=level, status=_status(key, row, known_a, origin_states),
            op=known_a.op, captured=known_a.captured, buffer_a=known_a.buffer, buffer_b=known_b.buffer,
            buffer_type_a=known_a.buffer_type, buffer_type_b=known_b.buffer_type, type_a=known_a.type,
            type_b=known_b.type, nmse=row.metrics.nmse if row is not None and row.metrics is not None else None))
    position = {key: index for index, key in enumerate(chosen)}
    edges = list(dict.fromkeys((position[source], position[key]) for key in chosen
                               for source in graph_a[key].sources if source in position))
    return Neighbourhood(eval_index=origin_row.eval_index, eval_kind=origin_row.eval_kind, nodes=nodes, edges=edges,
                         left_out=left_out)
