"""Convert a Hugging Face MllamaForConditionalGeneration checkpoint to one GGUF, without torch.

The GGUF holds the vision tower, the projector and the text model (layout in
``docs/mllama.md`` and ``gguf_layout``), plus the checkpoint's tokenizer.json
when it has one.  safetensors is read with a small bounded parser (the format
is an 8-byte header length, a JSON header, then raw little-endian data), so
conversion needs neither torch nor the safetensors package, and an untrusted
file cannot make it read outside the file.  Tensors are read a chunk of
rows at a time while the GGUF is written, converted to the type ``--outtype``
gives each (``outtypes``; the quantized types by ggml's own quantizer), so
conversion needs memory for a few chunks, not for the checkpoint nor for its
largest tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from inspector.errors import InspectorError
from inspector.mllama import gguf_layout as L
from inspector.mllama.outtypes import TypeMix, check_outtype
from inspector.mllama.preprocess import CLIP_MEAN, CLIP_STD

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}
ROPE_TYPES = ("default", "llama3")
# MllamaTextConfig's defaults (transformers), used where config.json leaves a setting out, as transformers does.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
}
DEFAULT_ROPE_THETA = 500000.0
# Float32 bytes of rows converted at once, and the most chunks converted in parallel: a conversion's memory.
CHUNK_BYTES = 4 << 20
MAX_WORKERS = 8


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, read (and widened to float32) only when ``load`` is called."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def load(self) -> np.ndarray:
        return self.load_rows(0, self.rows).reshape(self.shape)

    @property
    def rows(self) -> int:
        """Rows of the last axis (1 for a 1-D tensor): the unit the converter reads and quantizes in."""
        return math.prod(self.shape[:-1])

    def load_rows(self, first: int, count: int) -> np.ndarray:
        """Rows ``first .. first + count`` of the tensor seen as (rows, last axis), widened to float32."""
        element = np.dtype(SAFETENSORS_DTYPES[self.dtype])
        width = self.shape[-1] if self.shape else 1
        raw = np.fromfile(self.path, dtype=element, count=count * width,
                          offset=self.offset + first * width * element.itemsize)
        if raw.size != count * width:
            raise InspectorError(f"{self.path}: tensor {self.name} is truncated")
        raw = raw.reshape(count, width)
        if self.dtype == "BF16":
            # One uint32 array, shifted in place: bf16 widened without further temporaries.
            widened = raw.astype(np.uint32)
            widened <<= 16
            return widened.view(np.float32)
        return raw.astype(np.float32, copy=False)


def open_safetensors(path: Path, wanted: set[str] | None = None) -> dict[str, StoredTensor]:
    """The tensors of one .safetensors file (validated against the file's size), not yet read."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise InspectorError(f"{path} is not a safetensors file (too short)")
        header_size = struct.unpack("<Q", prefix)[0]
        if header_size > min(MAX_HEADER_BYTES, size - 8):
            raise InspectorError(f"{path} is not a safetensors file (header of {header_size} bytes)")
        try:
            header = json.loads(handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise InspectorError(f"{path} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise InspectorError(f"{path} is not a safetensors file (bad header)")
    data_start = 8 + header_size
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or (wanted is not None and name not in wanted):
            continue
        try:
            kind = info["dtype"]
            begin, end = (int(v) for v in info["data_offsets"])
            shape = tuple(int(v) for v in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise InspectorError(f"{path}: tensor {name} has a malformed header entry") from None
        dtype = SAFETENSORS_DTYPES.get(kind)
        if dtype is None:
            raise InspectorError(f"{path}: tensor {name} has unsupported dtype {kind}")
        if (any(n < 0 for n in shape) or not 0 <= begin <= end <= size - data_start
                or end - begin != math.prod(shape) * np.dtype(dtype).itemsize):
            raise InspectorError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
        tensors[name] = StoredTensor(path, name, kind, shape, data_start + begin)
    return tensors


def read_safetensors(path: Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one .safetensors file as float32 numpy arrays (bf16 widened exactly)."""
    return {name: tensor.load() for name, tensor in open_safetensors(path, wanted).items()}


def read_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, StoredTensor]]:
    """config.json and the model's tensors (unread) of an HF Mllama folder (single or sharded)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InspectorError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise InspectorError(f"{config_path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("model_type") != "mllama":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise InspectorError(f"{folder} holds a {found!r} model, not mllama")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InspectorError(f"{folder} has no .safetensors files")
    tensors: dict[str, StoredTensor] = {}
    for file in files:
        for name, tensor in open_safetensors(file).items():
            if L.gguf_name(name) is not None:
                tensors[name] = tensor
    return config, tensors


def read_tokenizer_json(folder: str | os.PathLike[str]) -> str | None:
    """The text of the folder's tokenizer.json (a JSON object, at most 64 MiB), or None when there is none."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    with open(path, "rb") as handle:
        data = handle.read(MAX_TOKENIZER_BYTES + 1)
    if len(data) > MAX_TOKENIZER_BYTES:
        raise InspectorError(f"{path} is larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
    try:
        text = data.decode("utf-8")
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InspectorError(f"{path} is not valid UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise InspectorError(f"{path} is not a JSON object")
    return text


# --- text model settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RopeSettings:
    kind: str  # "default" or "llama3"
    theta: float
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 1.0
    original_context: int = 0


def rope_settings(text: dict[str, Any]) -> RopeSettings:
    """RoPE settings from ``rope_parameters`` (transformers 5.x) or ``rope_scaling`` + ``rope_theta`` (older)."""
    params = text.get("rope_parameters")
    if params is None:
        params = text.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise InspectorError("text_config's rope settings are not a JSON object")
    kind = params.get("rope_type", params.get("type", "default"))
    theta = params.get("rope_theta", text.get("rope_theta", DEFAULT_ROPE_THETA))
    if kind not in ROPE_TYPES:
        raise InspectorError(f"text_config has rope_type {kind!r}; only {' and '.join(ROPE_TYPES)} are supported")
    try:
        theta = float(theta)
        if kind == "default":
            settings = RopeSettings("default", theta)
        else:
            settings = RopeSettings("llama3", theta, float(params["factor"]), float(params["low_freq_factor"]),
                                    float(params["high_freq_factor"]),
                                    int(params["original_max_position_embeddings"]))
    except KeyError as error:
        raise InspectorError(f"text_config's llama3 rope settings lack {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise InspectorError(f"text_config's rope settings are not numbers: {error}") from None
    usable = math.isfinite(settings.theta) and settings.theta > 0
    if kind == "llama3":
        usable = usable and (0 < settings.factor < math.inf and 0 < settings.low_freq_factor
                             < settings.high_freq_factor < math.inf and settings.original_context > 0)
    if not usable:
        raise InspectorError(f"text_config has unusable {kind} rope settings: theta {settings.theta}, factor "
                             f"{settings.factor}, low/high_freq_factor {settings.low_freq_factor}/"
                             f"{settings.high_freq_factor}, original_max_position_embeddings "
                             f"{settings.original_context}")
    return settings


def rope_freq_factors(head_dim: int, rope: RopeSettings) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` (head_dim/2 values): ggml divides each pair's angle by its factor.

    Llama 3 scaling (transformers' ``_compute_llama3_parameters``): 1 for wavelengths below
    ``old_ctx / high_freq_factor``, ``factor`` above ``old_ctx / low_freq_factor``, and
    ``1 / ((1 - smooth) / factor + smooth)`` between.  Default RoPE: all 1.
    """
    half = head_dim // 2
    if rope.kind == "default":
        return np.ones(half, dtype=np.float32)
    inv = 1.0 / rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv
    low_wavelen = rope.original_context / rope.low_freq_factor
    high_wavelen = rope.original_context / rope.high_freq_factor
    smooth = (rope.original_context / wavelen - rope.low_freq_factor) / (rope.high_freq_factor
                                                                        - rope.low_freq_factor)
    between = 1.0 / ((1 - smooth) / rope.factor + smooth)
    factors = np.where(wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, rope.factor, between))
    return factors.astype(np.float32)


@dataclass(frozen=True)
class TextLayout:
    vocab: int
    context: int
    hidden: int
    layers: int
    ffn: int
    heads: int
    heads_kv: int
    eps: float
    cross_layers: tuple[int, ...]
    image_token: int
    bos: int | None
    eos: int | None
    rope: RopeSettings

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def shape(self, part: str) -> tuple[int, ...]:
        """The HF (numpy) shape of a text part (see gguf_layout.text_part)."""
        h, d = self.hidden, self.head_dim
        fixed = {"embed_tokens.weight": (self.vocab + L.EXTRA_EMBEDDING_ROWS, h), "norm.weight": (h,),
                 "lm_head.weight": (self.vocab, h)}
        if part in fixed:
            return fixed[part]
        leaf = part.split(".", 2)[2]
        if leaf.endswith("_gate"):
            return (1,)
        if leaf.endswith(("layernorm.weight",)):
            return (h,)
        if leaf.endswith(("q_norm.weight", "k_norm.weight")):
            return (d,)
        if leaf.endswith(("gate_proj.weight", "up_proj.weight")):
            return (self.ffn, h)
        if leaf.endswith("down_proj.weight"):
            return (h, self.ffn)
        if leaf.endswith(("k_proj.weight", "v_proj.weight")):
            return (self.heads_kv * d, h)
        return (self.heads * d, h) if leaf.endswith("q_proj.weight") else (h, self.heads * d)


def _token_id(value: Any, what: str) -> int | None:
    if isinstance(value, list):  # eos_token_id may list several ids: the GGUF key holds the first
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** 32:
        raise InspectorError(f"text_config has an unusable {what} {value!r}")
    return value


def text_layout(config: dict[str, Any]) -> TextLayout:
    """The text model's settings from config.json (transformers' defaults where it leaves one out), checked."""
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise InspectorError("config.json has no text_config")
    settings = {**TEXT_DEFAULTS, **{k: v for k, v in text.items() if k in TEXT_DEFAULTS and v is not None}}
    try:
        ints = {key: int(settings[key]) for key in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                    "num_attention_heads", "num_key_value_heads",
                                                    "intermediate_size", "max_position_embeddings")}
        eps = float(settings["rms_norm_eps"])
        cross = tuple(int(i) for i in settings["cross_attention_layers"])
    except (TypeError, ValueError) as error:
        raise InspectorError(f"text_config has a setting that is not a number: {error}") from None
    if any(value <= 0 for value in ints.values()):
        raise InspectorError(f"text_config has a size that is not positive: {ints}")
    hidden, heads, heads_kv = ints["hidden_size"], ints["num_attention_heads"], ints["num_key_value_heads"]
    if hidden % heads or heads % heads_kv or (hidden // heads) % 2:
        raise InspectorError(f"text_config: hidden_size {hidden}, {heads} heads and {heads_kv} kv heads do not "
                             "give an even head size shared by whole groups")
    layers = ints["num_hidden_layers"]
    if len(set(cross)) != len(cross) or any(not 0 <= i < layers for i in cross):
        raise InspectorError(f"text_config.cross_attention_layers {list(cross)} are not distinct layers of "
                             f"0..{layers - 1}")
    vocab = ints["vocab_size"]
    rows = vocab + L.EXTRA_EMBEDDING_ROWS
    image_token = config.get("image_token_index", config.get("image_token_id", vocab))
    if isinstance(image_token, bool) or not isinstance(image_token, int) or not 0 <= image_token < rows:
        raise InspectorError(f"image_token_index {image_token!r} is outside the text model's {rows}-row "
                             f"embedding table (vocab_size {vocab} + {L.EXTRA_EMBEDDING_ROWS})")
    return TextLayout(vocab=vocab, context=ints["max_position_embeddings"], hidden=hidden, layers=layers,
                      ffn=ints["intermediate_size"], heads=heads, heads_kv=heads_kv, eps=eps,
                      cross_layers=tuple(sorted(cross)), image_token=image_token,
                      bos=_token_id(text.get("bos_token_id"), "bos_token_id"),
                      eos=_token_id(text.get("eos_token_id"), "eos_token_id"), rope=rope_settings(text))


def _text_tensors(layout: TextLayout, found: dict[str, tuple[str, Any]]) -> list[tuple[str, Any]]:
    """(GGUF name, tensor) of the whole text model in file order, every name and shape checked."""
    on_disk = any(hf.startswith("language_model.") for hf, _ in found.values())
    expected = L.text_parts(layout.layers, frozenset(layout.cross_layers))
    ordered = []
    for part in expected:
        name = L.text_gguf_name(part)
        if name not in found:
            hf = (L.TEXT_HEAD_ON_DISK if on_disk else L.TEXT_HEAD_IN_MEMORY) if part == "lm_head.weight" else \
                (L.TEXT_PREFIX_ON_DISK if on_disk else L.TEXT_PREFIX_IN_MEMORY) + part
            raise InspectorError(f"the checkpoint lacks text tensor {hf} (text_config: {layout.layers} layers, "
                                 f"cross-attention layers {list(layout.cross_layers)})")
        hf, tensor = found[name]
        if tuple(tensor.shape) != layout.shape(part):
            raise InspectorError(f"text tensor {hf} has shape {tuple(tensor.shape)}, text_config says "
                                 f"{layout.shape(part)}")
        ordered.append((name, tensor))
        if name == L.TOKEN_EMBD:
            ordered.append((L.ROPE_FREQS, rope_freq_factors(layout.head_dim, layout.rope)))
    wanted = {name for name, _ in ordered}
    for name, (hf, _) in found.items():
        if L.is_text_tensor(name) and name not in wanted:
            raise InspectorError(f"text tensor {hf} does not fit text_config ({layout.layers} layers, "
                                 f"cross-attention layers {list(layout.cross_layers)})")
    return ordered


# --- writing -------------------------------------------------------------------------------------------


def stored_bytes(rows: np.ndarray, kind: GGMLQuantizationType) -> np.ndarray:
    """Float32 rows as ``kind`` stores them: numpy for f32/f16, ggml's own quantizer for bf16 and the quants."""
    if kind == GGMLQuantizationType.F32:
        return rows
    if kind == GGMLQuantizationType.F16:
        return rows.astype(np.float16)
    from inspector.ggml.quantize import quantize_rows

    return quantize_rows(rows, kind)


class _Streamed:
    """One tensor's stored bytes, made chunk by chunk while GGUFWriter writes them.

    ``GGUFWriter.write_tensor_data`` uses only ``nbytes`` and ``tofile`` of what
    it is given (on a little-endian host), so this stands in for the array:
    the tensor is read, widened and converted ``CHUNK_BYTES`` of float32 rows at
    a time, a few chunks at once on the pool (ggml's quantizer and numpy's
    conversions release the GIL), and written in order.  A conversion's peak
    memory is then a few chunks, whatever the largest tensor.
    """

    def __init__(self, source: Any, shape: tuple[int, ...], kind: GGMLQuantizationType,
                 pool: ThreadPoolExecutor, workers: int) -> None:
        self.source = source if isinstance(source, StoredTensor) else np.asarray(source, dtype=np.float32)
        width = shape[-1] if shape else 1
        self.rows = math.prod(shape[:-1])
        self.kind = kind
        block, size = GGML_QUANT_SIZES[kind]
        self.nbytes = self.rows * (width // block) * size
        self.step = max(1, CHUNK_BYTES // (4 * max(width, 1)))
        self.pool = pool
        self.workers = workers

    def _chunk(self, first: int) -> np.ndarray:
        count = min(self.step, self.rows - first)
        if isinstance(self.source, StoredTensor):
            rows = self.source.load_rows(first, count)
        else:
            rows = self.source.reshape(self.rows, -1)[first:first + count]
        return stored_bytes(rows, self.kind)

    def tofile(self, handle: Any) -> None:
        if self.nbytes == 0:
            return
        starts = range(0, self.rows, self.step)
        for window in range(0, len(starts), self.workers):
            for chunk in self.pool.map(self._chunk, starts[window:window + self.workers]):
                chunk.tofile(handle)


def _add_vision_keys(writer: GGUFWriter, config: dict[str, Any]) -> None:
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    try:
        writer.add_uint32(L.KEY_IMAGE_SIZE, int(vision["image_size"]))
        writer.add_uint32(L.KEY_PATCH_SIZE, int(vision["patch_size"]))
        writer.add_uint32(L.KEY_MAX_TILES, int(vision["max_num_tiles"]))
        writer.add_uint32(L.KEY_CHANNELS, int(vision.get("num_channels", 3)))
        writer.add_uint32(L.KEY_HIDDEN, int(vision["hidden_size"]))
        writer.add_uint32(L.KEY_FFN, int(vision["intermediate_size"]))
        writer.add_uint32(L.KEY_HEADS, int(vision["attention_heads"]))
        writer.add_float32(L.KEY_EPS, float(vision.get("norm_eps", 1e-5)))
        writer.add_uint32(L.KEY_LAYERS, int(vision["num_hidden_layers"]))
        writer.add_uint32(L.KEY_GLOBAL_LAYERS, int(vision["num_global_layers"]))
        writer.add_array(L.KEY_INTERMEDIATE, [int(i) for i in vision["intermediate_layers_indices"]])
        writer.add_array(L.KEY_ASPECT_RATIOS, [int(v) for pair in vision["supported_aspect_ratios"] for v in pair])
        writer.add_uint32(L.KEY_PROJECTION_DIM, int(text["hidden_size"]))
        writer.add_array(L.KEY_IMAGE_MEAN, list(CLIP_MEAN))
        writer.add_array(L.KEY_IMAGE_STD, list(CLIP_STD))
    except (KeyError, TypeError, ValueError) as error:
        raise InspectorError(f"config.json lacks a vision/text setting the converter needs: {error}") from None


def _add_text_keys(writer: GGUFWriter, layout: TextLayout, tokenizer_json: str | None) -> None:
    writer.add_uint32(L.KEY_TEXT_VOCAB, layout.vocab)
    writer.add_uint32(L.KEY_TEXT_CONTEXT, layout.context)
    writer.add_uint32(L.KEY_TEXT_HIDDEN, layout.hidden)
    writer.add_uint32(L.KEY_TEXT_LAYERS, layout.layers)
    writer.add_uint32(L.KEY_TEXT_FFN, layout.ffn)
    writer.add_uint32(L.KEY_TEXT_HEADS, layout.heads)
    writer.add_uint32(L.KEY_TEXT_HEADS_KV, layout.heads_kv)
    writer.add_float32(L.KEY_TEXT_EPS, layout.eps)
    writer.add_float32(L.KEY_TEXT_ROPE_BASE, layout.rope.theta)
    writer.add_uint32(L.KEY_TEXT_ROPE_DIMS, layout.head_dim)
    writer.add_string(L.KEY_TEXT_ROPE_SCALING, layout.rope.kind)
    writer.add_array(L.KEY_CROSS_LAYERS, list(layout.cross_layers))
    writer.add_uint32(L.KEY_IMAGE_TOKEN, layout.image_token)
    if layout.bos is not None:
        writer.add_bos_token_id(layout.bos)
    if layout.eos is not None:
        writer.add_eos_token_id(layout.eos)
    if tokenizer_json is not None:
        writer.add_string(L.KEY_TOKENIZER_JSON, tokenizer_json)


def write_gguf(config: dict[str, Any], tensors: Mapping[str, Any], output: str | os.PathLike[str],
               outtype: str = "f32", tokenizer_json: str | None = None) -> Path:
    """Write the GGUF (layout in docs/mllama.md) from HF-named tensors (numpy arrays or StoredTensor).

    ``outtype`` picks each tensor's stored type (``outtypes.TypeMix``: float types, or llama.cpp's
    quantization rules); tensors are streamed in chunks (``_Streamed``).

    With text-model tensors among them the file is a whole model (architecture ``mllama``: vision,
    projector, text model and rope_freqs, all checked against config.json); without, a vision tower +
    projector file (``mllama_vision``), as the tiny demo model writes.
    """
    check_outtype(outtype)
    found: dict[str, tuple[str, Any]] = {}
    for hf_name in sorted(tensors):
        name = L.gguf_name(hf_name)
        if name is None:
            continue
        if name in found:
            raise InspectorError(f"the checkpoint holds both {found[name][0]} and {hf_name}")
        found[name] = (hf_name, tensors[hf_name])
    vision = [(name, tensor) for name, (_, tensor) in found.items() if not L.is_text_tensor(name)]
    if not any(name.startswith("v.") for name, _ in vision):
        raise InspectorError("the checkpoint has no vision model: no vision_model.* tensors found")
    whole = any(L.is_text_tensor(name) for name in found)
    layout = text_layout(config) if whole else None
    ordered = (_text_tensors(layout, found) if layout else []) + vision

    writer = GGUFWriter(str(output), L.TEXT_ARCH if whole else L.ARCH)
    writer.add_name(config.get("_name_or_path") or ("mllama" if whole else "mllama-vision"))
    _add_vision_keys(writer, config)
    if layout is not None:
        _add_text_keys(writer, layout, tokenizer_json)
    mix = TypeMix(outtype, layout.layers, layout.cross_layers) if layout else TypeMix(outtype)
    workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    with ThreadPoolExecutor(workers) as pool:
        plan = []
        for name, tensor in ordered:
            shape = tuple(int(n) for n in tensor.shape)
            stream = _Streamed(tensor, shape, mix.stored_type(name, shape), pool, workers)
            # Any dtype but uint8 makes gguf-py take the shape as elements, not bytes.
            writer.add_tensor_info(name, shape, np.dtype(np.float32), stream.nbytes, raw_dtype=stream.kind)
            plan.append(stream)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for stream in plan:
                writer.write_tensor_data(stream)
            writer.close()
        except BaseException:
            try:
                writer.close()
            finally:
                Path(output).unlink(missing_ok=True)  # no half-written GGUF
            raise
    return Path(output)


def convert(folder: str | os.PathLike[str], output: str | os.PathLike[str], outtype: str = "f32") -> Path:
    """The whole checkpoint (vision, projector, text model, tokenizer.json if present) as one GGUF."""
    check_outtype(outtype)
    config, tensors = read_checkpoint(folder)
    if not any(L.is_text_tensor(L.gguf_name(name)) for name in tensors):
        raise InspectorError(f"{folder} has no text model: its safetensors hold no language_model.* tensors "
                             "(mllama convert needs the whole MllamaForConditionalGeneration checkpoint)")
    if not isinstance(config.get("text_config"), dict):
        raise InspectorError(f"{folder}/config.json has no text_config")
    return write_gguf(config, tensors, output, outtype, read_tokenizer_json(folder))
