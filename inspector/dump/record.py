"""The metadata of one captured tensor: what the hook hands to the store.

A plain dataclass so that the hook (which fills it) and the store (which
persists it) share one definition and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inspector.constants import NUMPY_DTYPE_OF_TYPE_NAME

# numpy dtype -> ggml type name, for arrays that did not come out of a ggml graph.
GGML_TYPE_NAME_OF_DTYPE = {np.dtype(dtype).name: name for name, dtype in NUMPY_DTYPE_OF_TYPE_NAME.items()}


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
    # The buffer's type: CPU_REPACK where ``buffer`` says CPU; explains placement divergences.
    buffer_type: str = ""
    # "buffer" (read from the backend at compute time) or "file" (a weight whose buffer
    # cannot be read back, read from the model file by name and offset).
    read_from: str = "buffer"
    # The scheduler copy it was read through (RPC0#inp_pos#0), when its consumer ran on another backend.
    sched_copy: str = ""
    consumer: str = ""
    flags: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    view_source: str = ""
    view_offset: int = 0
    # Per source, in src[] order: the (name, occurrence) it is paired by in this evaluation (occurrence -1
    # when the hook never saw it: a weight), where it lived and its type. compare's origins read these.
    source_details: list[dict] = field(default_factory=list)
    # The op's parameters, ggml's int32 words (trailing zeros dropped), and its enum ggml_op value:
    # what a replay of the op needs.
    op_params: list[int] = field(default_factory=list)
    op_code: int = -1

    @property
    def key(self) -> tuple[int, str, int]:
        """The identity used to align two runs: (evaluation, name, occurrence)."""
        return (self.eval_index, self.name, self.occurrence)

    @classmethod
    def for_array(cls, name: str, array: np.ndarray, eval_index: int, node_index: int, op: str) -> TensorRecord:
        """A record for an array made outside ggml (preprocessing, an imported file).

        ``ne`` is the numpy shape reversed and padded to four dimensions; ``nb``
        the strides of the contiguous layout, as ggml would have them.
        """
        type_name = GGML_TYPE_NAME_OF_DTYPE.get(array.dtype.name)
        if type_name is None:
            raise ValueError(f"no ggml type for numpy dtype {array.dtype}")
        ne = tuple(reversed(array.shape)) + (1,) * (4 - array.ndim)
        nb = [array.dtype.itemsize]
        for n in ne[:-1]:
            nb.append(nb[-1] * n)
        return cls(name=name, eval_index=eval_index, node_index=node_index, occurrence=0, op=op,
                   ggml_type=type_name, ne=ne, nb=tuple(nb), buffer="", storage="native", is_leaf=True,
                   flags=["input"])
