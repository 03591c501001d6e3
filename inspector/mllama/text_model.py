"""The Llama 3.2 Vision language model as a ggml graph: a Llama 3.1 decoder with cross-attention layers.

Mirrors transformers' ``MllamaTextModel`` op for op (``docs/mllama.md``
lists the quirks it keeps).  Self-attention layers are Llama 3.1's: RMS
norm, RoPE in the NEOX (rotate-half) convention with Llama 3's frequency
factors (``rope_freqs``), grouped-query attention over a KV cache, SwiGLU.
The layers listed in ``cross_attention_layers`` attend instead to the image:
their K and V are computed once per image from the projector's output (the
input leaf ``cross_attn_states``), normalised per head and kept in a cache
of their own, as the original port kept them in ``kv_cache.layer[3]``.

Dimensions are ggml ``ne`` (fastest first): ``H`` hidden size, ``d`` head
size, ``n`` the tokens of this graph, ``n_kv`` the cached positions they
attend to, ``L`` the image's keys (tiles × (patches + 1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.errors import InspectorError, ModelError
from inspector.ggml.buffers import BackendTensors
from inspector.ggml.graph import Backend, Context
from inspector.gguf import reader as gguf_info
from inspector.mllama import gguf_layout as L

GRAPH_SIZE = 16384
F32_MIN = float(np.finfo(np.float32).min)
ROPE_NEOX = 2


@dataclass(frozen=True)
class TextHParams:
    vocab: int
    embedding_rows: int
    hidden: int
    n_layers: int
    ffn: int
    heads: int
    heads_kv: int
    eps: float
    rope_base: float
    cross_layers: tuple[int, ...]
    image_token: int
    context: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def read_text_hparams(reader) -> TextHParams:
    """The language model's hyperparameters, or one line saying the file has no language model."""
    def value(key: str):
        found = gguf_info.field_value(reader, key)
        if found is None:
            raise ModelError(f"the GGUF has no {key}: it holds no mllama language model (convert the whole "
                             "checkpoint with 'ggml-inspector mllama convert')")
        return found

    cross = reader.get_field(L.KEY_CROSS_LAYERS)
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise ModelError("the GGUF has no token_embd.weight: it holds no mllama language model")
    return TextHParams(
        vocab=int(value(L.KEY_TEXT_VOCAB)), embedding_rows=int(embedding.shape[1]),
        hidden=int(value(L.KEY_TEXT_HIDDEN)), n_layers=int(value(L.KEY_TEXT_LAYERS)), ffn=int(value(L.KEY_TEXT_FFN)),
        heads=int(value(L.KEY_TEXT_HEADS)), heads_kv=int(value(L.KEY_TEXT_HEADS_KV)),
        eps=float(value(L.KEY_TEXT_EPS)), rope_base=float(value(L.KEY_TEXT_ROPE_BASE)),
        cross_layers=tuple(int(cross.parts[i][0]) for i in cross.data) if cross is not None else (),
        image_token=int(value(L.KEY_IMAGE_TOKEN)), context=int(value(L.KEY_TEXT_CONTEXT)),
    )


def text_layer(name: str) -> int | None:
    """The layer of ``blk.N.*``, None for the embedding, the output and rope_freqs."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and len(parts) > 1 and parts[1].isdigit() else None


@dataclass
class TextModel:
    """The language model's weights and its caches (self-attention K/V per position, cross K/V per image)."""

    hparams: TextHParams
    image_keys: int
    weights: BackendTensors
    cache: BackendTensors
    n_ctx: int

    def free(self) -> None:
        self.weights.free()
        self.cache.free()


