"""From a transformers tensor to ggml's layout: the steps a name map asks for, on numpy arrays.

ggml stores a tensor as ``ne`` (innermost first); a dump stores it as numpy
does, ``ne`` reversed, so llama.cpp's ``[n_embd, n_tokens]`` is numpy
``(n_tokens, n_embd)``: exactly a transformers hidden state without its batch
axis.  What differs is named by the steps (``docs/reference.md``):

- ``tokens_first``: attention's ``(heads, tokens, head_dim)`` made
  ``(tokens, heads, head_dim)``, as ggml keeps Q, K and V;
- ``heads:q``/``heads:kv``: ``(tokens, heads*head_dim)`` split into heads,
  as llama.cpp's ``ggml_reshape_3d`` does;
- ``rope_rows:q``/``rope_rows:kv``: the Q/K row permutation
  ``convert_hf_to_gguf.py`` applies for llama-style RoPE.  transformers
  rotates pairs (i, i + head_dim/2); ggml's normal RoPE rotates neighbours
  (2i, 2i+1), so the converter reorders each head's rows from (2, head_dim/2)
  to (head_dim/2, 2) and the GGUF's Q and K come out in that order.  A
  transformers activation gets the same reordering on its last axis.
- ``patches``: a convolution's ``(..., channels, rows, columns)`` output
  made ``(..., rows*columns, channels)``.  A vision tower's patch embedding
  is a ``Conv2d`` in transformers; ggml computes it as im2col and a matmul,
  one row of ``n_embd`` per patch (row-major over the grid), per tile:
  mllama's ``patch_embd`` is ``[n_embd, patches, tiles]``.
- ``one_image``: drops the images axis of transformers'
  ``(batch, images, tiles, patches, dim)`` vision outputs (the batch axis is
  already gone).  A ggml vision graph encodes one image, so it holds
  ``[dim, patches, tiles]``; there must be exactly one image.
- ``rows``: every axis but the last flattened into one, ggml's token rows.
  transformers' mllama hands the projector's output to the cross-attention
  layers as ``(tiles, patches, dim)`` (its batch axis is the tiles), where
  ggml has one row per image token, ``[dim, tiles*patches]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inspector.errors import InspectorError


@dataclass(frozen=True)
class Heads:
    """The attention geometry, from the checkpoint's config."""

    q: int
    kv: int
    head_dim: int

    def count(self, which: str) -> int:
        return self.q if which == "q" else self.kv


def _rope_rows(values: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """Reorder each head's last-axis entries (2, head_dim/2) -> (head_dim/2, 2); heads split or flat."""
    split = values.shape[-1] == head_dim
    if not split:
        values = values.reshape(*values.shape[:-1], heads, head_dim)
    moved = values.reshape(*values.shape[:-1], 2, head_dim // 2).swapaxes(-1, -2).reshape(values.shape)
    return moved if split else moved.reshape(*moved.shape[:-2], heads * head_dim)


def to_ggml(values: np.ndarray, steps: tuple[str, ...], heads: Heads) -> np.ndarray:
    """``values`` (one sequence, batch axis dropped) laid out as the ggml tensor the map names."""
    for step in steps:
        kind, _, which = step.partition(":")
        if kind == "tokens_first":
            if values.ndim != 3:
                raise InspectorError(f"layout tokens_first needs (heads, tokens, head_dim), got {values.shape}")
            values = values.swapaxes(0, 1)
        elif kind == "heads":
            count = heads.count(which)
            if values.shape[-1] != count * heads.head_dim:
                raise InspectorError(f"layout {step}: {values.shape[-1]} values per row are not {count} heads "
                                     f"of {heads.head_dim}")
            values = values.reshape(*values.shape[:-1], count, heads.head_dim)
        elif kind == "rope_rows":
            values = _rope_rows(values, heads.count(which), heads.head_dim)
        elif kind == "patches":
            if values.ndim < 3:
                raise InspectorError(f"layout patches needs (..., channels, rows, columns), got {values.shape}")
            values = values.reshape(*values.shape[:-2], -1).swapaxes(-1, -2)
        elif kind == "rows":
            values = values.reshape(-1, values.shape[-1])
        elif kind == "one_image":
            if values.ndim < 2 or values.shape[0] != 1:
                raise InspectorError(f"layout one_image needs one image on the first axis, got {values.shape}")
            values = values[0]
    return np.ascontiguousarray(values)
