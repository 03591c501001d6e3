"""The ``ggml-inspector`` command line (click command group).

Every command reports user mistakes as one line on stderr with a non-zero
exit: 2 for errors, 130 for an interrupted capture.  Set
``GGML_INSPECTOR_DEBUG=1`` to see tracebacks of unexpected failures.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from inspector.constants import DEFAULT_DUMP_DIR, DEFAULT_N_BATCH, DEFAULT_N_CTX, DEFAULT_N_UBATCH, TOOL_VERSION
from inspector.dump_format import Compression
from inspector.errors import CaptureInterrupted, InspectorError
from inspector.formatting import human_bytes, number, shape_text, table
from inspector.mllama.preprocess import LOADERS
from inspector.store import Entry, open_dump
from inspector.tolerance import DEFAULT_PRESET, PRESETS

tolerance_option = click.option(
    "--tolerance", "preset_name", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
    help="Threshold preset (docs/compare.md).")
loader_option = click.option(
    "--loader", type=click.Choice(list(LOADERS)), default=LOADERS[0], show_default=True,
    help="'hf-path' mimics transformers' load_image (EXIF rotation, alpha dropped).")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"ggml-inspector: error: {message}", err=True)
    sys.exit(code)


class InspectorGroup(click.Group):
    """A click group that turns every failure into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CaptureInterrupted as error:
            fail(str(error), EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except InspectorError as error:
            fail(str(error))
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # stdout closed early (``| head``): not an error worth a message.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as error:
            if os.environ.get("GGML_INSPECTOR_DEBUG"):
                raise
            fail(f"{error.strerror or error}" + (f": {error.filename}" if error.filename else ""))
        except Exception as error:  # noqa: BLE001  (last line of defence against tracebacks)
            if os.environ.get("GGML_INSPECTOR_DEBUG"):
                raise
            fail(f"unexpected {type(error).__name__}: {error} (set GGML_INSPECTOR_DEBUG=1 for the traceback)")


@click.group(cls=InspectorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(TOOL_VERSION, prog_name="ggml-inspector")
def main() -> None:
    """Capture, inspect and compare the tensors of ggml compute graphs."""
    if not os.environ.get("GGML_INSPECTOR_DEBUG"):
        # ggml prints a gdb backtrace on an internal abort; its one-line assertion is enough here.
        os.environ.setdefault("GGML_NO_BACKTRACE", "1")
    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit (ulimit -f) a write fails with EFBIG, which the writer turns
        # into a clean incomplete dump, instead of the signal killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _default_output(stem: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(DEFAULT_DUMP_DIR) / f"{stem}-{stamp}.h5"


def _raise_keyboard_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-p", "--prompt", required=True, help="Prompt text to decode.")
@click.option("-t", "--tensor", "globs", multiple=True, help="Glob over tensor names (repeatable); default: all.")
@click.option("--regex", "regexes", multiple=True, help="Regular expression over tensor names (repeatable).")
@click.option("--n-gpu-layers", default=0, show_default=True, help="Layers to offload to GPU/RPC devices.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--ctx", "n_ctx", default=DEFAULT_N_CTX, show_default=True, help="Context size.")
@click.option("--batch", "n_batch", default=DEFAULT_N_BATCH, show_default=True, help="Logical batch size.")
@click.option("--ubatch", "n_ubatch", default=DEFAULT_N_UBATCH, show_default=True,
              help="Physical batch size: tokens per graph evaluation.")
@click.option("--flash-attn", type=click.Choice(["on", "off", "auto"]), default="auto", show_default=True)
@click.option("--cache-type-k", "type_k", default="f16", show_default=True, help="K cache type (f16, q8_0, ...).")
@click.option("--cache-type-v", "type_v", default="f16", show_default=True, help="V cache type.")
@click.option("--n-predict", default=0, show_default=True, help="Tokens to generate greedily after the prompt.")
@click.option("--rpc", "rpc_endpoints", multiple=True, metavar="HOST:PORT",
              help="Register a ggml RPC server's devices before loading (repeatable).")
@click.option("--op-offload/--no-op-offload", default=True, show_default=True,
              help="Let llama.cpp run large-batch ops of CPU-resident weights on an offload device.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Dump file (default: dumps/<model>-<time>.h5).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--all-logits", is_flag=True, help="Logits (result_output) for every prompt token, not only the last.")
@click.option("--sha256", "sha256", is_flag=True,
              help="Record the model's full sha256 (cached per path, size and mtime), not only its fingerprint.")
@click.option("--stats-only", is_flag=True,
              help="Store per tensor its statistics, digest and first values instead of the data.")
@click.option("--compression", default="none", show_default=True, metavar="none|lzf|gzip[:LEVEL]",
              help="Compression of tensor datasets (docs/performance.md has the trade-off).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log.")
def capture(model: Path, prompt: str, globs: tuple[str, ...], regexes: tuple[str, ...], n_gpu_layers: int,
            threads: int | None, n_ctx: int, n_batch: int, n_ubatch: int, flash_attn: str, type_k: str,
            type_v: str, n_predict: int, rpc_endpoints: tuple[str, ...], op_offload: bool, output: Path | None,
            overwrite: bool, all_logits: bool, sha256: bool, stats_only: bool, compression: str,
            verbose: bool) -> None:
    """Run MODEL on a prompt and store the selected tensors as they are computed."""
    from inspector.capture import capture_llama
    from inspector.runners.llama import LlamaRunConfig
    from inspector.selection import Selection

    config = LlamaRunConfig(model=str(model), prompt=prompt, n_gpu_layers=n_gpu_layers,
                            threads=threads or os.cpu_count() or 1, n_ctx=n_ctx, n_batch=n_batch,
                            n_ubatch=n_ubatch, flash_attn=flash_attn, type_k=type_k, type_v=type_v,
                            n_predict=n_predict, rpc=list(rpc_endpoints), op_offload=op_offload,
                            all_logits=all_logits, sha256=sha256)
    selection = Selection(globs=globs, regexes=regexes)
    output = output or _default_output(model.stem)
    storage = Compression.parse(compression)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    summary = capture_llama(config, selection, output, overwrite=overwrite, verbose=verbose,
                            progress=lambda message: click.echo(message, err=True), stats_only=stats_only,
                            compression=storage)
    for pattern, names in summary.unmatched.items():
        click.echo(f"warning: pattern {pattern!r} matched no tensor; nearest names seen: {', '.join(names)}",
                   err=True)
    result = summary.result
    if result and result.generated_ids:
        click.echo(f"generated: {result.generated_text!r}", err=True)
    click.echo(f"captured {summary.tensors} tensors ({human_bytes(summary.bytes)}) from "
               f"{summary.evaluations} evaluations in {summary.seconds:.2f} s -> {summary.path}", err=True)


def _entry_json(entry: Entry) -> dict[str, Any]:
    stats = entry.stats

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "eval": entry.eval_index, "node": entry.node_index, "name": entry.name, "occurrence": entry.occurrence,
        "op": entry.op, "type": entry.ggml_type, "shape": list(entry.shape), "buffer": entry.buffer,
        "buffer_type": entry.buffer_type, "storage": entry.storage, "is_leaf": entry.is_leaf,
        "nbytes": entry.nbytes, "digest": entry.digest,
        "min": finite(stats.min), "max": finite(stats.max), "mean": finite(stats.mean), "std": finite(stats.std),
        "n_nan": stats.n_nan, "n_inf": stats.n_inf,
    }


@main.command("ls")
@click.argument("dump", type=click.Path(path_type=Path))
@click.option("-t", "--tensor", "globs", multiple=True, help="Only names matching this glob (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_tensors(dump: Path, globs: tuple[str, ...], as_json: bool) -> None:
    """List the tensors in a dump, in execution order, with their statistics."""
    with open_dump(dump) as opened:
        entries = opened.entries(list(globs))
        if as_json:
            click.echo(json.dumps({"path": str(dump), "complete": opened.complete,
                                   "incomplete_reason": opened.incomplete_reason,
                                   "dropped_bytes": opened.dropped_bytes, "skipped": opened.skipped,
                                   "tensors": [_entry_json(e) for e in entries]}, indent=1))
            return
        if not opened.complete:
            dropped = (f"; dropped {opened.dropped_bytes} bytes written after the last indexed tensor"
                       if opened.dropped_bytes else "")
            click.echo(f"warning: {dump} is incomplete ({opened.incomplete_reason}){dropped}", err=True)
        for skip in opened.skipped:
            click.echo(f"note: {skip['name']} (eval {skip['eval_index']}) was not captured: {skip['reason']}",
                       err=True)
        rows = [[str(e.eval_index), str(e.node_index), e.name + ("" if e.occurrence == 0 else f" #{e.occurrence}"),
                 e.op, e.ggml_type, shape_text(e.shape), e.buffer, number(e.stats.min), number(e.stats.max),
                 number(e.stats.mean), number(e.stats.std), str(e.stats.n_nan), str(e.stats.n_inf)]
                for e in entries]
        click.echo(table(["eval", "node", "name", "op", "type", "shape", "buffer", "min", "max", "mean", "std",
                          "nan", "inf"], rows, right_align={0, 1, 7, 8, 9, 10, 11, 12}))
        click.echo(f"{len(entries)} tensors", err=True)


def _edge_values(array: np.ndarray, count: int) -> tuple[list[float], list[float]]:
    """The first and the last ``count`` values (no tail when the head already holds every value).

    The tail slice starts at ``size - count`` rather than ``-count``: ``flat[-0:]``
    is the whole array, so ``-n 0`` would print every value instead of none.
    """
    flat = array.reshape(-1)
    return flat[:count].tolist(), flat[flat.size - count:].tolist() if flat.size > count else []


@main.command()
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@click.option("--eval", "eval_index", type=int, default=None, help="Evaluation index (default: first holding it).")
@click.option("--occurrence", default=0, show_default=True, help="Which same-named tensor of the evaluation.")
@click.option("-n", "--values", "count", type=click.IntRange(min=0), default=6, show_default=True,
              help="Leading/trailing values to print (0: none).")
@click.option("--json", "as_json", is_flag=True)
def show(dump: Path, tensor: str, eval_index: int | None, occurrence: int, count: int, as_json: bool) -> None:
    """Show one tensor's metadata, statistics and leading/trailing values."""
    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        array = opened.read(entry)
        metadata = opened.metadata(entry)
    head, tail = _edge_values(array, count)
    total = float(np.sum(array, dtype=np.float64))
    if as_json:
        click.echo(json.dumps({**_entry_json(entry), "metadata": metadata, "sum": total,
                               "head": head, "tail": tail}, indent=1, default=str))
        return
    stats = entry.stats
    click.echo(f"{entry.name}  (eval {entry.eval_index}, node {entry.node_index}, occurrence {entry.occurrence})")
    click.echo(f"  op {entry.op}, type {entry.ggml_type} stored as {array.dtype} ({entry.storage}), "
               f"numpy shape {shape_text(array.shape)}, ggml ne {shape_text(metadata.get('ne', []))}")
    click.echo(f"  buffer {entry.buffer or '-'}; sources: {', '.join(metadata.get('sources', [])) or '-'}"
               + (f"; view of {metadata['view_source']}" if metadata.get("view_source") else ""))
    click.echo(f"  min {number(stats.min)}  max {number(stats.max)}  mean {number(stats.mean)}  "
               f"std {number(stats.std)}  sum {number(total)}  nan {stats.n_nan}  inf {stats.n_inf}")
    if head:
        click.echo("  first: " + " ".join(number(float(v)) for v in head))
    if tail:
        click.echo("  last:  " + " ".join(number(float(v)) for v in tail))


@main.command()
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Destination .npy file.")
@click.option("--eval", "eval_index", type=int, default=None)
@click.option("--occurrence", default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def export(dump: Path, tensor: str, output: Path, eval_index: int | None, occurrence: int, overwrite: bool) -> None:
    """Write one tensor to a .npy file (numpy shape = ggml ne reversed)."""
    if output.suffix != ".npy":
        raise InspectorError(f"{output}: export writes .npy files; give a name ending in .npy")
    if output.exists() and not overwrite:
        raise InspectorError(f"{output} exists; pass --overwrite to replace it")
    with open_dump(dump) as opened:
        array = opened.read(tensor, eval_index, occurrence)
    np.save(output, array, allow_pickle=False)
    click.echo(f"wrote {tensor} {shape_text(array.shape)} {array.dtype} -> {output}", err=True)


@main.command("gguf")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--tensors", "with_tensors", is_flag=True, help="Also list the tensors.")
@click.option("--json", "as_json", is_flag=True)
def gguf_command(model: Path, with_tensors: bool, as_json: bool) -> None:
    """Show a GGUF file's metadata (and tensor table) without loading it into llama.cpp.

    Arrays longer than 16 items (a vocabulary) show as ``[262144 items]``: the
    header is parsed by ggml's C parser and no array is materialised in Python.
    """
    from inspector.gguf_header import read_header

    header = read_header(model)
    tensors = list(header.tensors.values()) if with_tensors else []
    if as_json:
        payload: dict[str, Any] = {"path": str(model), "version": header.version, "metadata": header.metadata}
        if with_tensors:
            payload["tensors"] = [{"name": t.name, "ggml_type": t.type_name, "ne": list(t.shape), "n_bytes": t.n_bytes,
                                   "offset": t.offset} for t in tensors]
        click.echo(json.dumps(payload, indent=1, default=str))
        return
    click.echo(table(["key", "value"], [[key, str(value)] for key, value in header.metadata.items()]))
    if with_tensors:
        click.echo()
        click.echo(table(["name", "type", "ne", "bytes"],
                         [[t.name, t.type_name, shape_text(t.shape), str(t.n_bytes)] for t in tensors],
                         right_align={3}))
    click.echo(f"{len(header.tensors)} tensors", err=True)


@main.command()
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(DEFAULT_DUMP_DIR) / "demo", show_default=True)
def demo(output_dir: Path) -> None:
    """Generate a tiny model, capture it, and list what was caught (no downloads)."""
    from inspector.demo import run_demo

    run_demo(output_dir, echo=click.echo)


@main.command("rpc-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=50052, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (default: all cores).")
@click.option("--device", default=None, help="ggml device to serve (default: the CPU).")
def rpc_server(host: str, port: int, threads: int | None, device: str | None) -> None:
    """Serve this host's CPU (or DEVICE) over ggml's RPC backend until stopped."""
    from inspector import rpc

    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: ggml's RPC protocol has no authentication; serve only on trusted networks", err=True)
    # The server blocks inside C: let Ctrl-C and SIGTERM end the process directly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    click.echo(f"serving on {host}:{port} (Ctrl-C to stop)", err=True)
    rpc.serve(host, port, threads or os.cpu_count() or 1, device)


def _parse_maps(pairs: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        name_a, sep, name_b = pair.partition("=")
        if not sep or not name_a or not name_b:
            raise InspectorError(f"--map takes NAME_A=NAME_B, not {pair!r}")
        mapping[name_a] = name_b
    return mapping


@main.command()
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path))
@click.option("-t", "--tensor", "globs", multiple=True, help="Only tensors whose A name matches (repeatable).")
@tolerance_option
@click.option("--atol", type=float, default=None, help="Absolute tolerance, element-wise.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance, element-wise.")
@click.option("--nmse", type=float, default=None, help="Maximum normalised mean squared error.")
@click.option("--map", "maps", multiple=True, metavar="NAME_A=NAME_B", help="Pair differently named tensors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/compare.md).")
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per tensor.")
@click.option("--all", "show_all", is_flag=True, help="List identical tensors too.")
def compare(dump_a: Path, dump_b: Path, globs: tuple[str, ...], preset_name: str, atol: float | None,
            rtol: float | None, nmse: float | None, maps: tuple[str, ...], as_json: bool, as_csv: bool,
            show_all: bool) -> None:
    """Compare run B against reference run A tensor by tensor; report the first divergence.

    Exit code 0 when every compared tensor is within tolerance, 1 when any
    diverged or is missing, 2 on error.
    """
    from inspector import compare_report
    from inspector.compare import compare_dumps
    from inspector.tolerance import preset

    if as_json and as_csv:
        raise InspectorError("choose one of --json and --csv")
    tolerance = preset(preset_name).with_overrides(nmse, atol, rtol)
    comparison = compare_dumps(dump_a, dump_b, tolerance, list(globs) or None, _parse_maps(maps))
    if as_json:
        click.echo(json.dumps(compare_report.to_json(comparison), indent=1))
    elif as_csv:
        click.echo(compare_report.to_csv(comparison), nl=False)
    else:
        click.echo(compare_report.render_text(comparison, show_all, colour=sys.stdout.isatty()))
    sys.exit(0 if comparison.passed else 1)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-p", "--prompt", required=True)
@click.option("--n-gpu-layers", "layers", default="0,all", show_default=True,
              help="Comma-separated offload counts; 'all' offloads everything.")
@click.option("--vary", "varies", multiple=True, metavar="SETTING=V1,V2",
              help="Also vary flash_attn, threads, type_k, type_v or op_offload (not n_batch/n_ubatch: they "
                   "change the evaluations, so runs could not be paired).")
@click.option("--rpc", "rpc_mode", default="auto", show_default=True,
              help="'auto' (loopback server when there is no GPU), 'none', or HOST:PORT.")
@click.option("-t", "--tensor", "globs", multiple=True, help="Glob over tensor names (default: l_out-* and logits).")
@click.option("--threads", type=int, default=None)
@click.option("--ctx", "n_ctx", default=DEFAULT_N_CTX, show_default=True)
@tolerance_option
@click.option("--per-layer", is_flag=True, help="Aggregate the matrix per layer (worst status, largest NMSE).")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the dumps and summary.json (default: dumps/sweep-<model>-<time>/).")
@click.option("--overwrite", is_flag=True)
def sweep(model: Path, prompt: str, layers: str, varies: tuple[str, ...], rpc_mode: str, globs: tuple[str, ...],
          threads: int | None, n_ctx: int, preset_name: str, per_layer: bool, output_dir: Path | None,
          overwrite: bool) -> None:
    """Capture MODEL under every configuration and compare each with the first."""
    from inspector.runners.llama import LlamaRunConfig
    from inspector.selection import Selection
    from inspector.sweep import parse_layers, parse_vary, run_sweep
    from inspector.sweep_summary import render_matrix
    from inspector.tolerance import preset

    base = LlamaRunConfig(model=str(model), prompt=prompt, threads=threads or os.cpu_count() or 1, n_ctx=n_ctx)
    selection = Selection(globs=globs or ("l_out-*", "result_output"))
    output_dir = output_dir or Path(DEFAULT_DUMP_DIR) / f"sweep-{model.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    result = run_sweep(base, parse_layers(layers), [parse_vary(v) for v in varies], rpc_mode, selection,
                       output_dir, preset(preset_name), overwrite=overwrite,
                       progress=lambda message: click.echo(message, err=True))
    click.echo(render_matrix(result.summary, per_layer))
    click.echo(f"summary: {result.summary_path}", err=True)
    sys.exit(0 if result.summary["passed"] else 1)


