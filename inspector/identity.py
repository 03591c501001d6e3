"""Tensor identity: what makes a tensor in one run "the same tensor" in another.

Every part of the tool that pairs or groups tensors (the hook's occurrence
counting, compare, sweep summaries, plots, the report) asks this module, so
one run's ``RPC0#inp_pos#0`` and another's ``inp_pos`` are one tensor
everywhere, and ``l_out-7`` is layer 7 everywhere.

Why scheduler copies need normalising: when a graph input or weight is
consumed by a node that runs on another backend, ``ggml_backend_sched``
rewrites the consumer's ``src[]`` to a per-backend copy named
``BACKEND#name#N`` (ggml-backend.cpp, ``"%s#%s#%d"``).  The data is the same
as the original's; only where it lives differs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# BACKEND#name#copy; the backend name never holds '#', the tensor name may.  Matched whole (fullmatch) with
# ASCII digits and '.' matching a newline, as the native hook's parse_sched_copy reads the name's bytes
# (tests/test_c_python_mirrors.py): r"\d+$" would take "#１" or a trailing newline the C side refuses.
SCHED_COPY = re.compile(r"([^#]+)#(.+)#([0-9]+)", re.DOTALL)
LAYER_SUFFIX = re.compile(r"-(\d+)$")
# llama.cpp names its KV cache tensors cache_k_l0, cache_v_l0 (and cache_r/cache_s for recurrent state).
KV_CACHE_PREFIX = "cache_"
PARAMETER_SUFFIXES = (".weight", ".bias")


@dataclass(frozen=True)
class SchedCopy:
    """The parts of a scheduler copy's name."""

    backend: str
    original: str
    copy: int


def parse_sched_copy(name: str) -> SchedCopy | None:
    """``RPC0#inp_pos#0`` -> SchedCopy("RPC0", "inp_pos", 0); None for an ordinary name."""
    match = SCHED_COPY.fullmatch(name)
    if match is None:
        return None
    return SchedCopy(match.group(1), match.group(2), int(match.group(3)))


def canonical_name(name: str) -> str:
    """The name a tensor is paired by: a scheduler copy stands for its original."""
    copy = parse_sched_copy(name)
    return copy.original if copy is not None else name


def layer_of(name: str) -> int | None:
    """The layer number llama.cpp's callback names carry (``l_out-7`` -> 7), or None."""
    match = LAYER_SUFFIX.search(canonical_name(name))
    return int(match.group(1)) if match else None


def is_model_state(name: str) -> bool:
    """True for weights (GGUF names end in ``.weight``/``.bias``) and llama.cpp's KV cache.

    Tells a scheduler copy of a weight or cache, which "capture everything"
    leaves out, from a copy of a graph input, which it takes: the copy itself
    carries no input flag.
    """
    original = canonical_name(name)
    return original.endswith(PARAMETER_SUFFIXES) or original.startswith(KV_CACHE_PREFIX)


def kv_cache_of(name: str) -> str | None:
    """``cache_k_l0`` for llama.cpp's KV cache leaf and for the nodes that write or view it
    (``cache_k_l0 (view)``); None for any other tensor."""
    return name.split(" ", 1)[0] if name.startswith(KV_CACHE_PREFIX) else None


TensorKey = tuple[int, str, int]


def tensor_key(eval_index: int, name: str, occurrence: int) -> TensorKey:
    """The identity two runs are aligned by: (evaluation, canonical name, occurrence)."""
    return (eval_index, canonical_name(name), occurrence)
