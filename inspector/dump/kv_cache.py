"""A KV cache as of an evaluation, rebuilt from the writes a dump stores by rows.

Dumps store each KV-cache write as the rows it wrote (``rows_written``,
``docs/format.md``), never the whole cache, so a dump grows with the tokens.
Whoever needs the cache itself (what attention read at evaluation E) gets it
here: the cache starts cleared, as llama.cpp clears it, and every write up to
E puts its rows in place, in the order they ran.
"""

from __future__ import annotations

import numpy as np

from inspector.constants import DEFAULT_MAX_READ_BYTES
from inspector.dump.reader import Dump, Entry
from inspector.dump.record import rows_written_of
from inspector.errors import DumpError
from inspector.identity import kv_cache_of

WRITE_OPS = ("SET_ROWS",)


def cache_writes(dump: Dump, cache: str, eval_index: int) -> list[Entry]:
    """The writes into ``cache`` (``cache_k_l0``) up to and including evaluation ``eval_index``, in order."""
    writes = [entry for entry in dump.entries() if entry.op in WRITE_OPS and kv_cache_of(entry.name) == cache
              and entry.eval_index <= eval_index]
    return sorted(writes, key=lambda entry: (entry.eval_index, entry.node_index))


def rebuild_cache(dump: Dump, cache: str, eval_index: int, max_bytes: int = DEFAULT_MAX_READ_BYTES) -> np.ndarray:
    """``cache`` as it was after evaluation ``eval_index``: shape (rows, ne0) of the destination the writes name.

    A write stored whole (a dump from before writes were stored by rows) is
    the cache itself at that point; the writes after it update its rows.
    """
    writes = cache_writes(dump, cache, eval_index)
    if not writes:
        raise DumpError(f"{dump.path}: no write into {cache!r} was captured up to evaluation {eval_index}")
    records = dump.metadata_of(writes)
    values: np.ndarray | None = None
    for entry in writes:
        record = records[entry.seq]
        rows = rows_written_of(record)
        whole = record.get("written_of_ne") if rows else record.get("ne")
        if not isinstance(whole, list) or len(whole) != 4 or whole[2:] != [1, 1]:
            raise DumpError(f"{dump.path}: {entry.name!r} does not write whole rows of a 2-D cache")
        shape = (int(whole[1]), int(whole[0]))
        if values is None or values.shape != shape:
            if shape[0] * shape[1] * np.dtype(entry.dtype).itemsize > max_bytes:
                raise DumpError(f"{dump.path}: {cache!r} holds {shape[0]} rows of {shape[1]}, over the "
                                f"{max_bytes}-byte read limit")
            values = np.zeros(shape, dtype=entry.dtype)
        stored = dump.read(entry, max_bytes=max_bytes).reshape(-1, shape[1])
        if rows:
            values[rows] = stored
        else:
            values[:] = stored
    assert values is not None
    return values