def _preprocess_config(convention: str, tile_size: int, max_tiles: int):
    from inspector.mllama.preprocess import PreprocessConfig

    config = PreprocessConfig(tile_size=tile_size, max_tiles=max_tiles, convention=convention)
    config.validate()
    return config


@main.command("preprocess")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--convention", type=click.Choice(["hf", "ollama"]), default="hf", show_default=True)
@click.option("--tile-size", default=560, show_default=True)
@click.option("--max-tiles", default=4, show_default=True)
@loader_option
@click.option("--explain", is_flag=True, help="Print every step with its sizes (w×h).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Dump file (default: dumps/<image>-<convention>.h5).")
@click.option("--overwrite", is_flag=True)
def preprocess_command(image: Path, convention: str, tile_size: int, max_tiles: int, loader: str, explain: bool,
                       output: Path | None, overwrite: bool) -> None:
    """Preprocess IMAGE for mllama and write inp_raw, aspect_ratio_ids and aspect_ratio_mask to a dump."""
    from dataclasses import asdict

    from inspector.importer import write_arrays
    from inspector.mllama.preprocess import load_image, preprocess

    config = _preprocess_config(convention, tile_size, max_tiles)
    result = preprocess(load_image(image, loader), config)
    output = output or Path(DEFAULT_DUMP_DIR) / f"{image.stem}-{convention}.h5"
    geometry = result.geometry.as_dict()
    write_arrays(output, {"inp_raw": result.inp_raw, "aspect_ratio_ids": result.aspect_ratio_ids,
                          "aspect_ratio_mask": result.aspect_ratio_mask},
                 "preprocess", {"geometry": geometry, "steps": result.steps},
                 {"runner": "preprocess", "image": str(image), "loader": loader, "preprocess": asdict(config),
                  "geometry": geometry}, overwrite=overwrite, op="PREPROCESS")
    if explain:
        for step in result.steps:
            click.echo(step)
    g = result.geometry
    click.echo(f"{image}: {g.original_wh[0]}×{g.original_wh[1]} (w×h) -> resized {g.resized_wh[0]}×{g.resized_wh[1]}"
               f" on canvas {g.canvas_wh[0]}×{g.canvas_wh[1]} ({g.grid_rows}×{g.grid_cols} tiles, rows×columns), "
               f"aspect ratio id {g.aspect_ratio_id} -> {output}", err=True)


