"""Pictures of runs: the ``plot`` group (matplotlib, headless) and the HTML ``report``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from inspector.cli import options
from inspector.constants import DEFAULT_DUMP_DIR
from inspector.errors import InspectorError

PLOT_DIR = Path(DEFAULT_DUMP_DIR) / "plots"

figure_options = options.apply(
    options.output_file("Image file: .png, .svg or .pdf (default: dumps/plots/...)."),
    click.option("--title", default=None, help="Figure title."),
)
slicing = click.option("--slice", "slicing", default=None,
                       help="numpy-order index per axis leaving two ranges, e.g. '0,:,:' (docs/plots.md).")


def _save(plot, output: Path | None, stem: str, inputs: tuple[Path, ...]) -> None:
    """Write the figure; ``inputs`` (the files the plot read) are never overwritten."""
    path = plot.save(output or PLOT_DIR / f"{stem}.png", inputs)
    click.echo(f"wrote {path}", err=True)


@click.group()
def plot() -> None:
    """Plot activations, differences, mllama tiles and sweeps (matplotlib, headless)."""


@plot.command("stats")
@click.argument("dump", type=click.Path(path_type=Path))
@options.tensor_globs("Tensors to plot (default: all of the evaluation).", keep_t=True)
@click.option("--eval", "eval_index", default=0, show_default=True)
@click.option("--stat", "statistic", default=None, help="Only this statistic: mean, std, min, max, absmax, rms.")
@figure_options
def plot_stats(dump: Path, globs: tuple[str, ...], eval_index: int, statistic: str | None, output: Path | None,
               title: str | None) -> None:
    """Per-layer mean, std, min, max, abs-max and RMS: where activations blow up."""
    from inspector.dump.reader import open_dump
    from inspector.present import plots

    with open_dump(dump) as opened:
        _save(plots.stats(opened, list(globs), eval_index, statistic, title), output, f"{dump.stem}-stats", (dump,))


@plot.command("hist")
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@options.eval_index
@options.occurrence
@click.option("--log", is_flag=True, help="Logarithmic counts.")
@figure_options
def plot_hist(dump: Path, tensor: str, eval_index: int | None, occurrence: int, log: bool, output: Path | None,
              title: str | None) -> None:
    """Value histogram of one tensor, NaN/Inf counts in the legend."""
    from inspector.dump.reader import open_dump
    from inspector.present import plots

    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        _save(plots.histogram(opened, entry, log, title=title), output, f"{dump.stem}-hist", (dump,))


@plot.command("heatmap")
@click.argument("dump", type=click.Path(path_type=Path))
@click.argument("tensor")
@options.eval_index
@options.occurrence
@slicing
@figure_options
def plot_heatmap(dump: Path, tensor: str, eval_index: int | None, occurrence: int, slicing: str | None,
                 output: Path | None, title: str | None) -> None:
    """2-D view of a tensor (e.g. tokens × channels) with robust colour limits."""
    from inspector.dump.reader import open_dump
    from inspector.present import plots

    with open_dump(dump) as opened:
        entry = opened.find(tensor, eval_index, occurrence)
        _save(plots.heatmap(opened, entry, slicing, title), output, f"{dump.stem}-heatmap", (dump,))


@plot.command("diff")
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path))
@click.argument("tensor", required=False)
@click.option("-T", "--tensor", "-t", "--tensor-glob", "globs", multiple=True, metavar="GLOB",
              help="Tensors to compare (A names).")
@options.tolerance_for_runs
@options.tolerance_rules
@options.eval_index
@options.occurrence
@slicing
@figure_options
def plot_diff(dump_a: Path, dump_b: Path, tensor: str | None, globs: tuple[str, ...], preset_name: str | None,
              rules_spec: str | None, eval_index: int | None, occurrence: int, slicing: str | None,
              output: Path | None, title: str | None) -> None:
    """NMSE and max |a-b| along execution order with the first divergence; with TENSOR, B - A as a heatmap."""
    from inspector.compare.rules import load_rules
    from inspector.compare.tolerance import ToleranceRequest
    from inspector.dump.reader import open_dump
    from inspector.present import plots

    if tensor:
        with open_dump(dump_a) as a, open_dump(dump_b) as b:
            result = plots.element_difference(a, b, tensor, eval_index, occurrence, slicing, title)
        _save(result, output, f"{dump_a.stem}-vs-{dump_b.stem}-{tensor}", (dump_a, dump_b))
        return
    rules = load_rules(rules_spec) if rules_spec is not None else None
    result = plots.difference_along_execution(dump_a, dump_b, ToleranceRequest(preset_name), list(globs) or None,
                                              title, rules)
    _save(result, output, f"{dump_a.stem}-vs-{dump_b.stem}", (dump_a, dump_b))


@plot.command("image")
@click.argument("dumps", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", default="inp_raw", show_default=True)
@figure_options
def plot_image(dumps: tuple[Path, ...], name: str, output: Path | None, title: str | None) -> None:
    """inp_raw tiles rendered back to RGB in their grid; two dumps side by side with a difference panel."""
    from inspector.dump.reader import open_dump
    from inspector.present import plots

    if len(dumps) > 2:
        raise InspectorError("plot image takes one or two dumps")
    opened = [open_dump(d) for d in dumps]
    try:
        result = plots.image(opened, name, title)
    finally:
        for dump in opened:
            dump.close()
    _save(result, output, "-vs-".join(d.stem for d in dumps) + "-image", dumps)


@plot.command("sweep")
@click.argument("summary", type=click.Path(path_type=Path))
@click.option("--per-layer", is_flag=True)
@figure_options
def plot_sweep(summary: Path, per_layer: bool, output: Path | None, title: str | None) -> None:
    """The sweep matrix (tensors or layers × configurations) as an NMSE heatmap with buffer placement."""
    from inspector.present import plots

    if summary.is_dir():
        summary = summary / "summary.json"
    if not summary.is_file():
        raise InspectorError(f"{summary}: no such sweep summary")
    try:
        document = json.loads(summary.read_text())
        result = plots.sweep(document, per_layer, title)
    except (ValueError, KeyError, TypeError, RecursionError) as error:
        raise InspectorError(f"{summary} is not a sweep summary: {error}") from None
    _save(result, output, f"{summary.parent.name}-sweep", (summary,))


@click.command()
@click.argument("dump_a", type=click.Path(path_type=Path))
@click.argument("dump_b", type=click.Path(path_type=Path), required=False)
@options.output_file("HTML file (default: dumps/report-<A>.html).")
@options.tolerance_for_runs
@options.tolerance_rules
@options.reference_run
def report(dump_a: Path, dump_b: Path | None, output: Path | None, preset_name: str | None, rules_spec: str | None,
           reference: Path | None) -> None:
    """Write one self-contained HTML report of run A, or of A compared with B (opens offline).

    A comparison plots the error growth layer by layer with the tolerance
    band: of B against A (``report A R`` when B is a reference), or, with
    --reference R, of A and of B against R.
    """
    from inspector.compare.rules import load_rules
    from inspector.compare.tolerance import ToleranceRequest
    from inspector.present.report import write_report

    rules = load_rules(rules_spec) if rules_spec is not None else None
    output = output or Path(DEFAULT_DUMP_DIR) / f"report-{dump_a.stem}{'-vs-' + dump_b.stem if dump_b else ''}.html"
    path = write_report(dump_a, dump_b, output, ToleranceRequest(preset_name), rules, reference)
    click.echo(f"wrote {path}", err=True)


COMMANDS = (plot, report)
