"""build_mllama: the Llama 3.2 Vision encoder and projector as a ggml graph.

Mirrors transformers' ``MllamaVisionModel.forward`` plus
``multi_modal_projector`` op for op (``docs/mllama.md`` lists every named
tensor).  Dimensions below are ggml ``ne`` (fastest first): ``H`` hidden
size, ``P`` patches per tile + 1 class token, ``Pp`` that padded to a
multiple of 8, ``T`` max tiles, ``N = T * Pp`` the sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.errors import InspectorError, ModelError
from inspector.ggml.buffers import BackendTensors
from inspector.ggml.graph import (
    Backend,
    Context,
)
from inspector.ggml.tensor import Tensor
from inspector.gguf import reader as gguf_info
from inspector.mllama import gguf_layout as L
from inspector.mllama.preprocess import MAX_TILE_SIZE, MAX_TILES_LIMIT, supported_aspect_ratios

GRAPH_SIZE = 16384
F32_MIN = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class VisionHParams:
    image_size: int
    patch_size: int
    max_tiles: int
    hidden: int
    ffn: int
    heads: int
    eps: float
    n_layers: int
    n_global_layers: int
    intermediate: tuple[int, ...]
    projection_dim: int

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        """Patches per tile plus the class token."""
        return self.patches + 1

    @property
    def num_padding(self) -> int:
        return (8 - self.num_positions % 8) % 8

    @property
    def padded_positions(self) -> int:
        return self.num_positions + self.num_padding

    @property
    def sequence(self) -> int:
        return self.max_tiles * self.padded_positions


def _whole(key: str, found: object) -> int:
    if isinstance(found, np.generic):
        found = found.item()
    if isinstance(found, bool) or not isinstance(found, int | float) or found != int(found):
        raise ModelError(f"the GGUF's {key} is {found!r}, not a whole number")
    return int(found)


def read_hparams(reader) -> VisionHParams:
    def value(key: str):
        found = gguf_info.field_value(reader, key)
        if found is None:
            raise ModelError(f"the GGUF has no {key}: not an mllama vision GGUF (ggml-inspector mllama convert)")
        return found

    architecture = gguf_info.field_value(reader, "general.architecture")
    if architecture not in (L.TEXT_ARCH, L.ARCH):
        raise ModelError(f"the GGUF's architecture is {architecture!r}, not {L.TEXT_ARCH!r} or {L.ARCH!r}; "
                         "convert a checkpoint with 'ggml-inspector mllama convert'")
    intermediate = reader.get_field(L.KEY_INTERMEDIATE)
    if intermediate is None:
        raise ModelError(f"the GGUF has no {L.KEY_INTERMEDIATE}: not an mllama vision GGUF")
    eps = value(L.KEY_EPS)
    if not isinstance(eps, float) or not 0 < eps < 1:
        raise ModelError(f"the GGUF's {L.KEY_EPS} is {eps!r}, not a small positive number")
    hparams = VisionHParams(
        image_size=_whole(L.KEY_IMAGE_SIZE, value(L.KEY_IMAGE_SIZE)),
        patch_size=_whole(L.KEY_PATCH_SIZE, value(L.KEY_PATCH_SIZE)),
        max_tiles=_whole(L.KEY_MAX_TILES, value(L.KEY_MAX_TILES)), hidden=_whole(L.KEY_HIDDEN, value(L.KEY_HIDDEN)),
        ffn=_whole(L.KEY_FFN, value(L.KEY_FFN)), heads=_whole(L.KEY_HEADS, value(L.KEY_HEADS)), eps=eps,
        n_layers=_whole(L.KEY_LAYERS, value(L.KEY_LAYERS)),
        n_global_layers=_whole(L.KEY_GLOBAL_LAYERS, value(L.KEY_GLOBAL_LAYERS)),
        intermediate=tuple(_whole(L.KEY_INTERMEDIATE, intermediate.parts[i][0]) for i in intermediate.data),
        projection_dim=_whole(L.KEY_PROJECTION_DIM, value(L.KEY_PROJECTION_DIM)),
    )
    check_hparams(hparams)
    return hparams


def check_hparams(h: VisionHParams) -> None:
    """Refuse hyperparameters the graph cannot be built from: ggml would assert (abort) on them.

    The tile count and size are bounded as ``preprocess`` bounds them, so a
    hostile file cannot make the graph's input or mask (``sequence``² floats) huge.
    """
    problems = []
    if not 1 <= h.patch_size <= h.image_size <= MAX_TILE_SIZE or h.image_size % h.patch_size:
        problems.append(f"image size {h.image_size} must be a multiple of the patch size {h.patch_size}, "
                        f"at most {MAX_TILE_SIZE}")
    if not 1 <= h.max_tiles <= MAX_TILES_LIMIT:
        problems.append(f"{h.max_tiles} tiles is outside 1..{MAX_TILES_LIMIT}")
    if h.hidden < 1 or h.heads < 1 or h.hidden % h.heads:
        problems.append(f"embedding length {h.hidden} is not a positive multiple of the head count {h.heads}")
    if h.ffn < 1 or h.projection_dim < 1 or h.n_layers < 1 or h.n_global_layers < 0:
        problems.append("feed-forward length, projection size and block count must be positive")
    if not h.intermediate or any(not 0 <= i < h.n_layers for i in h.intermediate):
        problems.append(f"intermediate layers {list(h.intermediate)} must be some of 0..{h.n_layers - 1}")
    if problems:
        raise ModelError(f"the GGUF's mllama_vision hyperparameters cannot make a graph: {'; '.join(problems)}")


def expected_shapes(h: VisionHParams) -> dict[str, tuple[int, ...]]:
    """Every vision and projector tensor's ggml ``ne`` (trailing 1s dropped) that ``build_mllama`` relies on."""
    d, positions, tiles = h.hidden, h.num_positions, h.max_tiles
    ids = len(supported_aspect_ratios(tiles)) + 1
    shapes: dict[str, tuple[int, ...]] = {
        "v.patch_embd.weight": (h.patch_size, h.patch_size, 3, d), "v.class_embd": (d,),
        "v.pos_embd": (d, positions), "v.pos_gate": (1,), "v.tile_pos_embd": (tiles * positions * d, ids),
        "v.pre_tile_embd": (tiles * d, ids), "v.pre_tile_gate": (1,),
        "v.post_tile_embd": (tiles * d, ids), "v.post_tile_gate": (1,),
        "mm.proj.weight": (d * (1 + len(h.intermediate)), h.projection_dim), "mm.proj.bias": (h.projection_dim,),
    }
    for norm in ("v.ln_pre.", "v.ln_post."):
        shapes[norm + "weight"] = shapes[norm + "bias"] = (d,)
    for global_layer, count in ((False, h.n_layers), (True, h.n_global_layers)):
        for index in range(count):
            p = L.layer_prefix(global_layer, index)
            for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
                shapes[f"{p}{name}.weight"] = (d, d)
            shapes[p + "ffn_up.weight"], shapes[p + "ffn_up.bias"] = (d, h.ffn), (h.ffn,)
            shapes[p + "ffn_down.weight"], shapes[p + "ffn_down.bias"] = (h.ffn, d), (d,)
            for norm in ("ln1.", "ln2."):
                shapes[p + norm + "weight"] = shapes[p + norm + "bias"] = (d,)
            if global_layer:
                shapes[p + "gate_attn"] = shapes[p + "gate_ffn"] = (1,)
    return shapes