@main.command("import-raw")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Tensor name to give it (e.g. inp_raw).")
@click.option("--dtype", default="f32", show_default=True, help="f32, f16, f64, i8, i16, i32, i64 (raw files).")
@click.option("--ne", default=None, help="ggml dimensions, fastest first, e.g. 560,560,3,4.")
@click.option("--shape", default=None, help="numpy shape, slowest first, e.g. 4,3,560,560.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--overwrite", is_flag=True)
def import_raw(file: Path, name: str, dtype: str, ne: str | None, shape: str | None, output: Path,
               overwrite: bool) -> None:
    """Import a raw tensor file (fwrite of a tensor's data) or a .npy as a one-tensor dump."""
    from inspector.importer import parse_dims, read_npy, read_raw, write_arrays

    if file.suffix == ".npy":
        if ne or shape:
            raise InspectorError(".npy files carry their own shape; drop --ne/--shape")
        array = read_npy(file)
    else:
        if bool(ne) == bool(shape):
            raise InspectorError("give the size of a raw file with exactly one of --ne or --shape")
        dims = tuple(reversed(parse_dims(ne))) if ne else parse_dims(shape)
        array = read_raw(file, dtype, dims)
    write_arrays(output, {name: array}, "import", {"source": str(file)},
                 {"runner": "import", "source": str(file), "dtype": str(array.dtype), "shape": list(array.shape)},
                 overwrite=overwrite, op="IMPORT")
    click.echo(f"imported {name} {shape_text(array.shape)} {array.dtype} -> {output}", err=True)


