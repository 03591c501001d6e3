"""Commands that compare runs: ``compare`` (two dumps) and ``sweep`` (many configurations of one model)."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inspector.cli import options
from inspector.cli.llama_options import Threads, llama_cpp_options
from inspector.cli.running import echo_progress, stop_on_sigterm
from inspector.constants import DEFAULT_DUMP_DIR
from inspector.errors import InspectorError

if TYPE_CHECKING:
    from inspector.compare.tolerance import Tolerance
    from inspector.llamacpp.config import LlamaRunConfig


def parse_maps(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--map NAME_A=NAME_B`` pairs."""
    mapping = {}
    for pair in pairs:
        name_a, sep, name_b = pair.partition("=")
        if not sep or not name_a or not name_b:
            raise InspectorError(f"--map takes NAME_A=NAME_B, not {pair!r}")
        mapping[name_a] = name_b
    return mapping


@click.command()
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path))
@options.tensor_globs("Only tensors whose A name matches (repeatable).", keep_t=True)
@options.tolerance_for_runs
@click.option("--atol", type=float, default=None, help="Absolute tolerance, element-wise.")
@click.option("--rtol", type=float, default=None, help="Relative tolerance, element-wise.")
@click.option("--nmse", type=float, default=None, help="Maximum normalised mean squared error.")
@click.option("--map", "maps", multiple=True, metavar="NAME_A=NAME_B", help="Pair differently named tensors.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (docs/compare.md).")
@click.option("--csv", "as_csv", is_flag=True, help="One CSV row per tensor.")
@click.option("--all", "show_all", is_flag=True, help="List identical and incomparable tensors too.")
@click.option("--past-inputs", is_flag=True,
              help="When the runs were fed different inputs, compare past the first difference too.")
@options.tolerance_rules
@options.reference_run
def compare(dump_a: Path, dump_b: Path, globs: tuple[str, ...], preset_name: str | None, atol: float | None,
            rtol: float | None, nmse: float | None, maps: tuple[str, ...], as_json: bool, as_csv: bool,
            show_all: bool, past_inputs: bool, rules_spec: str | None, reference: Path | None) -> None:
    """Compare run B against reference run A tensor by tensor; report the first divergence.

    Evaluations are first aligned by the tokens and positions they computed,
    so a warm-up in one run is named once instead of shifting every pair.
    Exit code 0 when every compared tensor is within tolerance, 1 when any
    diverged or is missing or the runs' inputs differ, 2 on error.  With
    --reference R, each tensor where A and B differ says which is closer to R.
    """
    import json

    from inspector.compare import report as compare_report
    from inspector.compare.reference import attach_reference
    from inspector.compare.rules import load_rules
    from inspector.compare.runs import compare_dumps
    from inspector.compare.tolerance import ToleranceRequest

    if as_json and as_csv:
        raise InspectorError("choose one of --json and --csv")
    rules = load_rules(rules_spec) if rules_spec is not None else None
    request = ToleranceRequest(preset_name, nmse, atol, rtol)
    comparison = compare_dumps(dump_a, dump_b, request, list(globs) or None, parse_maps(maps), past_inputs, rules)
    if reference is not None:
        attach_reference(comparison, reference, request, list(globs) or None, rules)
    if as_json:
        click.echo(json.dumps(compare_report.to_json(comparison), indent=1))
    elif as_csv:
        click.echo(compare_report.to_csv(comparison), nl=False)
    else:
        click.echo(compare_report.render_text(comparison, show_all, colour=sys.stdout.isatty()))
    sys.exit(0 if comparison.passed else 1)


@click.command()
@llama_cpp_options(exclude=("n_gpu_layers",))
@click.option("-ngl", "--gpu-layers", "--n-gpu-layers", "layers", default="0,all", show_default=True,
              metavar="N,N,...", help="Offload counts to sweep, as llama-bench's list ('all': every layer).")
@click.option("--vary", "varies", multiple=True, metavar="SETTING=V1,V2",
              help="Also vary flash_attn, threads, type_k, type_v or op_offload (not n_batch/n_ubatch: they "
                   "change the evaluations, so runs could not be paired).")
