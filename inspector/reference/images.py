"""An image as the reference model's inputs: transformers' own preprocessing and cross-attention mask.

The reference must not share the port's code: a preprocessing fault in the
port (``inspector/mllama/preprocess.py``, its tiling, its normalisation)
would otherwise be computed on both sides and never show at ``inp_raw``.
So the pixels come from transformers' ``MllamaImageProcessor``, with the
checkpoint's ``preprocessor_config.json`` when it has one, else built from
its ``vision_config`` with the settings Llama 3.2 Vision publishes (CLIP
mean and standard deviation, bilinear resizing).  Its PIL backend is asked
for by name: that is the processor Llama 3.2 Vision was released with, and
transformers would otherwise pick its torchvision backend, whose resizing
differs, whenever torchvision happens to be installed.  The
cross-attention mask is built by ``processing_mllama``'s own functions,
as ``MllamaProcessor`` builds it: from each image token to the next (or the
end), over the image's real tiles.

The image file is somebody else's: it is opened as a regular file with its
pixel count bounded before decoding (``inspector.files.images``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspector.dump.inputs import unknown as unknown_inputs
from inspector.errors import InspectorError, SetupError
from inspector.files.images import open_image
from inspector.reference.checkpoint import Checkpoint
from inspector.reference.name_map import config_value

PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass
class ImageInputs:
    """The model's image inputs, and the encoder evaluation's info: what was preprocessed, and how."""

    kwargs: dict[str, Any]
    info: dict[str, Any]


def image_token(kind: str, config: dict[str, Any]) -> int:
    """The token id that places the image in the prompt (past the text vocabulary in mllama)."""
    found = config_value(config, "image_token_index")
    if kind != "mllama" or not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise SetupError("the checkpoint's config has no image_token_index")
    return found


def _processor(checkpoint: Checkpoint) -> tuple[Any, str]:
    """transformers' image processor for the checkpoint (PIL backend), and a line saying where it came from."""
    import transformers
    from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    if (checkpoint.path / PROCESSOR_CONFIG).is_file():
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(
                checkpoint.path, local_files_only=True, trust_remote_code=False, backend="pil")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SetupError(f"{checkpoint.path / PROCESSOR_CONFIG}: transformers could not load the image "
                             f"processor ({str(error).splitlines()[0]})") from None
        return processor, f"transformers {type(processor).__name__} from {PROCESSOR_CONFIG}"
    size, tiles = (config_value(checkpoint.config, f"vision_config.{key}") for key in ("image_size", "max_num_tiles"))
    if not all(isinstance(n, int) and n > 0 for n in (size, tiles)):
        raise SetupError("the checkpoint has no preprocessor_config.json and its vision_config no image_size and "
                         "max_num_tiles to build one from")
    processor = transformers.MllamaImageProcessorPil(
        size={"height": size, "width": size}, max_image_tiles=tiles, image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD))
    return processor, (f"transformers {type(processor).__name__} built from vision_config (tile {size}, "
                       f"{tiles} tiles, CLIP mean and std: no {PROCESSOR_CONFIG})")


def image_inputs(kind: str, checkpoint: Checkpoint, image: str | Path, tokens: list[int]) -> ImageInputs:
    """``image`` preprocessed by transformers, and the cross-attention mask of ``tokens``, as torch inputs."""
    import torch
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    token = image_token(kind, checkpoint.config)
    if token not in tokens:
        raise InspectorError(f"the prompt has no image token ({token}, <|image|>): put it where the image goes; "
                             "the language model reads the image only from that token on")
    if tokens.count(token) > 1:
        raise InspectorError(f"the prompt has {tokens.count(token)} image tokens; capture-hf takes one image")
    processor, source = _processor(checkpoint)
    picture = open_image(Path(image))
    try:
        features = processor(images=[[picture]], return_tensors="np")
    except (ValueError, OSError) as error:
        raise InspectorError(f"{image}: the image processor refused it ({str(error).splitlines()[0]})") from None
    tiles = [[int(n) for n in row] for row in features["num_tiles"]]
    mask = convert_sparse_cross_attention_mask_to_dense(
        [get_cross_attention_token_mask(tokens, token)], tiles, processor.max_image_tiles, len(tokens))
    kwargs = {"pixel_values": torch.from_numpy(features["pixel_values"]),
              "aspect_ratio_ids": torch.from_numpy(features["aspect_ratio_ids"]),
              "aspect_ratio_mask": torch.from_numpy(features["aspect_ratio_mask"]),
              "cross_attention_mask": torch.from_numpy(mask)}
    info = {"image": str(image), "preprocessing": source, "num_tiles": tiles[0][0],
            "aspect_ratio_id": int(features["aspect_ratio_ids"][0][0]), **unknown_inputs()}
    return ImageInputs(kwargs, info)