def check_vision_tensors(reader, h: VisionHParams) -> None:
    """Every tensor the graph uses is present with the shape the hyperparameters give, or ModelError naming it."""
    found = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors if not L.is_text_tensor(t.name)}
    for name, shape in expected_shapes(h).items():
        if name not in found:
            raise ModelError(f"the GGUF lacks tensor {name!r}")
        actual = found[name]
        while len(actual) > 1 and actual[-1] == 1:
            actual = actual[:-1]
        if actual != shape:
            raise ModelError(f"tensor {name!r} has ne {list(actual)}; the hyperparameters need {list(shape)}")


@dataclass(kw_only=True)
class VisionWeights(BackendTensors):
    """The vision tower's and projector's tensors; layers below ``offload_layers`` on the offload backend."""

    hparams: VisionHParams


def _on_offload(name: str, offload_layers: int) -> bool:
    """Local vision layers ``v.blk.0..n-1`` go to the offload backend, like llama.cpp's n_gpu_layers."""
    parts = name.split(".")
    return (len(parts) > 2 and parts[0] == "v" and parts[1] == "blk" and parts[2].isdecimal()
            and int(parts[2]) < offload_layers)


def load_weights(path: str | Path, cpu: Backend, offload: Backend | None = None,
                 offload_layers: int = 0) -> VisionWeights:
    """Read the GGUF (validated) and upload its tensors to the CPU and, optionally, an offload backend."""
    reader = gguf_info.open_gguf(path)
    hparams = read_hparams(reader)
    check_vision_tensors(reader, hparams)
    weights = VisionWeights(hparams=hparams)
    # A whole-model GGUF also holds the language model: that is load_text_model's to place.
    weights.upload([t for t in reader.tensors if not L.is_text_tensor(t.name)],
                   lambda name: offload if offload is not None and _on_offload(name, offload_layers) else cpu,
                   L.takes_any_weight_type)
    return weights


