"""What each evaluation computed, recorded alike by every runner (``docs/format.md``, "Evaluation inputs").

Comparing two runs that made different sequences of graph evaluations
(another program, a warm-up, other batch splits) needs to know which
evaluations computed the same thing.  So every evaluation's info carries
``inputs``: the token ids fed (or, for input embeddings such as an image
chunk, a digest of them), their positions, their sequences when known, and
the rows that produce outputs; with ``source`` saying whether the runner
said so or the graph's input leafs were read.  An evaluation whose graph has
no such leafs (an image encoder, a user's own graph) says
``inputs_known: false``: it can only be paired by its index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inspector.dump.format import digest_of

RUNNER, GRAPH = "runner", "graph"
# llama.cpp's input leafs (src/llama-graph.cpp).  Fed embeddings, inp_embd is the graph's input itself and
# llama.cpp renames it "embd"; its output rows leaf is named "out_ids".
TOKENS_LEAF, POSITIONS_LEAF = "inp_tokens", "inp_pos"
EMBEDDINGS_LEAFS = ("inp_embd", "embd")
OUTPUT_ROWS_LEAFS = ("out_ids", "inp_out_ids")
INPUT_LEAFS = (TOKENS_LEAF, POSITIONS_LEAF, *EMBEDDINGS_LEAFS, *OUTPUT_ROWS_LEAFS)
# The hook's bounds (inspector/native/ggml_inspector_hook.c): larger leafs come without their bytes.
MAX_INPUT_VALUES = 1 << 20
MAX_INPUT_EMBD_BYTES = 64 << 20


def unknown() -> dict[str, Any]:
    """The info of an evaluation whose inputs nobody knows: it is paired by its index only."""
    return {"inputs_known": False}


def embedding_facts(embeddings: np.ndarray) -> dict[str, Any]:
    """``embd_digest`` and ``n_embd`` of input embeddings, one row per position.

    The digest is the dump's own tensor digest (:func:`~inspector.dump.format.digest_of`) of the float32
    bytes, so it equals the digest of an ``inp_embd`` tensor captured from the same evaluation.
    """
    rows = np.ascontiguousarray(embeddings, dtype=np.float32)
    return {"embd_digest": digest_of(rows), "n_embd": int(rows.shape[-1]) if rows.ndim else 0}


def runner_inputs(pos0: int, n_outputs: int, *, tokens: list[int] | None = None,
                  embeddings: np.ndarray | None = None, seq_id: int = 0) -> dict[str, Any]:
    """The info entries for what a Python runner fed one decode: tokens or embeddings from ``pos0``.

    The last ``n_outputs`` rows produce outputs, as the runner's batch asks of llama.cpp.
    """
    if tokens is not None:
        fed: dict[str, Any] = {"tokens": [int(token) for token in tokens]}
        n = len(tokens)
    elif embeddings is not None:
        fed = embedding_facts(embeddings)
        n = len(embeddings)
    else:
        raise ValueError("runner_inputs needs tokens or embeddings")
    return {"inputs_known": True, "inputs": {
        **fed, "n_tokens": n, "positions": list(range(pos0, pos0 + n)), "seq_ids": [seq_id] * n,
        "outputs": list(range(n - n_outputs, n)), "source": RUNNER}}


@dataclass
class GraphInputs:
    """An evaluation's input leafs as the native hook reads them while the graph computes, one at a time.

    Embeddings are kept as their digest only, so a stream's memory does not grow with its images.
    """

    values: dict[str, list[int]] = field(default_factory=dict)
    embeddings: dict[str, Any] | None = None
    omitted: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, values: np.ndarray | None, reason: str = "") -> None:
        """Leaf ``name``'s values (int32, or float32 rows for embeddings), or None and why they were left out."""
        if values is None:
            self.omitted[name] = reason
        elif name in EMBEDDINGS_LEAFS:
            self.embeddings = {**embedding_facts(values), "n_tokens": len(values)}
        else:
            self.values[name] = values.tolist()

    def info(self) -> dict[str, Any]:
        """The info entries: unknown without a tokens or embeddings leaf; every row outputs without ``out_ids``."""
        tokens = self.values.get(TOKENS_LEAF)
        if tokens is not None:
            inputs: dict[str, Any] = {"tokens": tokens, "n_tokens": len(tokens)}
        elif self.embeddings is not None:
            inputs = dict(self.embeddings)
        else:
            return {**unknown(), **({"inputs_omitted": dict(self.omitted)} if self.omitted else {})}
        if POSITIONS_LEAF in self.values:
            inputs["positions"] = self.values[POSITIONS_LEAF]
        out_rows = next((self.values[name] for name in OUTPUT_ROWS_LEAFS if name in self.values), None)
        if out_rows is not None:
            inputs["outputs"] = out_rows
        elif not any(name in self.omitted for name in OUTPUT_ROWS_LEAFS):
            inputs["outputs"] = list(range(inputs["n_tokens"]))
        inputs["source"] = GRAPH
        if self.omitted:
            inputs["omitted"] = dict(self.omitted)
        return {"inputs_known": True, "inputs": inputs}
