"""The unsplit mode for graphs this package computes itself (mllama's): flag, compute in one piece, read after.

The native hook does the same for any program (``ggml_inspector_hook.c``,
"the unsplit mode"); see :mod:`inspector.capture.mode` for why.  Here the
runner owns the scheduler, so there is nothing to interpose: it calls
:func:`plan` before ``ggml_backend_sched_reserve`` or ``alloc_graph``,
computes with no eval callback, and hands the graph to
:func:`capture_computed`.  The rules are the hook's:

- kept: every selected node, the node a selected view reads, and the leafs
  the allocator places that are inputs or selected (leafs are freed after
  their last consumer too);
- the bound: the bytes kept, an upper bound of what the compute buffers grow
  by, against the mode's ``unsplit_max_mib``;
- a graph that writes into a computed node in place falls back (read after the
  compute, that node would hold the later value);
- so does a graph on more than one backend: its scheduler copies of inputs may
  be reused once their split ran (the native hook reads their originals
  instead; this path does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inspector.capture.hook import TensorHook
from inspector.capture.mode import CaptureMode
from inspector.capture.selection import Selection
from inspector.constants import GGML_TENSOR_FLAG_INPUT, GGML_TENSOR_FLAG_OUTPUT
from inspector.ggml import GgmlLibraries, Tensor

# ops that only describe memory: they write nothing
_VIEW_OPS = frozenset({"NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})


@dataclass
class UnsplitPlan:
    """What :func:`plan` flagged, and why the graph is captured node by node instead ("" when it is not)."""

    kept: list[int] = field(default_factory=list)
    kept_bytes: int = 0
    fallback: str = ""

    @property
    def unsplit(self) -> bool:
        return not self.fallback


def nodes(lib: GgmlLibraries, graph: int) -> list[Tensor]:
    return [Tensor(lib, lib.base.ggml_graph_node(graph, i)) for i in range(lib.base.ggml_graph_n_nodes(graph))]


def _keep(tensor: Tensor, plan: UnsplitPlan) -> None:
    struct = tensor.struct
    if struct.buffer or struct.flags & GGML_TENSOR_FLAG_OUTPUT:
        return  # not the allocator's to place, or kept already
    struct.flags |= GGML_TENSOR_FLAG_OUTPUT
    plan.kept.append(tensor.address)
    if not struct.view_src:
        plan.kept_bytes += tensor.nbytes


def take_back(lib: GgmlLibraries, plan: UnsplitPlan) -> None:
    """Clear the flags :func:`plan` set."""
    for address in plan.kept:
        Tensor(lib, address).struct.flags &= ~GGML_TENSOR_FLAG_OUTPUT
    plan.kept.clear()


def _written_in_place(graph_nodes: list[Tensor]) -> str:
    for node in graph_nodes:
        target = node.view_source
        if target is not None and target.op_desc != "NONE" and node.op_desc not in _VIEW_OPS:
            return f"{node.name} ({node.op_desc}) writes into {target.name} in place"
    return ""


def plan(lib: GgmlLibraries, graph: int, selection: Selection, mode: CaptureMode, *, n_backends: int = 1,
         why_not: str = "") -> UnsplitPlan:
    """Flag ``graph``'s selected tensors as outputs before the scheduler plans or allocates it, or say why not.

    ``why_not``: the runner's own reason to capture this graph node by node.
    """
    graph_nodes = nodes(lib, graph)
    result = UnsplitPlan()
    if not mode.unsplit:
        result.fallback = "the per-node callback was asked for (--mode callback)"
    elif why_not:
        result.fallback = why_not
    elif n_backends > 1:
        result.fallback = ("the graph runs on more than one backend: its scheduler copies of inputs are not kept "
                           "(the native hook's exec keeps them)")
    else:
        result.fallback = _written_in_place(graph_nodes)
    if result.fallback:
        return result
    for node in graph_nodes:
        if selection.matches(node.name):
            _keep(node, result)
            source = node.view_source
            if source is not None and source.op_desc != "NONE":
                _keep(source, result)
        for source in node.sources:
            if source.op_desc == "NONE" and source.view_source is None and \
                    (source.flags & GGML_TENSOR_FLAG_INPUT or selection.matches(source.name)):
                _keep(source, result)
    if result.kept_bytes > mode.max_bytes:
        take_back(lib, result)
        result.fallback = (f"keeping the selected tensors would take up to {-(-result.kept_bytes >> 20)} MiB of "
                           f"compute buffer, over the bound of {mode.unsplit_max_mib} MiB (--unsplit-max-mib)")
    return result


def capture_computed(hook: TensorHook, lib: GgmlLibraries, graph: int) -> None:
    """After ``graph`` was computed in one piece: every node in order, asked and observed as the callback would."""
    for node in nodes(lib, graph):
        if hook.on_node(node.address, ask=True):
            hook.on_node(node.address, ask=False)