def _load_other_inp_raw(path: Path, name: str, expected_shape: tuple[int, ...]) -> np.ndarray:
    """inp_raw from a dump, a .npy, or a raw f32 file of the reference's size."""
    import h5py

    from inspector.importer import read_npy, read_raw

    if path.suffix == ".npy":
        return read_npy(path)
    if path.exists() and h5py.is_hdf5(path):
        with open_dump(path) as dump:
            return dump.read(name)
    return read_raw(path, "f32", expected_shape)


@main.command("diff-preprocess")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--against", "against", type=click.Path(path_type=Path), required=True,
              help="The other implementation's inp_raw: a dump, a .npy or a raw f32 file.")
@click.option("--name", default="inp_raw", show_default=True, help="Tensor name inside a dump.")
@click.option("--tile-size", default=560, show_default=True)
@click.option("--max-tiles", default=4, show_default=True)
@loader_option
@click.option("--json", "as_json", is_flag=True)
def diff_preprocess(image: Path, against: Path, name: str, tile_size: int, max_tiles: int, loader: str,
                    as_json: bool) -> None:
    """Explain how another implementation's inp_raw differs from the Hugging Face reference of IMAGE."""
    from dataclasses import asdict

    from inspector.mllama.diagnose import diagnose
    from inspector.mllama.preprocess import load_image

    config = _preprocess_config("hf", tile_size, max_tiles)
    picture = load_image(image, loader)
    expected = (max_tiles, 3, tile_size, tile_size)
    other = _load_other_inp_raw(against, name, expected)
    diagnosis = diagnose(picture, other, config)
    best = diagnosis.best
    if as_json:
        click.echo(json.dumps({
            "identical": diagnosis.baseline.identical,
            "baseline": asdict(diagnosis.baseline),
            "explanation": asdict(best) if best else None,
            "hypotheses": [asdict(h) for h in diagnosis.ranked],
            "geometry": diagnosis.reference.geometry.as_dict(),
            "tile_channel_stats": [asdict(s) for s in diagnosis.stats],
        }, indent=1, default=str))
        sys.exit(0 if diagnosis.baseline.identical else 1)
    if diagnosis.baseline.identical:
        click.echo("identical: the other inp_raw is bit-identical to the Hugging Face reference")
        sys.exit(0)
    if best:
        exact = "exactly" if best.identical else f"to NMSE {number(best.nmse)}"
        click.echo(f"most likely: {best.name}: {best.explanation} (reproduces the other inp_raw {exact})")
    else:
        click.echo("no single known cause reproduces the other inp_raw; closest hypotheses below")
    click.echo(f"reference vs other: NMSE {number(diagnosis.baseline.nmse)}, "
               f"max |a-b| {number(diagnosis.baseline.max_abs_diff)}")
    g = diagnosis.reference.geometry
    click.echo(f"reference geometry: {g.original_wh[0]}×{g.original_wh[1]} (w×h) -> {g.resized_wh[0]}×"
               f"{g.resized_wh[1]} on {g.canvas_wh[0]}×{g.canvas_wh[1]}, {g.num_tiles} tiles, aspect ratio id "
               f"{g.aspect_ratio_id}")
    click.echo(table(["hypothesis", "nmse", "max|a-b|", "explanation"],
                     [[h.name, number(h.nmse), number(h.max_abs_diff), h.explanation] for h in diagnosis.ranked[:8]],
                     right_align={1, 2}))
    click.echo(table(["tile", "channel", "mean ref", "mean other", "std ref", "std other", "nmse"],
                     [[str(s.tile), "RGB"[s.channel], number(s.mean_reference), number(s.mean_other),
                       number(s.std_reference), number(s.std_other), number(s.nmse)] for s in diagnosis.stats],
                     right_align={0, 2, 3, 4, 5, 6}))
    sys.exit(1)


