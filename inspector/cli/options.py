"""Options shared by several commands, declared once (llama.cpp's own are in ``llama_options``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from inspector.compare.tolerance import DEFAULT_PRESET, PRESETS
from inspector.constants import MLLAMA_IMAGE_LOADERS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Tensor selection.  llama.cpp's -t is threads, so the short option here is -T;
# commands that do not run a model also keep the older -t.
TENSOR_FLAGS = ("-T", "--tensor")


def tensor_globs(help: str, *, keep_t: bool = False) -> Decorator:
    """``-T/--tensor GLOB`` (repeatable), into ``globs``."""
    flags = (*TENSOR_FLAGS, "-t") if keep_t else TENSOR_FLAGS
    return click.option(*flags, "globs", multiple=True, metavar="GLOB", help=help)


def tensor_selection(default_help: str) -> Decorator:
    """``-T/--tensor GLOB`` and llama-debug's ``--tensor-filter REGEX`` (older: ``--regex``), both repeatable."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function = click.option("--tensor-filter", "--regex", "regexes", multiple=True, metavar="REGEX",
                                help="Regular expression searched in tensor names (repeatable).")(function)
        return tensor_globs(f"Glob over tensor names (repeatable); {default_help}")(function)
    return decorate


def apply(*decorators: Decorator) -> Decorator:
    """Several option decorators as one, in reading order."""
    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function
    return decorate


tolerance = click.option(
    "--tolerance", "preset_name", type=click.Choice(list(PRESETS)), default=DEFAULT_PRESET, show_default=True,
    help="Threshold preset (docs/compare.md).")
# compare, report and plot diff: without --tolerance the preset follows the two runs' recorded types.
tolerance_for_runs = click.option(
    "--tolerance", "preset_name", type=click.Choice(list(PRESETS)), default=None,
    help="Threshold preset (docs/compare.md). Default: chosen from the runs' weight and KV cache types, flash "
         "attention and batch splits, and said why (docs/compare.md, Default tolerance).")
# compare, report and plot diff: per-tensor thresholds (inspector/compare/rules.py).
tolerance_rules = click.option(
    "--rules", "rules_spec", default=None, metavar="FILE|reference",
    help="TOML tolerance rules: tensor-name globs with thresholds, the first match judging a tensor and the preset "
         "the rest; 'reference' names the shipped rules for a ggml run against a float reference "
         "(docs/compare.md, Tolerance rules).")
reference_run = click.option(
    "--reference", "reference", type=click.Path(path_type=Path), default=None, metavar="R",
    help="A reference run (a float64 capture-hf dump, say): each tensor where A and B differ says which of them is "
         "closer to R (docs/compare.md, Reference run).")
image_loader = click.option(
    "--loader", type=click.Choice(MLLAMA_IMAGE_LOADERS), default=MLLAMA_IMAGE_LOADERS[0], show_default=True,
    help="'hf-path' mimics transformers' load_image (EXIF rotation, alpha dropped).")
overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
as_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
eval_index = click.option("--eval", "eval_index", type=int, default=None,
                          help="Evaluation index (default: the first holding the tensor).")
occurrence = click.option("--occurrence", default=0, show_default=True,
                          help="Which same-named tensor of the evaluation.")


def output_file(help: str, *, required: bool = False) -> Decorator:
    return click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        required=required, help=help)


# How a capture stores tensors: capture and exec alike.
storage = apply(
    click.option("--stats-only", is_flag=True,
                 help="Store per tensor its statistics, digest and first values instead of the data."),
    click.option("--compression", default="none", show_default=True, metavar="none|lzf|gzip[:LEVEL]",
                 help="Compression of the tensor stream (docs/performance.md has the trade-off)."),
)


# How a capture takes a graph's tensors (inspector/capture/mode.py): exec and mllama's runners.
capture_mode = apply(
    click.option("--mode", "mode_name", type=click.Choice(["unsplit", "callback"]), default="unsplit",
                 show_default=True,
                 help="unsplit: flag the selected tensors as graph outputs when the scheduler plans its buffers, "
                      "compute the graph in one piece and copy after; callback: ask for them node by node (the "
                      "scheduler splits the graph at each). unsplit falls back to callback, and the dump says "
                      "why, past --unsplit-max-mib or where it cannot flag the plan."),
    click.option("--unsplit-max-mib", type=click.IntRange(0, 1 << 40), default=4096, show_default=True,
                 help="The most compute-buffer memory the tensors kept for an unsplit compute may take."),
)
