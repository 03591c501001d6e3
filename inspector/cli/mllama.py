"""Llama 3.2 Vision commands: ``preprocess``, ``diff-preprocess`` and the ``mllama`` group."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from inspector.cli import options
from inspector.cli.llama_options import llama_cpp_options
from inspector.cli.running import echo_progress
from inspector.constants import DEFAULT_DUMP_DIR, MLLAMA_OUTTYPES, MLLAMA_VISION_OUTPUTS
from inspector.errors import InspectorError

tile_size = click.option("--tile-size", default=560, show_default=True)
max_tiles = click.option("--max-tiles", default=4, show_default=True)
# Offload every local layer: more than any encoder has.
EVERY_LAYER = 1 << 20


def _preprocess_config(convention: str, tile: int, tiles: int):
    from inspector.mllama.preprocess import PreprocessConfig

    config = PreprocessConfig(tile_size=tile, max_tiles=tiles, convention=convention)
    config.validate()
    return config


@click.command("preprocess")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--convention", type=click.Choice(["hf", "ollama"]), default="hf", show_default=True)
@tile_size
@max_tiles
@options.image_loader
@click.option("--explain", is_flag=True, help="Print every step with its sizes (w×h).")
@options.output_file("Dump file (default: dumps/<image>-<convention>.h5).")
@options.overwrite
def preprocess_command(image: Path, convention: str, tile_size: int, max_tiles: int, loader: str, explain: bool,
                       output: Path | None, overwrite: bool) -> None:
    """Preprocess IMAGE for mllama and write inp_raw, aspect_ratio_ids and aspect_ratio_mask to a dump."""
    from dataclasses import asdict

    from inspector.dump.raw_import import write_arrays
    from inspector.files.outputs import atomic_output, check_output
    from inspector.mllama.preprocess import load_image, preprocess
    from inspector.mllama.preprocess_report import geometry_sentence

    config = _preprocess_config(convention, tile_size, max_tiles)
    output = output or Path(DEFAULT_DUMP_DIR) / f"{image.stem}-{convention}.h5"
    check_output(output, overwrite=overwrite, inputs=[image])
    result = preprocess(load_image(image, loader), config)
    geometry = result.geometry.as_dict()
    with atomic_output(output, overwrite=overwrite, inputs=[image]) as temporary:
        write_arrays(temporary, {"inp_raw": result.inp_raw, "aspect_ratio_ids": result.aspect_ratio_ids,
                                 "aspect_ratio_mask": result.aspect_ratio_mask},
                     "preprocess", {"geometry": geometry, "steps": result.steps},
                     {"runner": "preprocess", "image": str(image), "loader": loader, "preprocess": asdict(config),
                      "geometry": geometry}, overwrite=True, op="PREPROCESS")
    if explain:
        for step in result.steps:
            click.echo(step)
    click.echo(geometry_sentence(str(image), result.geometry, str(output)), err=True)


@click.command("diff-preprocess")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--against", "against", type=click.Path(path_type=Path), required=True,
              help="The other implementation's inp_raw: a dump, a .npy or a raw f32 file.")
@click.option("--name", default="inp_raw", show_default=True, help="Tensor name inside a dump.")
@tile_size
@max_tiles
@options.image_loader
@options.as_json
def diff_preprocess(image: Path, against: Path, name: str, tile_size: int, max_tiles: int, loader: str,
                    as_json: bool) -> None:
    """Explain how another implementation's inp_raw differs from the Hugging Face reference of IMAGE.

    Exit code 0 when they are identical, 1 when they differ, 2 on error.
    """
    from inspector.dump.raw_import import read_tensor_file
    from inspector.mllama.diagnose import diagnose
    from inspector.mllama.preprocess import load_image
    from inspector.mllama.preprocess_report import diagnosis_json, diagnosis_text

    config = _preprocess_config("hf", tile_size, max_tiles)
    picture = load_image(image, loader)
    other = read_tensor_file(against, name, (max_tiles, 3, tile_size, tile_size))
    diagnosis = diagnose(picture, other, config)
    if as_json:
        click.echo(json.dumps(diagnosis_json(diagnosis), indent=1, default=str))
    else:
        click.echo(diagnosis_text(diagnosis))
    sys.exit(0 if diagnosis.baseline.identical else 1)


@click.group()
def mllama() -> None:
    """Llama 3.2 Vision: convert a checkpoint, encode images with build_mllama, generate, scheduler checks."""


@mllama.command("convert")
@click.argument("hf_dir", type=click.Path(path_type=Path))
@options.output_file("GGUF file to write.", required=True)
@click.option("--outtype", "--dtype", "outtype", type=click.Choice(MLLAMA_OUTTYPES), default="f32", show_default=True,
              help="The stored type: f32, f16 or bf16 matrices, or quantized by ggml as llama-quantize would "
                   "(q4_k_m: llama.cpp's Q4_K_M mix). --dtype is the older name.")
@options.overwrite
def mllama_convert(hf_dir: Path, output: Path, outtype: str, overwrite: bool) -> None:
    """Convert a whole Hugging Face MllamaForConditionalGeneration checkpoint to one GGUF (no torch needed).

    The file holds the vision tower, the projector and the text model (with the
    8 embedding rows past vocab_size, the cross-attention gates and q/k norms,
    and rope_freqs computed from the rope settings), plus tokenizer.json when
    HF_DIR has one. `mllama encode` reads the same file. A checkpoint without
    a text model is refused.

    --outtype f16 and bf16 store the matrices in that type and keep
    embeddings, norms, gates and rope_freqs in f32. q8_0, q6_k and q4_k
    quantize every text matrix and the token embedding to that type;
    q4_k_m mixes Q4_K and Q6_K as llama.cpp's Q4_K_M does (output, and
    attn_v and ffn_down in some layers, in Q6_K). A matrix whose rows do not
    fit the type's block falls back as llama.cpp's does (Q4_K to Q5_0, Q6_K
    to Q8_0, else F16). The vision tower stays f16 in the quantized types.
    Tensors are converted in chunks: memory stays far below the largest
    tensor. docs/mllama.md has the table.
    """
    from inspector.files.outputs import atomic_output, folder_files
    from inspector.formatting import human_bytes
    from inspector.mllama.convert import convert

    # The checkpoint's files (and their hard links elsewhere) are inputs.
    with atomic_output(output, overwrite=overwrite, inputs=[hf_dir, *folder_files(hf_dir)]) as temporary:
        convert(hf_dir, temporary, outtype)
    click.echo(f"wrote {output} ({human_bytes(output.stat().st_size)})", err=True)


encode_options = options.apply(
    llama_cpp_options(only=("threads", "n_gpu_layers", "rpc", "devices"),
                      aliases={"n_gpu_layers": ("--offload-layers",)}),
    click.option("--image", type=click.Path(path_type=Path), required=True),
    options.tensor_selection("default: all."),
    options.image_loader,
    options.output_file("Dump file (default: dumps/mllama-<image>.h5)."),
    options.overwrite,
)


def _placement(llama_values: dict[str, Any], command: str) -> dict[str, Any]:
    """The EncodeConfig fields llama.cpp's -t, -ngl, --rpc and -dev give: threads, offload layers and device.

    -ngl auto (the default) offloads every layer when there is an offload
    device, as llama.cpp's does.
    """
    import os

    rpc = llama_values["rpc"]
    devices = llama_values["devices"] or []
    if len(devices) > 1:
        raise InspectorError(f"mllama {command} offloads to one device; give one -dev name")
    device = None if devices in ([], ["none"]) else devices[0]
    layers = llama_values["n_gpu_layers"]
    offload_layers = layers if isinstance(layers, int) else (EVERY_LAYER if rpc or device or layers == "all" else 0)
    return {"threads": llama_values["threads"] or os.cpu_count() or 1, "offload_layers": offload_layers,
            "rpc": rpc, "device": device}


def _encode(llama_values: dict[str, Any], image: Path, globs: tuple[str, ...], regexes: tuple[str, ...],
            loader: str, output: Path | None, overwrite: bool, probes: tuple[str, ...], sched_check: bool,
            mode_name: str = "unsplit", unsplit_max_mib: int = 4096):
    from inspector.capture.mode import CaptureMode
    from inspector.capture.selection import Selection
    from inspector.mllama.encode import EncodeConfig, encode
    from inspector.mllama.encode_report import encode_line
    from inspector.native.inprocess import native_capture

    config = EncodeConfig(model=str(llama_values["model"]), image=str(image), probes=list(probes), loader=loader,
                          **_placement(llama_values, "encode"))
    output = output or Path(DEFAULT_DUMP_DIR) / f"mllama-{image.stem}.h5"
    selection, mode = Selection(globs=globs, regexes=regexes), CaptureMode(mode_name, unsplit_max_mib)
    hook_factory, capture_mode = (None, None) if sched_check else native_capture([config.model], selection, mode)
    summary = encode(config, selection, output, overwrite=overwrite, sched_check=sched_check, progress=echo_progress,
                     mode=mode, hook_factory=hook_factory, capture_mode=capture_mode)
    click.echo(encode_line(summary), err=True)
    return summary


@mllama.command("encode")
@encode_options
@options.capture_mode
@click.option("--probe", "probes", multiple=True, help="Add a copy of this tensor to the graph (NAME_copy).")
def mllama_encode(probes: tuple[str, ...], **values: Any) -> None:
    """Preprocess IMAGE, run build_mllama on a scheduler and capture the selected tensors.

    The image is preprocessed with the Hugging Face-exact reference (tile
    size from the GGUF); one evaluation of kind encode. -ngl counts the
    encoder layers whose weights live on the offload device (--rpc or -dev);
    auto offloads every layer when there is one. --probe adds a copy of a
    tensor to the graph, as a debugging port would. As capture does, it
    starts itself again with the native hook preloaded, which takes the
    graph's scheduler and does the per-node work in C. By default (--mode
    unsplit) the selected tensors are flagged as graph outputs, the graph is
    computed in one piece and read after, offloaded or not; the dump's
    config says which hook ran and its evaluation how the graph was taken.
    """
    _encode(probes=probes, sched_check=False, **values)


@mllama.command("sched-check")
@encode_options
def mllama_sched_check(**values: Any) -> None:
    """Show scheduler buffer reuse: re-read captured tensors after a second graph ran on the same scheduler.

    Every captured tensor is re-read from the scheduler's buffers after its
    own graph and after a second graph; the table says which were
    overwritten (the dump's result.late_reads holds the same). The scheduler
    is reserved for both graphs first, so the second never reallocates the
    buffers the re-read goes to; result.compute_buffers records each
    backend's buffer size after each graph. Exit code 0 always (overwritten
    tensors are the expected finding).
    """
    from inspector.mllama.encode_report import sched_check_text

    click.echo(sched_check_text(_encode(probes=(), sched_check=True, **values)))


@mllama.command("generate")
@llama_cpp_options(only=("prompt", "token_ids", "n_predict", "n_ctx", "threads", "n_gpu_layers", "rpc", "devices"),
                   aliases={"n_gpu_layers": ("--offload-layers",)})
@click.option("--image", type=click.Path(path_type=Path), required=True)
@options.tensor_selection("default: all.")
@click.option("--probe", "probes", multiple=True,
              help="Add a copy of this vision tensor to the vision graph (NAME_copy), as a debugging port would.")
@click.option("--vision-output", type=click.Choice(MLLAMA_VISION_OUTPUTS), default="copy", show_default=True,
              help="copy: the vision output is copied out of the scheduler before the text graph is allocated; "
                   "late-read: the text graph reads it where the vision graph left it (the original port's bug).")
@options.image_loader
@options.output_file("Dump file (default: dumps/mllama-generate-<image>.h5).")
@options.overwrite
def mllama_generate(llama_values: dict[str, Any], image: Path, globs: tuple[str, ...], regexes: tuple[str, ...],
                    probes: tuple[str, ...], vision_output: str, loader: str, output: Path | None,
                    overwrite: bool) -> None:
    """Encode IMAGE, decode a prompt that holds the image token, generate greedily: the whole Llama 3.2 Vision.

    Needs a GGUF of the whole checkpoint (mllama convert). The prompt is
    --token-ids (the image token, <|image|>, is the first id past the text
    vocabulary), or -p TEXT with the checkpoint's tokenizer (the tokenizers
    package). One dump: the vision graph (kind encode), the prompt (kind
    decode; result_output holds the logits of every prompt position), then
    one evaluation per generated token (kind generate). Both graphs run on
    one scheduler; -ngl N puts the first N layers of each (vision encoder
    and language model) on the offload device (--rpc or -dev).

    --vision-output late-read reproduces the original port's bug on purpose:
    the language model's cross_attn_states is read from where the vision
    graph left it, after the text graph was allocated over that memory, so
    the text depends on --probe and on -ngl. compare COPY.h5 LATE.h5 names
    cross_attn_states first.

    The command starts itself again with the native hook preloaded, which
    takes the scheduler and does the per-node work in C, node by node: the
    graphs' buffers are all planned before the first computes, without the
    output flags of the unsplit mode. The dump's config says which hook ran.
    """
    from inspector.capture.mode import CALLBACK, CaptureMode
    from inspector.capture.selection import Selection
    from inspector.mllama.encode_report import generate_line
    from inspector.mllama.generate import GenerateConfig, generate
    from inspector.mllama.tokenizer import prompt_token_ids
    from inspector.native.inprocess import native_capture

    model = str(llama_values["model"])
    token_ids = prompt_token_ids(model, llama_values["prompt"], llama_values["token_ids"])
    n_ctx = llama_values["n_ctx"] or len(token_ids) + max(llama_values["n_predict"], 0)
    config = GenerateConfig(model=model, image=str(image), token_ids=token_ids,
                            n_predict=max(llama_values["n_predict"], 0), n_ctx=n_ctx, probes=list(probes),
                            vision_output=vision_output, loader=loader, **_placement(llama_values, "generate"))
    output = output or Path(DEFAULT_DUMP_DIR) / f"mllama-generate-{image.stem}.h5"
    selection = Selection(globs=globs, regexes=regexes)
    hook_factory, capture_mode = native_capture([model], selection, CaptureMode(CALLBACK))
    summary = generate(config, selection, output, overwrite=overwrite, progress=echo_progress,
                       hook_factory=hook_factory, capture_mode=capture_mode)
    click.echo(generate_line(summary), err=True)


COMMANDS = (preprocess_command, diff_preprocess, mllama)
