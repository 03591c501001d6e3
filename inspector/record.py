"""The metadata of one captured tensor: what the hook hands to the store.

A plain dataclass so that the hook (which fills it) and the store (which
persists it) share one definition and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TensorRecord:
    """Everything known about a tensor at the moment it was captured.

    ``node_index`` is the position in the evaluation's execution order (the
    count of nodes the scheduler asked about before it); leafs, which the
    scheduler never asks about, carry the index of the node that consumed
    them.  ``occurrence`` counts earlier tensors of the same name in the same
    evaluation, because llama.cpp reuses names (``ffn_out-0`` names two ops).
    """

    name: str
    eval_index: int
    node_index: int
    occurrence: int
    op: str
    ggml_type: str
    ne: tuple[int, ...]
    nb: tuple[int, ...]
    buffer: str
    storage: str
    is_leaf: bool = False
    consumer: str = ""
    flags: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    view_source: str = ""
    view_offset: int = 0

    @property
    def key(self) -> tuple[int, str, int]:
        """The identity used to align two runs: (evaluation, name, occurrence)."""
        return (self.eval_index, self.name, self.occurrence)
