"""``ggml-inspector demo``: capture and an offload sweep on an embedded default model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from inspector.capture.selection import Selection
from inspector.compare.tolerance import preset
from inspector.dump.reader import open_dump
from inspector.formatting import human_bytes, number, shape_text, table
from inspector.ggml.rpc import LoopbackServer
from inspector.llamacpp.capture import capture_llama
from inspector.llamacpp.config import LlamaRunConfig
from inspector.present.report import write_report
from inspector.sweep.run import run_sweep
from inspector.sweep.summary import render_matrix
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

DEMO_PROMPT = "The quick brown fox"
DEMO_PATTERNS = ("inp_tokens", "embd", "attn_norm-*", "l_out-*", "result_output")


def run_demo(output_dir: Path, echo: Callable[[str], None] = print) -> Path:
    """Write a tiny model, capture a few named tensors from it, list them; return the dump path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model = write_tiny_llama(output_dir / "tiny-llama.gguf", TinyLlamaSpec(n_layer=4))
    echo(f"1. generated a tiny llama model: {model}")
    dump_path = output_dir / "capture.h5"
    config = LlamaRunConfig(model=str(model), prompt=DEMO_PROMPT, n_predict=4, n_ctx=128)
    echo(f"2. capturing {', '.join(DEMO_PATTERNS)} while decoding {DEMO_PROMPT!r} and generating 4 tokens")
    summary = capture_llama(config, Selection(globs=DEMO_PATTERNS), dump_path, overwrite=True)
    echo(f"   captured {summary.tensors} tensors ({human_bytes(summary.bytes)}) from {summary.evaluations} "
         f"evaluations in {summary.seconds:.2f} s -> {dump_path}")
    echo("3. what the dump holds (evaluation 0, the prompt):")
    with open_dump(dump_path) as dump:
        rows = [[str(e.node_index), e.name, e.op, e.ggml_type, shape_text(e.shape), e.buffer,
                 number(e.stats.mean), number(e.stats.std)]
                for e in dump.entries() if e.eval_index == 0]
    echo(table(["node", "name", "op", "type", "shape", "buffer", "mean", "std"], rows, right_align={0, 6, 7}))
    echo("4. offload sweep: 0, 2 and all layers on a loopback ggml RPC server standing in for a GPU,")
    echo("   each run compared with the CPU-only one (l_out-* and the logits):")
    # One server for the whole demo: ggml cannot unregister an RPC device once added.
    with LoopbackServer(threads=1) as server:
        echo(f"   loopback RPC server on {server.endpoint}")
        result = run_sweep(replace(config, n_predict=0, rpc=[server.endpoint]), [0, 2, "all"], [],
                           Selection(globs=("l_out-*", "result_output")), output_dir / "sweep", preset("f32"),
                           overwrite=True, progress=lambda message: echo(f"   {message}"))
        echo(render_matrix(result.summary))
        echo("5. a tiny mllama vision encoder (build_mllama) on a generated image, offloading 2 of 4 layers")
        echo("   to the same RPC server; the layer outputs and the projector output ca_patch_embd:")
        encode_path = _mllama_demo(output_dir, server.endpoint, echo)
    report = write_report(result.runs[0].dump, result.runs[-1].dump, output_dir / "report.html", preset("f32"))
    echo(f"6. HTML report (CPU-only vs all layers offloaded), self-contained: {report}")
    echo(f"next: ggml-inspector ls {dump_path}  |  ggml-inspector show {dump_path} l_out-3  |  "
         f"ggml-inspector compare {result.runs[0].dump} {result.runs[-1].dump}  |  "
         f"ggml-inspector ls {encode_path}")
    return dump_path


def _mllama_demo(output_dir: Path, endpoint: str, echo: Callable[[str], None]) -> Path:
    import numpy as np
    from PIL import Image

    from inspector.mllama.encode import EncodeConfig, encode
    from inspector.tiny_models.mllama import write_tiny_mllama

    model = write_tiny_mllama(output_dir / "tiny-mllama-vision.gguf")
    image = output_dir / "demo-image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(image)
    dump_path = output_dir / "mllama-encode.h5"
    summary = encode(EncodeConfig(model=str(model), image=str(image), offload_layers=2, rpc=[endpoint]),
                     Selection(globs=("inp_raw", "layer_out-?", "ca_patch_embd")), dump_path, overwrite=True)
    g = summary.geometry
    echo(f"   image {g['original_wh'][0]}×{g['original_wh'][1]} (w×h) -> {g['num_tiles']} tiles, aspect ratio id "
         f"{g['aspect_ratio_id']}; captured {summary.tensors} tensors -> {dump_path}")
    with open_dump(dump_path) as dump:
        rows = [[str(e.node_index), e.name, e.op, shape_text(e.shape), e.buffer, number(e.stats.std)]
                for e in dump.entries()]
    echo(table(["node", "name", "op", "shape", "buffer", "std"], rows, right_align={0, 5}))
    return dump_path
