"""Convert a Hugging Face Mllama checkpoint's vision tower and projector to GGUF, without torch.

safetensors is read with a small bounded parser (the format is an 8-byte
header length, a JSON header, then raw little-endian data), so conversion
needs neither torch nor the safetensors package, and an untrusted file
cannot make it allocate more than the file holds.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFWriter

from inspector.errors import InspectorError
from inspector.mllama import gguf_layout as L
from inspector.mllama.preprocess import CLIP_MEAN, CLIP_STD

MAX_HEADER_BYTES = 100 * 1024 * 1024
SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def read_safetensors(path: Path, wanted: set[str] | None = None) -> dict[str, np.ndarray]:
    """Tensors of one .safetensors file as float32 numpy arrays (bf16 widened exactly)."""
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
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InspectorError(f"{path} is not a safetensors file (bad header)") from None
    data_start = 8 + header_size
    mapped = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or (wanted is not None and name not in wanted):
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise InspectorError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        begin, end = (int(v) for v in info["data_offsets"])
        shape = tuple(int(v) for v in info["shape"])
        element = np.dtype(dtype)
        if not 0 <= begin <= end <= size - data_start or end - begin != int(np.prod(shape)) * element.itemsize:
            raise InspectorError(f"{path}: tensor {name} has inconsistent offsets (truncated file?)")
        raw = mapped[data_start + begin:data_start + end].view(element).reshape(shape)
        if info["dtype"] == "BF16":
            tensors[name] = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            tensors[name] = raw.astype(np.float32)
    return tensors


def read_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """config.json and the vision/projector tensors of an HF Mllama folder (single or sharded)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InspectorError(f"{folder} has no config.json: not a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise InspectorError(f"{config_path} is not valid JSON: {error}") from None
    if config.get("model_type") != "mllama":
        raise InspectorError(f"{folder} holds a {config.get('model_type')!r} model, not mllama")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise InspectorError(f"{folder} has no .safetensors files")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        header_names = _names(file)
        wanted = {name for name in header_names if L.gguf_name(name) is not None}
        tensors.update(read_safetensors(file, wanted))
    return config, tensors


def _names(path: Path) -> list[str]:
    with open(path, "rb") as handle:
        header_size = struct.unpack("<Q", handle.read(8))[0]
        if header_size > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise InspectorError(f"{path} is not a safetensors file")
        return [n for n in json.loads(handle.read(header_size)) if n != "__metadata__"]


def write_gguf(config: dict[str, Any], tensors: dict[str, np.ndarray], output: str | os.PathLike[str],
               dtype: str = "f32") -> Path:
    """Write the vision tower + projector GGUF (layout in docs/mllama.md)."""
    if dtype not in ("f32", "f16"):
        raise InspectorError("--dtype must be f32 or f16")
    vision = config.get("vision_config", {})
    text = config.get("text_config", {})
    try:
        hidden = int(vision["hidden_size"])
        writer = GGUFWriter(str(output), L.ARCH)
        writer.add_name(config.get("_name_or_path") or "mllama-vision")
        writer.add_uint32(L.KEY_IMAGE_SIZE, int(vision["image_size"]))
        writer.add_uint32(L.KEY_PATCH_SIZE, int(vision["patch_size"]))
        writer.add_uint32(L.KEY_MAX_TILES, int(vision["max_num_tiles"]))
        writer.add_uint32(L.KEY_CHANNELS, int(vision.get("num_channels", 3)))
        writer.add_uint32(L.KEY_HIDDEN, hidden)
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
    written = 0
    for hf_name, array in sorted(tensors.items()):
        name = L.gguf_name(hf_name)
        if name is None:
            continue
        matrix = array.ndim >= 2 and not name.endswith(("_embd", "pos_embd"))
        writer.add_tensor(name, array.astype(np.float16 if dtype == "f16" and matrix else np.float32))
        written += 1
    if written == 0:
        raise InspectorError("no vision_model.* or multi_modal_projector.* tensors found")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(output)


def convert(folder: str | os.PathLike[str], output: str | os.PathLike[str], dtype: str = "f32") -> Path:
    config, tensors = read_checkpoint(folder)
    return write_gguf(config, tensors, output, dtype)
