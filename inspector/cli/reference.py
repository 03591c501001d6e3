"""``capture-hf``: the reference side of a port's comparison, a transformers checkpoint under llama.cpp's names."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.cli import options
from inspector.cli.llama_options import CommaList, read_prompt_file
from inspector.cli.running import default_output, echo_progress, stop_on_sigterm
from inspector.errors import InspectorError

DTYPES = ("float32", "float64", "bfloat16")


@click.command("capture-hf")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("-p", "--prompt", default=None, help="The prompt, tokenized by the checkpoint's tokenizer.")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Read the prompt from FILE (one trailing newline dropped).")
@click.option("--token-ids", type=CommaList("ID,ID,...", int), metavar="ID,ID,...",
              help="Exact input tokens (the tokenizer is not run): the ids a ggml run recorded.")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), metavar="IMG", default=None,
              help="The image of a vision model (mllama), preprocessed by transformers' own image processor; the "
                   "prompt holds its image token.")
@options.tensor_selection("neither this nor --tensor-filter: every tensor the map names.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Precision of the run; float64 makes a high-precision reference.")
@click.option("--map-file", "map_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              metavar="FILE", help="A name map (TOML, docs/reference.md) adding or replacing an architecture.")
@options.output_file("Dump file (default: dumps/<checkpoint>-hf-<time>.h5).")
@options.overwrite
def capture_hf_command(model_dir: Path, prompt: str | None, prompt_file: Path | None, token_ids: list[int] | None,
                       image: Path | None, globs: tuple[str, ...], regexes: tuple[str, ...], dtype: str,
                       map_files: tuple[Path, ...], output: Path | None, overwrite: bool) -> None:
    """Run a local transformers checkpoint on the CPU and dump its activations as llama.cpp's tensors.

    Each activation the architecture's name map names is stored under
    llama.cpp's tensor name and occurrence, in ggml's layout (token rows,
    heads, the Q/K row order convert_hf_to_gguf.py gives llama-style RoPE),
    in one evaluation that records its token ids and positions: compare it
    with a capture of the converted GGUF (any batch split), or pass it to
    compare --reference.  Nothing is downloaded and no code from the
    checkpoint runs (safetensors weights only).  Modules the map does not
    cover are listed, and so are mapped tensors the forward pass never
    computed. With --image (mllama), the vision tower's tensors go to an
    evaluation of kind encode before the prompt's, as in mllama generate's
    dump.
    """
    from inspector.capture.selection import Selection
    from inspector.reference.capture import SHOWN_UNMAPPED, HfRunConfig, capture_hf

    given = [name for name, value in (("-p", prompt), ("-f", prompt_file), ("--token-ids", token_ids)) if value]
    if len(given) != 1:
        raise InspectorError("give the input with exactly one of -p TEXT, -f FILE and --token-ids IDS")
    if prompt_file is not None:
        prompt = read_prompt_file(prompt_file)
    stop_on_sigterm()
    run = HfRunConfig(str(model_dir), prompt=prompt, token_ids=token_ids, dtype=dtype,
                      map_files=[str(path) for path in map_files], image=str(image) if image is not None else None)
    summary = capture_hf(run, Selection(globs=globs, regexes=regexes),
                         output or default_output(f"{model_dir.name}-hf"), overwrite=overwrite,
                         progress=echo_progress)
    if summary.unmapped_modules:
        shown = ", ".join(summary.unmapped_modules[:SHOWN_UNMAPPED])
        more = len(summary.unmapped_modules) - SHOWN_UNMAPPED
        click.echo(f"not mapped ({len(summary.unmapped_modules)} modules): {shown}"
                   + (f" and {more} more (ls --config lists them)" if more > 0 else ""), err=True)
    for missing in summary.missing:
        click.echo(f"not in this model: {missing}", err=True)
    for idle in summary.not_computed:
        click.echo(f"not computed by the forward pass: {idle}", err=True)
    click.echo(f"captured {summary.tensors} tensors of {summary.architecture} over {summary.n_tokens} tokens "
               f"-> {summary.path}", err=True)


COMMANDS = [capture_hf_command]