def load_text_model(path: str | Path, cpu: Backend, offload: Backend | None, offload_layers: int, n_ctx: int,
                    image_keys: int) -> TextModel:
    """Upload the language model's weights and allocate its caches; layers below ``offload_layers`` offloaded.

    ``image_keys`` is the number of vision tokens one image gives (tiles ×
    positions), the width of the cross-attention caches.
    """
    reader = gguf_info.open_gguf(path)
    hparams = read_text_hparams(reader)
    if n_ctx > hparams.context:
        raise InspectorError(f"-c {n_ctx} is more than the model's context length {hparams.context}")

    def backend_of(layer: int | None) -> Backend:
        return offload if offload is not None and layer is not None and layer < offload_layers else cpu

    weights = BackendTensors()
    weights.upload([t for t in reader.tensors if L.is_text_tensor(t.name)],
                   lambda name: backend_of(text_layer(name)), L.takes_any_weight_type)
    h, cache = hparams, BackendTensors()
    width = h.head_dim * h.heads_kv
    for backend in filter(None, (cpu, offload)):
        shapes = {}
        for layer in range(h.n_layers):
            if backend_of(layer) is not backend:
                continue
            if layer in h.cross_layers:
                shapes[f"cache_xk_l{layer}"] = (np.float32, (h.head_dim, h.heads_kv, image_keys))
                shapes[f"cache_xv_l{layer}"] = (np.float32, (h.head_dim, h.heads_kv, image_keys))
            else:
                shapes[f"cache_k_l{layer}"] = (np.float32, (width, n_ctx))
                shapes[f"cache_v_l{layer}"] = (np.float32, (width, n_ctx))
        cache.allocate(backend, shapes)
    cache.clear()  # a dump shows zeros, not old memory, where nothing was written yet
    return TextModel(hparams, image_keys, weights, cache, n_ctx)


