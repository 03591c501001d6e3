"""Commands that read dumps and files: ``ls``, ``show``, ``export``, ``gguf``, ``import-raw``, ``import``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inspector.cli import options
from inspector.cli.running import echo_progress, stop_on_sigterm
from inspector.errors import InspectorError

if TYPE_CHECKING:
    from inspector.dump.reader import Dump


@click.command("ls")
@click.argument("dump", type=click.Path(path_type=Path))
@options.tensor_globs("Only names matching this glob (repeatable).", keep_t=True)
@click.option("--config", "show_config", is_flag=True,
              help="Print the run configuration and the command line that reproduces it, not the tensors.")
@click.option("--evals", "show_evals", is_flag=True,
              help="Print one line per evaluation, what it computed, not the tensors: its token ids (or its input "
                   "embeddings' digest), positions and output rows.")
@options.as_json
def list_tensors(dump: Path, globs: tuple[str, ...], show_config: bool, show_evals: bool, as_json: bool) -> None:
    """List the tensors in a dump, in execution order, with their statistics.

    Columns: evaluation, node index, name (#k for occurrence k > 0), op,
    type, shape, buffer, min, max, mean, std, NaN and Inf counts; only the
    index is read. An incomplete dump and tensors that were not captured are
    reported on stderr first. --config prints the run's configuration under
    llama.cpp's names and the ggml-inspector command line that reproduces it.
    --evals prints what each evaluation computed, as every runner records it:
    index and kind, where the inputs were learnt (runner or graph), the
    number of tokens, the first token ids (or the input embeddings' digest)
    and positions, and how many rows produce outputs; with --json, every value.
    """
    from inspector.dump import report as store_report
    from inspector.dump.reader import open_dump

    if show_config and show_evals:
        raise click.UsageError("--config and --evals print different listings: give one")
    with open_dump(dump) as opened:
        if show_evals:
            _echo_evaluations(opened, as_json)
            return
        if show_config:
            _echo_config(opened, as_json)
            return
        entries = opened.entries(list(globs))
        if as_json:
            click.echo(json.dumps(store_report.listing_json(opened, entries), indent=1))
            return
        for note in store_report.notes(opened):
            click.echo(note, err=True)
        click.echo(store_report.listing(entries, {e["index"]: e["kind"] for e in opened.evaluations}))
        click.echo(f"{len(entries)} tensors", err=True)


def _echo_evaluations(opened: Dump, as_json: bool) -> None:
    from inspector.dump import report as store_report

    if as_json:
        click.echo(json.dumps({"path": str(opened.path), "evaluations": opened.evaluations}, indent=1, default=str))
    else:
        click.echo(store_report.evaluations_listing(opened.evaluations))


def _echo_config(opened: Dump, as_json: bool) -> None:
    from inspector.cli.llama_options import command_line
    from inspector.dump import report as store_report

    runner = opened.config.get("runner")
    line = command_line(opened.config) if runner == "llama" else None
    if as_json:
        click.echo(json.dumps({"config": opened.config, "result": opened.result, "command_line": line}, indent=1,
                              default=str))
    else:
        click.echo(store_report.configuration(opened, line))


@click.command()
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@options.eval_index
@options.occurrence
@click.option("-n", "--values", "count", type=click.IntRange(min=0), default=6, show_default=True,
              help="Leading/trailing values to print (0: none).")
@options.as_json
def show(dump: Path, tensor: str, eval_index: int | None, occurrence: int, count: int, as_json: bool) -> None:
    """Show one tensor's metadata, statistics and leading/trailing values.

    Metadata: op, ggml type and storage, shape and ne, buffer, sources, view
    source; then the statistics, the sum, and the first and last values in
    memory order, like llama.cpp's llama-eval-callback but from the file.
    """
    from inspector.dump import report as store_report
    from inspector.dump.reader import open_dump

    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        values = opened.preview(entry, count)  # the edge values and the sum, read in pieces
        metadata = opened.metadata(entry)
    if as_json:
        click.echo(json.dumps(store_report.tensor_json(entry, values, metadata), indent=1, default=str))
    else:
        click.echo(store_report.tensor_text(entry, values, metadata))


@click.command()
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@options.output_file("Destination .npy file.", required=True)
@options.eval_index
@options.occurrence
@options.overwrite
def export(dump: Path, tensor: str, output: Path, eval_index: int | None, occurrence: int, overwrite: bool) -> None:
    """Write one tensor to a .npy file (numpy shape = ggml ne reversed), copied in pieces of 4 MiB.

    A KV cache (``cache_k_l0``), which dumps never store whole, is rebuilt
    from the rows its writes stored, as of --eval (default: the last).
    """
    import numpy as np

    from inspector.dump.kv_cache import rebuild_cache
    from inspector.dump.reader import open_dump
    from inspector.files.outputs import atomic_output, check_output
    from inspector.formatting import printable, shape_text
    from inspector.identity import kv_cache_of

    if output.suffix != ".npy":
        raise InspectorError(f"{output}: export writes .npy files; give a name ending in .npy")
    check_output(output, overwrite=overwrite, inputs=[dump])
    with open_dump(dump) as opened:
        if kv_cache_of(tensor) == tensor and not opened.entries([tensor]):
            # A KV cache is never stored whole: rebuilt from the rows its writes stored, as of that evaluation.
            last = eval_index if eval_index is not None else max(e["index"] for e in opened.evaluations)
            values = rebuild_cache(opened, tensor, last)
            with atomic_output(output, overwrite=overwrite, inputs=[dump]) as temporary:
                np.save(temporary, values)
            click.echo(f"wrote {printable(tensor)} as of evaluation {last} {shape_text(values.shape)} "
                       f"{values.dtype} -> {output}", err=True)
            return
        entry = opened.find(tensor, eval_index, occurrence)
        opened.require_values(entry)
        with atomic_output(output, overwrite=overwrite, inputs=[dump]) as temporary:
            opened.export_npy(entry, temporary)
    click.echo(f"wrote {printable(tensor)} {shape_text(entry.shape)} {np.dtype(entry.dtype)} -> {output}", err=True)


@click.command("gguf")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--tensors", "with_tensors", is_flag=True, help="Also list the tensors.")
@options.as_json
def gguf_command(model: Path, with_tensors: bool, as_json: bool) -> None:
    """Show a GGUF file's metadata (and tensor table) without loading it into llama.cpp.

    Arrays longer than 16 items (a vocabulary) show as [262144 items]: the
    header is parsed by ggml's own C parser (the one llama.cpp loads with)
    and no array is materialised in Python.
    """
    from inspector.gguf import report as gguf_report
    from inspector.gguf.header import read_header

    header = read_header(model)
    if as_json:
        click.echo(json.dumps(gguf_report.header_json(str(model), header, with_tensors), indent=1, default=str))
        return
    click.echo(gguf_report.header_text(header, with_tensors))
    click.echo(f"{len(header.tensors)} tensors", err=True)


@click.command("import-raw")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Tensor name to give it (e.g. inp_raw).")
@click.option("--dtype", default="f32", show_default=True, help="f32, f16, f64, i8, i16, i32, i64 (raw files).")
@click.option("--ne", default=None, help="ggml dimensions, fastest first, e.g. 560,560,3,4.")
@click.option("--shape", default=None, help="numpy shape, slowest first, e.g. 4,3,560,560.")
@options.output_file("Dump file to write.", required=True)
@options.overwrite
def import_raw(file: Path, name: str, dtype: str, ne: str | None, shape: str | None, output: Path,
               overwrite: bool) -> None:
    """Import a raw tensor file (fwrite of a tensor's data) or a .npy as a one-tensor dump."""
    from inspector.dump.raw_import import parse_dims, read_npy, read_raw, write_arrays
    from inspector.files.outputs import atomic_output, check_output
    from inspector.formatting import printable, shape_text

    check_output(output, overwrite=overwrite, inputs=[file])
    if file.suffix == ".npy":
        if ne or shape:
            raise InspectorError(".npy files carry their own shape; drop --ne/--shape")
        array = read_npy(file)
    else:
        if bool(ne) == bool(shape):
            raise InspectorError("give the size of a raw file with exactly one of --ne or --shape")
        dims = tuple(reversed(parse_dims(ne))) if ne else parse_dims(shape)
        array = read_raw(file, dtype, dims)
    with atomic_output(output, overwrite=overwrite, inputs=[file]) as temporary:
        write_arrays(temporary, {name: array}, "import", {"source": str(file)},
                     {"runner": "import", "source": str(file), "dtype": str(array.dtype), "shape": list(array.shape)},
                     overwrite=True, op="IMPORT")
    click.echo(f"imported {printable(name)} {shape_text(array.shape)} {array.dtype} -> {output}", err=True)


@click.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@options.output_file("Dump file to write.", required=True)
@options.overwrite
def import_streams(folder: Path, output: Path, overwrite: bool) -> None:
    """Turn a dump folder the native hook wrote (GGML_INSPECTOR_DIR) into one dump.

    Without exec's socket, the hook writes each process's frames to
    FOLDER/<pid>.frames: a program run with GGML_INSPECTOR_DIR set, and one
    with the hook compiled in (inspector/native/README.md, link-time use). Every
    stream is read like exec reads its sockets, one process after the
    other. A stream cut short (the program crashed) keeps every whole frame
    and leaves the dump marked incomplete, with the reason; a file that is
    not a stream is refused before anything is written.
    """
    from inspector.formatting import human_bytes, printable
    from inspector.native.stream_import import import_streams as run_import

    stop_on_sigterm()
    summary = run_import(folder, output, overwrite=overwrite, progress=echo_progress)
    for process in summary.processes:
        click.echo(f"process {process.pid} ({printable(process.argv0)}): {process.schedulers} schedulers, "
                   f"{process.computes} graph computations, {process.tensors} tensors", err=True)
    for skip in summary.skipped:
        click.echo(f"note: {printable(skip.name)} (eval {skip.eval_index}) was not captured: "
                   f"{printable(skip.reason)}", err=True)
    if summary.incomplete_reason:
        click.echo(f"warning: the dump is incomplete: {printable(summary.incomplete_reason)}", err=True)
    click.echo(f"imported {summary.tensors} tensors ({human_bytes(summary.bytes)}) from {summary.evaluations} "
               f"evaluations in {summary.seconds:.2f} s -> {summary.path}", err=True)


COMMANDS = (list_tensors, show, export, gguf_command, import_raw, import_streams)
