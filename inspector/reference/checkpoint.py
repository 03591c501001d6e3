"""A local transformers checkpoint: refused unless it is safe to load, identified, and loaded on the CPU.

A checkpoint folder is somebody else's: its pickled weights (``*.bin``,
``*.pt``) would run code when loaded, and so would a ``trust_remote_code``
model class.  Only safetensors weights and transformers' own model classes
are loaded, from local files only (no download is ever attempted).

The dump records what was run, so a comparison can say when two references
are not the same model: a digest of ``config.json``, every file's size and
xxh3-128 digest, and the versions of transformers and torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from inspector.errors import InspectorError, SetupError
from inspector.files.inputs import open_regular_file, read_small_file

MAX_CONFIG_BYTES = 4 * 1024 * 1024
DIGEST_BLOCK = 16 * 1024 * 1024
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = ("float32", "float64", "bfloat16")
# transformers' auto classes a checkpoint may be loaded with (a map's model_class).
MODEL_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText")


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint folder and its ``config.json``."""

    path: Path
    config: dict[str, Any]

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The folder's config, after refusing what cannot be loaded safely."""
    folder = Path(path)
    if not folder.is_dir():
        raise SetupError(f"{folder}: not a checkpoint folder (a folder holding config.json and *.safetensors)")
    try:
        config = json.loads(read_small_file(folder / "config.json", MAX_CONFIG_BYTES, "a config.json", SetupError))
    except (ValueError, RecursionError) as error:
        raise SetupError(f"{folder / 'config.json'}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise SetupError(f"{folder / 'config.json'}: not a JSON object")
    if config.get("auto_map"):
        raise SetupError(f"{folder}: its config asks for a model class shipped as code (auto_map); such code is "
                         "never run, so only transformers' own classes can be captured")
    names = sorted(entry.name for entry in folder.iterdir())
    if not any(name.endswith(".safetensors") for name in names):
        pickled = [name for name in names if name.endswith(PICKLED)]
        raise SetupError(f"{folder}: no *.safetensors weights" + (
            f" ({', '.join(pickled[:3])} are pickled, which would run code when loaded: convert them to "
            "safetensors)" if pickled else ""))
    return Checkpoint(folder, config)


def _file_digest(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open_regular_file(path, "a checkpoint file") as handle:
        while block := handle.read(DIGEST_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def identity(checkpoint: Checkpoint) -> dict[str, Any]:
    """What the dump records about the checkpoint and the software that ran it."""
    import torch
    import transformers

    files = {}
    for entry in sorted(checkpoint.path.iterdir(), key=lambda e: e.name):
        if entry.is_file() and not entry.is_symlink():
            files[entry.name] = {"bytes": entry.stat().st_size, "xxh3_128": _file_digest(entry)}
    return {"path": str(checkpoint.path), "model_type": checkpoint.model_type,
            "architectures": checkpoint.config.get("architectures"),
            "config_xxh3_128": files.get("config.json", {}).get("xxh3_128"), "files": files,
            "transformers": transformers.__version__, "torch": torch.__version__}


def load_model(checkpoint: Checkpoint, dtype: str, model_class: str = MODEL_CLASSES[0]) -> Any:
    """The model in ``dtype`` on the CPU, in eval mode, with eager attention (no fused kernels to hide in).

    ``model_class`` is one of transformers' own auto classes (the map names it: an image-text model such as
    mllama is no causal LM class), looked up by name in an allowlist, never a class the checkpoint ships.
    """
    import torch
    import transformers
    from transformers.utils import logging as transformers_logging

    # Its progress bars and notices would bury the capture's own lines on stderr.
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if dtype not in DTYPES:
        raise InspectorError(f"--dtype must be one of {', '.join(DTYPES)}")
    if model_class not in MODEL_CLASSES:
        raise InspectorError(f"model class {model_class!r} is not one of {', '.join(MODEL_CLASSES)}")
    try:
        model = getattr(transformers, model_class).from_pretrained(
            checkpoint.path, dtype=getattr(torch, dtype), local_files_only=True, trust_remote_code=False,
            use_safetensors=True, attn_implementation="eager")
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise SetupError(f"{checkpoint.path}: transformers could not load it ({str(error).splitlines()[0]})") \
            from None
    return model.eval()


def load_tokenizer(checkpoint: Checkpoint) -> Any:
    """The checkpoint's own tokenizer (local files only, no remote code)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise SetupError(f"{checkpoint.path}: no usable tokenizer ({str(error).splitlines()[0]}); pass "
                         "--token-ids") from None