@main.group()
def mllama() -> None:
    """Llama 3.2 Vision: convert the vision tower, encode images with build_mllama, scheduler checks."""


@mllama.command("convert")
@click.argument("hf_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--dtype", type=click.Choice(["f32", "f16"]), default="f32", show_default=True)
@click.option("--overwrite", is_flag=True)
def mllama_convert(hf_dir: Path, output: Path, dtype: str, overwrite: bool) -> None:
    """Convert a Hugging Face Mllama checkpoint's vision tower and projector to GGUF (no torch needed)."""
    from inspector.mllama.convert import convert

    if output.exists() and not overwrite:
        raise InspectorError(f"{output} exists; pass --overwrite to replace it")
    path = convert(hf_dir, output, dtype)
    click.echo(f"wrote {path} ({human_bytes(path.stat().st_size)})", err=True)


def _encode_options(function):
    options = [
        click.argument("model", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--image", type=click.Path(path_type=Path), required=True),
        click.option("-t", "--tensor", "globs", multiple=True, help="Glob over tensor names (default: all)."),
        click.option("--offload-layers", default=0, show_default=True,
                     help="Local layers whose weights live on the offload backend."),
        click.option("--rpc", "rpc_endpoints", multiple=True, metavar="HOST:PORT",
                     help="Offload to a ggml RPC server."),
        click.option("--device", default=None, help="Offload to this ggml device (e.g. CUDA0)."),
        click.option("--threads", type=int, default=None),
        loader_option,
        click.option("-o", "--output", type=click.Path(path_type=Path), default=None),
        click.option("--overwrite", is_flag=True),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _encode(model: Path, image: Path, globs: tuple[str, ...], offload_layers: int, rpc_endpoints: tuple[str, ...],
            device: str | None, threads: int | None, loader: str, output: Path | None, overwrite: bool,
            probes: tuple[str, ...], sched_check: bool):
    from inspector.runners.mllama import EncodeConfig, encode
    from inspector.selection import Selection

    config = EncodeConfig(model=str(model), image=str(image), threads=threads or os.cpu_count() or 1,
                          offload_layers=offload_layers, rpc=list(rpc_endpoints), device=device,
                          probes=list(probes), loader=loader)
    output = output or Path(DEFAULT_DUMP_DIR) / f"mllama-{image.stem}.h5"
    summary = encode(config, Selection(globs=globs), output, overwrite=overwrite, sched_check=sched_check,
                     progress=lambda message: click.echo(message, err=True))
    placed = sorted(set(summary.placement.values()))
    click.echo(f"captured {summary.tensors} tensors in {summary.seconds:.2f} s (weights on {', '.join(placed)}) "
               f"-> {summary.path}", err=True)
    return summary


@mllama.command("encode")
@_encode_options
@click.option("--probe", "probes", multiple=True, help="Add a copy of this tensor to the graph (NAME_copy).")
def mllama_encode(probes: tuple[str, ...], **options: Any) -> None:
    """Preprocess IMAGE, run build_mllama on a scheduler and capture the selected tensors."""
    _encode(probes=probes, sched_check=False, **options)


@mllama.command("sched-check")
@_encode_options
def mllama_sched_check(**options: Any) -> None:
    """Show scheduler buffer reuse: re-read captured tensors after a second graph ran on the same scheduler.

    Exit code 0 always (overwritten tensors are the expected finding); the
    table says which tensors' memory no longer holds what was computed.
    """
    summary = _encode(probes=(), sched_check=True, **options)
    reads = summary.late_reads

    def state(overwritten: bool) -> str:
        return "OVERWRITTEN" if overwritten else "intact"

    if summary.reallocated:
        click.echo("the scheduler reallocated its compute buffers for the next graph: the captured tensors' "
                   "memory was freed, so they were not re-read")
    else:
        click.echo(table(["tensor", "after its own graph", "after the next graph", "nmse vs capture"],
                         [[r.name + (f" #{r.occurrence}" if r.occurrence else ""), state(r.overwritten_by_own_graph),
                           state(r.overwritten_by_next_graph), number(r.nmse_after_next_graph)] for r in reads],
                         right_align={3}))
        own = sum(r.overwritten_by_own_graph for r in reads)
        later = sum(r.overwritten_by_next_graph for r in reads)
        click.echo(f"{own} of {len(reads)} captured tensors were overwritten by later nodes of their own graph, "
                   f"{later} after the next graph ran on the same scheduler; the hook's copies in the dump are "
                   "intact")
    for buffer in summary.compute_buffers:
        click.echo(f"{buffer.backend} compute buffer: {human_bytes(buffer.after_own_graph)} after its own graph, "
                   f"{human_bytes(buffer.after_next_graph)} after the next graph")


PLOT_DIR = Path(DEFAULT_DUMP_DIR) / "plots"


def _plot_output(output: Path | None, stem: str) -> Path:
    return output or PLOT_DIR / f"{stem}.png"


def _saved(plot, output: Path) -> None:
    path = plot.save(output)
    click.echo(f"wrote {path}", err=True)


def _plot_common(function):
    function = click.option("--title", default=None, help="Figure title.")(function)
    function = click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                            help="Image file: .png, .svg or .pdf (default: dumps/plots/...).")(function)
    return function


@main.group()
def plot() -> None:
    """Plot activations, differences, mllama tiles and sweeps (matplotlib, headless)."""


@plot.command("stats")
@click.argument("dump", type=click.Path(path_type=Path))
@click.option("-t", "--tensor", "globs", multiple=True, help="Tensors to plot (default: all of the evaluation).")
@click.option("--eval", "eval_index", default=0, show_default=True)
@click.option("--stat", "statistic", default=None, help="Only this statistic: mean, std, min, max, absmax, rms.")
@_plot_common
def plot_stats(dump: Path, globs: tuple[str, ...], eval_index: int, statistic: str | None, output: Path | None,
               title: str | None) -> None:
    """Per-layer mean, std, min, max, abs-max and RMS: where activations blow up."""
    from inspector import plots

    with open_dump(dump) as opened:
        _saved(plots.stats(opened, list(globs), eval_index, statistic, title),
               _plot_output(output, f"{dump.stem}-stats"))


@plot.command("hist")
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@click.option("--eval", "eval_index", type=int, default=None)
@click.option("--occurrence", default=0, show_default=True)
@click.option("--log", is_flag=True, help="Logarithmic counts.")
@_plot_common
def plot_hist(dump: Path, tensor: str, eval_index: int | None, occurrence: int, log: bool, output: Path | None,
              title: str | None) -> None:
    """Value histogram of one tensor, NaN/Inf counts in the legend."""
    from inspector import plots

    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        _saved(plots.histogram(opened, entry, log, title=title), _plot_output(output, f"{dump.stem}-hist"))


@plot.command("heatmap")
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@click.option("--eval", "eval_index", type=int, default=None)
@click.option("--occurrence", default=0, show_default=True)
@click.option("--slice", "slicing", default=None,
              help="numpy-order index per axis leaving two ranges, e.g. '0,:,:' (docs/plots.md).")
@_plot_common
def plot_heatmap(dump: Path, tensor: str, eval_index: int | None, occurrence: int, slicing: str | None,
                 output: Path | None, title: str | None) -> None:
    """2-D view of a tensor (e.g. tokens × channels) with robust colour limits."""
    from inspector import plots

    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        _saved(plots.heatmap(opened, entry, slicing, title), _plot_output(output, f"{dump.stem}-heatmap"))


@plot.command("diff")
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path))
@click.argument("tensor", required=False)
@click.option("-t", "--tensor-glob", "globs", multiple=True, help="Tensors to compare (A names).")
@tolerance_option
@click.option("--eval", "eval_index", type=int, default=None)
@click.option("--occurrence", default=0, show_default=True)
@click.option("--slice", "slicing", default=None)
@_plot_common
def plot_diff(dump_a: Path, dump_b: Path, tensor: str | None, globs: tuple[str, ...], preset_name: str,
              eval_index: int | None, occurrence: int, slicing: str | None, output: Path | None,
              title: str | None) -> None:
    """NMSE and max |a-b| along execution order with the first divergence; with TENSOR, B - A as a heatmap."""
    from inspector import plots
    from inspector.tolerance import preset

    if tensor:
        with open_dump(dump_a) as a, open_dump(dump_b) as b:
            result = plots.element_difference(a, b, tensor, eval_index, occurrence, slicing, title)
        _saved(result, _plot_output(output, f"{dump_a.stem}-vs-{dump_b.stem}-{tensor}"))
        return
    result = plots.difference_along_execution(dump_a, dump_b, preset(preset_name), list(globs) or None, title)
    _saved(result, _plot_output(output, f"{dump_a.stem}-vs-{dump_b.stem}"))


