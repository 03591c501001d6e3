"""The metadata of one captured tensor: what the hook hands to the store.

A plain dataclass so that the hook (which fills it) and the store (which
persists it) share one definition and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from inspector.constants import NUMPY_DTYPE_OF_TYPE_NAME
from inspector.errors import DumpError

# A write's recorded rows are expanded into a list: at most this many (a 1M-token ubatch's transposed V).
MAX_ROWS_WRITTEN = 1 << 24

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
    # A KV-cache write (SET_ROWS) stores only the rows it wrote: their indices along the destination's ne[1], as
    # [first, count] runs in the order written (row r of the stored tensor is the r-th index), and the whole
    # destination's ne. Empty for every other tensor, which is stored whole.
    rows_written: list[list[int]] = field(default_factory=list)
    written_of_ne: list[int] = field(default_factory=list)

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


def rows_written_of(record: dict) -> list[int]:
    """The destination rows a stored KV-cache write holds, in stored order; [] for a tensor stored whole.

    Read from a dump, so checked (:func:`count_rows_written`).
    """
    if not count_rows_written(record):
        return []
    return [row for first, count in record["rows_written"] for row in range(first, first + count)]


def count_rows_written(record: dict) -> int:
    """How many destination rows a KV-cache write holds, 0 for a tensor stored whole; checked, not expanded.

    Checked: whole runs inside the destination's ``written_of_ne[1]`` rows,
    as many rows as the stored tensor has.  The native stream's reader
    checks every write's frame with this, so it costs the runs, not the rows.
    """
    runs, whole = record.get("rows_written") or [], record.get("written_of_ne") or []
    if not runs:
        return 0
    name = record.get("name")
    if not (isinstance(whole, list) and len(whole) == 4 and all(isinstance(n, int) and n > 0 for n in whole)):
        raise DumpError(f"{name!r}: a write's written_of_ne is not four positive integers")
    if not isinstance(runs, list):
        raise DumpError(f"{name!r}: its rows_written is not a list of runs")
    # One array for the runs (a transposed V write has thousands): whole numbers only, since an integer dtype
    # is what numpy makes of lists of ints alone (a float, a string or a ragged run gives another or fails).
    try:
        table = np.array(runs)
    except (ValueError, OverflowError):
        table = np.zeros((0, 0))
    if table.dtype.kind not in "iu" or table.ndim != 2 or table.shape[1] != 2:
        raise DumpError(f"{name!r}: its rows_written is not a list of [first, count] runs of whole numbers")
    first, lengths = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
    rows = min(whole[1], 1 << 56)  # beyond any tensor the hook reads; keeps the arithmetic in int64
    outside = (first < 0) | (lengths <= 0) | (lengths > MAX_ROWS_WRITTEN) | (first > rows - lengths)
    if outside.any():
        run = table[int(np.argmax(outside))].tolist()
        raise DumpError(f"{name!r}: its rows_written run {str(run)[:40]} is outside its {whole[1]} rows")
    count = int(lengths.sum())
    if count > MAX_ROWS_WRITTEN:
        raise DumpError(f"{name!r}: its rows_written holds {count} rows, more than {MAX_ROWS_WRITTEN}")
    ne = record.get("ne") or []
    if len(ne) < 2 or ne[1] != count:
        raise DumpError(f"{name!r}: stores {ne[1:2]} rows but records {count} written")
    return count