def attention_mask(hparams: VisionHParams, aspect_ratio_mask: np.ndarray) -> np.ndarray:
    """HF's ``_prepare_aspect_ratio_attention_mask``: (N, N) additive mask, numpy (query, key).

    A pair is masked (float32 min) when *both* positions are padding patches or
    lie in masked tiles; so real positions attend to everything, as in HF.
    HF slices ``[-pad:]``, which with no padding selects every position: kept.
    """
    tiles = hparams.max_tiles
    keep = np.repeat(aspect_ratio_mask.reshape(tiles, 1).astype(np.float32), hparams.padded_positions, axis=1)
    if hparams.num_padding:
        keep[:, -hparams.num_padding:] = 0
    else:
        keep[:] = 0  # HF's attention_mask[..., -0:] selects every position
    inverted = (1 - keep).reshape(-1, 1)
    return (inverted @ inverted.T * np.float32(F32_MIN)).astype(np.float32)


@dataclass
class MllamaGraph:
    """A built graph: its context, cgraph, named input tensors and selected outputs."""

    context: Context
    graph: int
    inputs: dict[str, int]
    outputs: dict[str, int]

    def free(self) -> None:
        self.context.free()


class _Builder:
    def __init__(self, context: Context, weights: VisionWeights) -> None:
        self.c = context
        self.w = weights
        self.h = weights.hparams

    def named(self, tensor: int, name: str) -> int:
        return self.c.name(tensor, name)

    def layer_norm(self, x: int, prefix: str, eps: float) -> int:
        c = self.c
        return c.add(c.mul(c.norm(x, eps), self.w[prefix + "weight"]), self.w[prefix + "bias"])

    def linear(self, x: int, prefix: str, bias: bool) -> int:
        y = self.c.mul_mat(self.w[prefix + "weight"], x)
        return self.c.add(y, self.w[prefix + "bias"]) if bias else y

    def layer(self, x: int, mask: int, prefix: str, gated: bool, suffix: str) -> int:
        c, h = self.c, self.h
        head_dim = h.hidden // h.heads
        n = h.sequence
        y = self.named(self.layer_norm(x, prefix + "ln1.", h.eps), f"attn_norm{suffix}")
        q = c.permute(c.reshape_3d(self.linear(y, prefix + "attn_q.", False), head_dim, h.heads, n), 0, 2, 1, 3)
        k = c.permute(c.reshape_3d(self.linear(y, prefix + "attn_k.", False), head_dim, h.heads, n), 0, 2, 1, 3)
        v = c.cont(c.permute(c.reshape_3d(self.linear(y, prefix + "attn_v.", False), head_dim, h.heads, n),
                             1, 2, 0, 3))
        scores = self.named(c.mul_mat(k, q), f"kq{suffix}")
        probs = self.named(c.soft_max_ext(scores, mask, 1.0 / math.sqrt(head_dim), 0.0), f"kq_soft_max{suffix}")
        attended = c.cont(c.permute(c.mul_mat(v, probs), 0, 2, 1, 3))
        out = self.named(self.linear(c.reshape_2d(attended, h.hidden, n), prefix + "attn_out.", False),
                         f"attn_out{suffix}")
        if gated:
            out = c.mul(out, c.tanh(self.w[prefix + "gate_attn"]))
        x = self.named(c.add(x, out), f"ffn_inp{suffix}")
        y = self.layer_norm(x, prefix + "ln2.", h.eps)
        y = self.named(c.gelu_erf(self.linear(y, prefix + "ffn_up.", True)), f"ffn_act{suffix}")
        y = self.named(self.linear(y, prefix + "ffn_down.", True), f"ffn_out{suffix}")
        if gated:
            y = c.mul(y, c.tanh(self.w[prefix + "gate_ffn"]))
        return c.add(x, y)

    def patch_embedding(self, inp_raw: int, grid: int) -> int:
        """The stride-14 convolution as im2col + mul_mat, like ``ggml_conv_2d`` but in f32.

        ``ggml_conv_2d`` always builds its im2col in f16, rounding every pixel
        of the image to f16 before the matmul: NMSE ~7e-8 against HF at the
        first tensor.  An f32 im2col (f16 only for an f16 kernel) keeps parity.
        """
        c, h = self.c, self.h
        kernel = self.w["v.patch_embd.weight"]
        im2col_type = 1 if Tensor(c.lib, kernel).ggml_type == 1 else 0
        columns = c.im2col(kernel, inp_raw, h.patch_size, h.patch_size, 0, 0, 1, 1, True, im2col_type)
        k = h.patch_size * h.patch_size * 3
        patches = c.mul_mat(c.reshape_2d(columns, k, grid * grid * h.max_tiles), c.reshape_2d(kernel, k, h.hidden))
        # [patches * T, H] -> [H, patches, T]
        return c.cont(c.permute(c.reshape_3d(patches, grid * grid, h.max_tiles, h.hidden), 1, 2, 0, 3))

    def tile_embedding(self, x: int, table: str, gate: str, positions: int) -> int:
        """Gated per-aspect-ratio embedding (one row per id) broadcast over positions."""
        c, h = self.c, self.h
        rows = c.get_rows(self.w[table], self.ids)
        rows = c.reshape_3d(rows, h.hidden, positions, h.max_tiles)
        return c.add(x, c.mul(rows, c.tanh(self.w[gate])))

    def remove_padding(self, x: int, width: int) -> int:
        """[width, Pp, T] -> [width, P, T]."""
        c, h = self.c, self.h
        padded = c.reshape_3d(x, width, h.padded_positions, h.max_tiles)
        element = 4
        view = c.view_3d(padded, width, h.num_positions, h.max_tiles, width * element,
                         width * element * h.padded_positions, 0)
        return c.cont(view)

    def build(self, probes: tuple[str, ...]) -> tuple[dict[str, int], dict[str, int], list[int]]:
        c, h, w = self.c, self.h, self.w
        s, t = h.image_size, h.max_tiles
        inp_raw = c.tensor(np.float32, (s, s, 3, t), "inp_raw")
        self.ids = c.tensor(np.int32, (1,), "aspect_ratio_ids")
        mask = c.tensor(np.float32, (h.sequence, h.sequence), "attn_mask")
        for tensor in (inp_raw, self.ids, mask):
            c.lib.base.ggml_set_input(tensor)
        named: dict[str, int] = {"inp_raw": inp_raw, "aspect_ratio_ids": self.ids}

        def keep(tensor: int, name: str) -> int:
            named[name] = self.named(tensor, name)
            return tensor

        grid = s // h.patch_size
        x = keep(self.patch_embedding(inp_raw, grid), "patch_embd")  # [H, patches, T]
        x = keep(self.tile_embedding(x, "v.pre_tile_embd", "v.pre_tile_gate", 1), "pre_tile_pos_embd")
        row_bytes = h.hidden * 4
        template = c.view_3d(x, h.hidden, 1, t, row_bytes, row_bytes * h.patches, 0)  # shape [H, 1, T]
        cls = c.repeat(c.reshape_3d(w["v.class_embd"], h.hidden, 1, 1), template)
        x = keep(c.concat(cls, x, 1), "cls_embd")  # [H, P, T]
        gate = c.tanh(w["v.pos_gate"])
        x = c.add(x, c.mul(w["v.pos_embd"], c.scale_bias(gate, -1.0, 1.0)))
        x = keep(self.tile_embedding(x, "v.tile_pos_embd", "v.pos_gate", h.num_positions), "pos_embd")
        x = keep(self.layer_norm(x, "v.ln_pre.", 1e-5), "ln_pre")
        x = c.reshape_2d(c.pad(x, 0, h.num_padding, 0, 0), h.hidden, h.sequence)
        intermediates = {}
        for index in range(h.n_layers):
            x = keep(self.layer(x, mask, L.layer_prefix(False, index), False, f"-{index}"), f"layer_out-{index}")
            if index in h.intermediate:
                intermediates[index] = x
        x = keep(self.layer_norm(x, "v.ln_post.", 1e-5), "ln_post")
        x = c.reshape_3d(x, h.hidden, h.padded_positions, t)
        x = keep(self.tile_embedding(x, "v.post_tile_embd", "v.post_tile_gate", 1), "post_tile_pos_embd")
        x = c.reshape_2d(x, h.hidden, h.sequence)
        for index in range(h.n_global_layers):
            x = keep(self.layer(x, mask, L.layer_prefix(True, index), True, f"-g{index}"),
                     f"global_layer_out-{index}")
        final = self.remove_padding(x, h.hidden)
        stacked = None
        for index in h.intermediate:
            column = c.reshape_3d(intermediates[index], 1, h.hidden, h.sequence)
            stacked = column if stacked is None else c.concat(stacked, column, 0)
        stacked = keep(self.remove_padding(stacked, h.hidden * len(h.intermediate)), "intermediate_out")
        vision = keep(c.concat(final, stacked, 0), "vision_out")
        keep(self.linear(vision, "mm.proj.", True), "ca_patch_embd")
        extra = []
        for probe in probes:
            if probe not in named:
                raise InspectorError(f"--probe {probe!r}: no such tensor; choose from {', '.join(named)}")
            extra.append(self.named(c.dup(named[probe]), f"{probe}_copy"))
        inputs = {"inp_raw": inp_raw, "aspect_ratio_ids": self.ids, "attn_mask": mask}
        return inputs, named, extra


def build_mllama(weights: VisionWeights, probes: tuple[str, ...] = ()) -> MllamaGraph:
    """Build the vision encoder + projector graph on ``weights`` (inputs unallocated)."""
    context = Context(GRAPH_SIZE, weights.contexts[0].lib)
    inputs, outputs, extra = _Builder(context, weights).build(probes)
    lib = context.lib.base
    graph = lib.ggml_new_graph_custom(context.address, GRAPH_SIZE, False)
    lib.ggml_build_forward_expand(graph, outputs["ca_patch_embd"])
    for probe in extra:
        lib.ggml_build_forward_expand(graph, probe)
    return MllamaGraph(context, graph, inputs, outputs)