@plot.command("image")
@click.argument("dumps", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", default="inp_raw", show_default=True)
@_plot_common
def plot_image(dumps: tuple[Path, ...], name: str, output: Path | None, title: str | None) -> None:
    """inp_raw tiles rendered back to RGB in their grid; two dumps side by side with a difference panel."""
    from inspector import plots

    if len(dumps) > 2:
        raise InspectorError("plot image takes one or two dumps")
    opened = [open_dump(d) for d in dumps]
    try:
        result = plots.image(opened, name, title)
    finally:
        for dump in opened:
            dump.close()
    _saved(result, _plot_output(output, "-vs-".join(d.stem for d in dumps) + "-image"))


@plot.command("sweep")
@click.argument("summary", type=click.Path(path_type=Path))
@click.option("--per-layer", is_flag=True)
@_plot_common
def plot_sweep(summary: Path, per_layer: bool, output: Path | None, title: str | None) -> None:
    """The sweep matrix (tensors or layers × configurations) as an NMSE heatmap with buffer placement."""
    from inspector import plots

    if summary.is_dir():
        summary = summary / "summary.json"
    if not summary.is_file():
        raise InspectorError(f"{summary}: no such sweep summary")
    try:
        document = json.loads(summary.read_text())
        result = plots.sweep(document, per_layer, title)
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise InspectorError(f"{summary} is not a sweep summary: {error}") from None
    _saved(result, _plot_output(output, f"{summary.parent.name}-sweep"))


@main.command()
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="HTML file (default: dumps/report-<A>.html).")
@tolerance_option
def report(dump_a: Path, dump_b: Path | None, output: Path | None, preset_name: str) -> None:
    """Write one self-contained HTML report of run A, or of A compared with B (opens offline)."""
    from inspector.report import write_report
    from inspector.tolerance import preset

    output = output or Path(DEFAULT_DUMP_DIR) / f"report-{dump_a.stem}{'-vs-' + dump_b.stem if dump_b else ''}.html"
    path = write_report(dump_a, dump_b, output, preset(preset_name))
    click.echo(f"wrote {path}", err=True)