@options.tensor_selection("default: l_out-* and result_output.")
@options.tolerance
@click.option("--per-layer", is_flag=True, help="Aggregate the matrix per layer (worst status, largest NMSE).")
@click.option("--bisect", is_flag=True,
              help="With -ngl LOW..HIGH: binary-search the smallest count whose logits diverge from LOW's "
                   "(logit-only captures), then capture that pair fully and report its origins.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the dumps and summary.json (default: dumps/sweep-<model>-<time>/).")
@options.overwrite
def sweep(run_config: LlamaRunConfig, layers: str, varies: tuple[str, ...], globs: tuple[str, ...],
          regexes: tuple[str, ...], preset_name: str, per_layer: bool, bisect: bool, output_dir: Path | None,
          overwrite: bool) -> None:
    """Capture a model under every configuration and compare each with the first.

    Takes llama.cpp's options for the run; -ngl takes a list, as
    llama-bench's. --vary adds settings to the cartesian product
    (flash_attn: on/off/auto, threads: >= 1, type_k/type_v: a KV cache
    type, op_offload: true/false/on/off/1/0/yes/no); every value is checked
    before the first capture. n_batch and n_ubatch cannot be varied: they
    decide how the prompt is split into evaluations, so the runs' tensors
    could not be paired. Without --rpc and without a GPU, a loopback RPC
    server stands in for one (stopped afterwards, also on Ctrl-C or error);
    --rpc none keeps every run on the CPU.

    The folder holds a dump per configuration and summary.json: reference
    (label), tolerance, rpc (endpoints), configurations (label, settings,
    dump, counts, first_divergence), placement (per configuration: layer to
    the buffers its tensors lived in), tensors (per tensor: eval, name,
    occurrence, layer, reference buffer, and per configuration its status,
    NMSE and buffer) and passed. Exit code 0 when every run matches the
    first, 1 otherwise.

    --bisect -ngl LOW..HIGH answers "30 layers fine, 36 wrong": it captures
    only result_output at LOW and at the counts a binary search picks
    (ceil(log2(HIGH - LOW + 1)) + 1 logit-only captures), finds the smallest
    count whose logits leave the tolerance, captures that count and the one
    below fully (or the -T selection), compares them and prints their first
    origin and first divergence; bisect.json in the folder holds the probes,
    the boundary and the origins. Exit code 1 when a boundary was found.
    """
    from inspector.capture.selection import Selection
    from inspector.compare.tolerance import preset
    from inspector.sweep.run import parse_layers, parse_vary, run_sweep
    from inspector.sweep.summary import render_matrix

    if bisect:
        _bisect(run_config, layers, varies, globs, regexes, preset(preset_name), output_dir, overwrite)
        return
    counts = parse_layers(layers)
    variations = [parse_vary(v) for v in varies]
    run_config, auto_loopback = _rpc_choice(run_config)
    selection = Selection(globs=globs or (() if regexes else ("l_out-*", "result_output")), regexes=regexes)
    output_dir = output_dir or _default_folder("sweep", run_config)
    stop_on_sigterm()
    result = run_sweep(run_config, counts, variations, selection, output_dir, preset(preset_name),
                       auto_loopback=auto_loopback, overwrite=overwrite, progress=echo_progress)
    click.echo(render_matrix(result.summary, per_layer))
    click.echo(f"summary: {result.summary_path}", err=True)
    sys.exit(0 if result.summary["passed"] else 1)


def _rpc_choice(run_config: LlamaRunConfig) -> tuple[LlamaRunConfig, bool]:
    """``--rpc none`` keeps every run on the CPU; none given (or ``auto``) may start a loopback server."""
    auto_loopback = run_config.rpc != ["none"]
    if run_config.rpc in (["none"], ["auto"]):
        run_config = replace(run_config, rpc=[])
    return run_config, auto_loopback


def _default_folder(kind: str, run_config: LlamaRunConfig) -> Path:
    return Path(DEFAULT_DUMP_DIR) / f"{kind}-{Path(run_config.model).stem}-{datetime.now():%Y%m%d-%H%M%S}"