@dataclass(frozen=True)
class ImageRows:
    """Which positions see the image, as Hugging Face's ``cross_attention_mask`` says for one image.

    A token at or after the image token attends to the image's real tiles;
    one before it has no allowed key, so HF gives it an all-zero additive mask
    (it attends to every image key, padding tiles included) and zeroes only
    its cross-attention MLP output.  Generated tokens inherit the last
    prompt row, as ``generate`` repeats it.
    """

    image_position: int
    tiles: int
    max_tiles: int
    positions_per_tile: int

    def masks(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The additive cross mask (n, L) and the row mask (n, 1) of tokens at ``positions``."""
        allowed = positions >= self.image_position
        real = np.repeat(np.arange(self.max_tiles) < self.tiles, self.positions_per_tile)
        # Padding tiles are masked for rows that see the image; rows before it stay all zero.
        additive = np.where(allowed[:, None] & ~real[None, :], np.float32(F32_MIN), np.float32(0.0))
        return additive.astype(np.float32), allowed.astype(np.float32).reshape(-1, 1)


@dataclass
class TextGraph:
    context: Context
    graph: int
    inputs: dict[str, int]
    outputs: dict[str, int]
    n_tokens: int
    n_past: int

    def free(self) -> None:
        self.context.free()


class _Builder:
    def __init__(self, context: Context, model: TextModel) -> None:
        self.c = context
        self.m = model
        self.w = model.weights
        self.h = model.hparams

    def named(self, tensor: int, name: str) -> int:
        return self.c.name(tensor, name)

    def rms(self, x: int, weight: str) -> int:
        return self.c.mul(self.c.rms_norm(x, self.h.eps), self.w[weight])

    def rope(self, x: int, positions: int) -> int:
        h = self.h
        return self.c.rope_ext(x, positions, self.w["rope_freqs.weight"], h.head_dim, ROPE_NEOX, 0, h.rope_base,
                               1.0, 0.0, 1.0, 0.0, 0.0)

    def attention(self, q: int, k: int, v: int, mask: int) -> int:
        """softmax(q·kᵀ/√d + mask)·v with q [d, n, heads], k and v [d, keys, heads_kv]: [d, heads, n]."""
        c, h = self.c, self.h
        scores = c.mul_mat(k, q)  # [keys, n, heads]: query head j reads kv head j / (heads / heads_kv)
        probs = c.soft_max_ext(scores, mask, 1.0 / math.sqrt(h.head_dim), 0.0)
        v_t = c.cont(c.permute(v, 1, 0, 2, 3))  # [keys, d, heads_kv]
        return c.permute(c.mul_mat(v_t, probs), 0, 2, 1, 3)  # [d, n, heads] -> [d, heads, n]

    def mlp(self, x: int, prefix: str) -> int:
        c = self.c
        gate = c.mul_mat(self.w[prefix + "ffn_gate.weight"], x)
        up = c.mul_mat(self.w[prefix + "ffn_up.weight"], x)
        return c.mul_mat(self.w[prefix + "ffn_down.weight"], c.swiglu_split(gate, up))

    def self_layer(self, x: int, i: int, positions: int, mask: int, n: int, n_past: int, writes: list[int]) -> int:
        c, h = self.c, self.h
        prefix, d = f"blk.{i}.", h.head_dim
        y = self.named(self.rms(x, prefix + "attn_norm.weight"), f"attn_norm-{i}")
        q = self.named(self.rope(c.reshape_3d(c.mul_mat(self.w[prefix + "attn_q.weight"], y), d, h.heads, n),
                                 positions), f"Qcur-{i}")
        k = self.named(self.rope(c.reshape_3d(c.mul_mat(self.w[prefix + "attn_k.weight"], y), d, h.heads_kv, n),
                                 positions), f"Kcur-{i}")
        v = self.named(c.mul_mat(self.w[prefix + "attn_v.weight"], y), f"Vcur-{i}")
        width, row = d * h.heads_kv, d * h.heads_kv * 4
        k_cache, v_cache = self.m.cache[f"cache_k_l{i}"], self.m.cache[f"cache_v_l{i}"]
        writes.append(c.cpy(c.reshape_2d(k, width, n), c.view_2d(k_cache, width, n, row, n_past * row)))
        writes.append(c.cpy(v, c.view_2d(v_cache, width, n, row, n_past * row)))
        n_kv = n_past + n
        keys = c.view_3d(k_cache, d, h.heads_kv, n_kv, d * 4, row, 0)
        values = c.view_3d(v_cache, d, h.heads_kv, n_kv, d * 4, row, 0)
        attended = self.attention(c.permute(q, 0, 2, 1, 3), c.permute(keys, 0, 2, 1, 3),
                                  c.permute(values, 0, 2, 1, 3), mask)
        out = self.named(c.reshape_2d(c.cont(attended), h.hidden, n), f"kqv_out-{i}")
        x = self.named(c.add(x, c.mul_mat(self.w[prefix + "attn_output.weight"], out)), f"ffn_inp-{i}")
        y = self.named(self.rms(x, prefix + "ffn_norm.weight"), f"ffn_norm-{i}")
        return self.named(c.add(x, self.named(self.mlp(y, prefix), f"ffn_out-{i}")), f"l_out-{i}")

    def cross_layer(self, x: int, i: int, states: int | None, mask: int, rows: int, n: int, writes: list[int]
                    ) -> int:
        c, h = self.c, self.h
        prefix, d = f"blk.{i}.", h.head_dim
        y = self.named(self.rms(x, prefix + "attn_norm.weight"), f"attn_norm-{i}")
        q = c.reshape_3d(c.mul_mat(self.w[prefix + "cross_attn_q_proj.weight"], y), d, h.heads, n)
        q = self.named(c.mul(c.rms_norm(q, h.eps), self.w[prefix + "cross_attn_q_norm.weight"]), f"Qcur-{i}")
        k_cache, v_cache = self.m.cache[f"cache_xk_l{i}"], self.m.cache[f"cache_xv_l{i}"]
        if states is not None:  # this graph reads the image: K and V once, into the cache
            keys_n = self.m.image_keys
            k = c.reshape_3d(c.mul_mat(self.w[prefix + "cross_attn_k_proj.weight"], states), d, h.heads_kv, keys_n)
            k = self.named(c.mul(c.rms_norm(k, h.eps), self.w[prefix + "cross_attn_k_norm.weight"]),
                           f"cross_attn_k-{i}")
            v = self.named(c.reshape_3d(c.mul_mat(self.w[prefix + "cross_attn_v_proj.weight"], states), d,
                                        h.heads_kv, keys_n), f"cross_attn_v-{i}")
            writes.append(c.cpy(k, k_cache))
            writes.append(c.cpy(v, v_cache))
        else:
            k, v = k_cache, v_cache
        attended = self.attention(c.permute(q, 0, 2, 1, 3), c.permute(k, 0, 2, 1, 3), c.permute(v, 0, 2, 1, 3),
                                  mask)
        out = c.mul_mat(self.w[prefix + "cross_attn_o_proj.weight"],
                        self.named(c.reshape_2d(c.cont(attended), h.hidden, n), f"kqv_out-{i}"))
        out = self.named(out, f"cross_attn_out-{i}")
        x = self.named(c.add(x, c.mul(out, c.tanh(self.w[prefix + "cross_attn_attn_gate"]))), f"ffn_inp-{i}")
        y = self.named(self.rms(x, prefix + "ffn_norm.weight"), f"ffn_norm-{i}")
        m = self.named(c.mul(self.mlp(y, prefix), rows), f"ffn_out-{i}")
        return self.named(c.add(x, c.mul(m, c.tanh(self.w[prefix + "cross_attn_mlp_gate"]))), f"l_out-{i}")

    def build(self, n: int, n_past: int, image: str) -> tuple[dict[str, int], dict[str, int], list[int]]:
        """``image``: "none" (cross layers skipped, as HF skips them without an image), "cached", "read"."""
        c, h = self.c, self.h
        inputs = {
            "inp_tokens": c.tensor(np.int32, (n,), "inp_tokens"),
            "inp_pos": c.tensor(np.int32, (n,), "inp_pos"),
            "kq_mask": c.tensor(np.float32, (n_past + n, n), "kq_mask"),
        }
        if image != "none":
            inputs["cross_attn_mask"] = c.tensor(np.float32, (self.m.image_keys, n), "cross_attn_mask")
            inputs["cross_attn_rows"] = c.tensor(np.float32, (1, n), "cross_attn_rows")
        if image == "read":
            inputs["cross_attn_states"] = c.tensor(np.float32, (h.hidden, self.m.image_keys), "cross_attn_states")
        for tensor in inputs.values():
            c.lib.base.ggml_set_input(tensor)
        writes: list[int] = []
        x = self.named(c.get_rows(self.w["token_embd.weight"], inputs["inp_tokens"]), "inp_embd")
        for i in range(h.n_layers):
            if i not in h.cross_layers:
                x = self.self_layer(x, i, inputs["inp_pos"], inputs["kq_mask"], n, n_past, writes)
            elif image != "none":
                x = self.cross_layer(x, i, inputs.get("cross_attn_states"), inputs["cross_attn_mask"],
                                     inputs["cross_attn_rows"], n, writes)
        norm = self.named(self.rms(x, "output_norm.weight"), "result_norm")
        logits = self.named(c.mul_mat(self.w["output.weight"], norm), "result_output")
        return inputs, {"result_output": logits}, writes


def build_text_graph(model: TextModel, n_tokens: int, n_past: int, image: str) -> TextGraph:
    """One ubatch of ``n_tokens`` at ``n_past``; ``image`` is "none", "cached" or "read" (see _Builder.build)."""
    if n_past + n_tokens > model.n_ctx:
        raise InspectorError(f"{n_past + n_tokens} positions do not fit the context of {model.n_ctx} (-c)")
    context = Context(GRAPH_SIZE)
    inputs, outputs, writes = _Builder(context, model).build(n_tokens, n_past, image)
    lib = context.lib.base
    graph = lib.ggml_new_graph_custom(context.address, GRAPH_SIZE, False)
    # Cache writes first: the attention of every later node reads the cache they fill.
    for write in writes:
        lib.ggml_build_forward_expand(graph, write)
    lib.ggml_build_forward_expand(graph, outputs["result_output"])
    return TextGraph(context, graph, inputs, outputs, n_tokens, n_past)


def causal_mask(n_tokens: int, n_past: int) -> np.ndarray:
    """(n, n_kv) additive mask: a token sees every cached position and itself, as HF's (f32 min, not -inf)."""
    query = np.arange(n_past, n_past + n_tokens)[:, None]
    key = np.arange(n_past + n_tokens)[None, :]
    return np.where(key <= query, np.float32(0.0), np.float32(F32_MIN)).astype(np.float32)