def _bisect(run_config: LlamaRunConfig, layers: str, varies: tuple[str, ...], globs: tuple[str, ...],
            regexes: tuple[str, ...], tolerance: Tolerance, output_dir: Path | None, overwrite: bool) -> None:
    from inspector.capture.selection import Selection
    from inspector.compare.report import describe_origin
    from inspector.formatting import printable
    from inspector.sweep.bisect import run_bisect

    if varies:
        raise InspectorError("--bisect searches the offload count only: drop --vary")
    run_config, auto_loopback = _rpc_choice(run_config)
    output_dir = output_dir or _default_folder("bisect", run_config)
    stop_on_sigterm()
    result = run_bisect(run_config, layers, Selection(globs=globs, regexes=regexes), output_dir, tolerance,
                        auto_loopback=auto_loopback, overwrite=overwrite, progress=echo_progress)
    for probe in result.probes:
        click.echo(f"-ngl {probe.n_gpu_layers}: {'diverged' if probe.diverged else 'within tolerance'}")
    if result.boundary is None:
        click.echo(f"no boundary: the logits of -ngl {result.low}..{result.high} all stay within tolerance "
                   f"({result.logit_captures} logit-only captures)")
    else:
        click.echo(f"boundary: -ngl {result.boundary} is the first count whose logits diverge from -ngl "
                   f"{result.low}'s ({result.logit_captures} logit-only captures)")
        comparison = result.comparison
        if comparison is not None and comparison.origins:
            click.echo(f"first origin between -ngl {result.boundary - 1} and {result.boundary}: "
                       + describe_origin(comparison.origins[0]))
        if comparison is not None and comparison.first_divergence is not None:
            row = comparison.rows[comparison.first_divergence]
            click.echo(f"first divergence: {printable(row.name)} (eval {row.evaluation_label}, node {row.node_a})")
    click.echo(f"summary: {result.summary_path}", err=True)
    sys.exit(1 if result.boundary is not None else 0)


@click.command()
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path))
@click.option("--eval", "eval_index", type=int, required=True, help="The evaluation of the node.")
@click.option("--node", type=int, required=True, help="The node's index in run A (compare's origins name it).")
@click.option("-t", "--threads", type=Threads(), default=1, show_default=True,
              help="CPU threads for the replayed op (0 or less: every core).")
@options.as_json
def replay(dump_a: Path, dump_b: Path, eval_index: int, node: int, threads: int, as_json: bool) -> None:
    """Recompute one node of run A alone, as run A placed it and as run B placed it, on A's inputs.

    The op is rebuilt from the capture (op, op_params, source types, shapes
    and strides) and fed run A's captured inputs and the model file's
    weights, each in the buffer type its run used (the CPU's CPU_REPACK,
    an RPC server's buffer, CPU memory; a loopback RPC server stands in for
    the run's). reproduces_a / reproduces_b: each replay gives that run's
    captured output bit for bit; op_differs: the two placements disagree on
    identical inputs, so the kernel is the cause, not the data. Views
    compute nothing and are refused in one line, as are inputs that were not
    captured and are not weights. Exit code 1 when op_differs.
    """
    import json

    from inspector.compare.replay import replay as replay_node
    from inspector.formatting import printable

    result = replay_node(dump_a, dump_b, eval_index, node, threads)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps(asdict(result), indent=1))
    else:
        verdict = ("the op differs between the placements on identical inputs: the kernel, not the data"
                   if result.op_differs else
                   "the placements agree on identical inputs: the difference came with the inputs or weights")
        click.echo(f"{printable(result.name)} (eval {result.eval_index}, node {result.node}, {printable(result.op)})")
        for side, placed, reproduces in (("A", result.placement_a, result.reproduces_a),
                                         ("B", result.placement_b, result.reproduces_b)):
            where = ", ".join(f"{printable(name)} in {printable(buffer)}" for name, buffer in placed.items()
                              if name != "node")
            click.echo(f"  as {side} placed it (on {printable(placed['node'])}; {where}): "
                       f"{'reproduces' if reproduces else 'does not reproduce'} run {side}'s output")
        click.echo(f"  {verdict}" + (f" (max |a-b| {result.max_abs_diff:g})" if result.op_differs else ""))
    sys.exit(1 if result.op_differs else 0)


COMMANDS = (compare, sweep, replay)
