"""Commands that run a model and capture its graphs: ``capture``, ``demo``."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from inspector.cli import options
from inspector.cli.llama_options import llama_cpp_options
from inspector.constants import DEFAULT_DUMP_DIR

if TYPE_CHECKING:
    from inspector.llamacpp.config import LlamaRunConfig


def default_output(stem: str) -> Path:
    """``dumps/<stem>-<time>.h5``."""
    return Path(DEFAULT_DUMP_DIR) / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.h5"


def _raise_keyboard_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM ends a capture like Ctrl-C: the dump is kept, marked incomplete."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def echo_progress(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@llama_cpp_options()
@options.tensor_selection("neither this nor --tensor-filter: every computed node plus the graph inputs.")
@options.output_file("Dump file (default: dumps/<model>-<time>.h5).")
@options.overwrite
@options.storage
@options.capture_mode
@click.option("--observer-check", is_flag=True,
              help="Run once more without the hook and record whether the final logits and tokens were identical "
                   "(asking for a node splits the graph there, which can change what is observed).")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's log.")
def capture(run_config: LlamaRunConfig, globs: tuple[str, ...], regexes: tuple[str, ...], output: Path | None,
            overwrite: bool, stats_only: bool, compression: str, mode_name: str, unsplit_max_mib: int,
            observer_check: bool, verbose: bool) -> None:
    """Run a model on a prompt and store the selected tensors as they are computed.

    Takes llama.cpp's options (the table above). The model's magic, size,
    name, architecture and fingerprint are read in bounded reads, whatever
    the vocabulary; a model llama.cpp refuses is reported with llama.cpp's
    own reason and leaves no dump. The prompt is decoded in ubatches of
    min(-b, -ub) tokens, one evaluation each, then -n tokens are generated
    greedily, one evaluation each (the last generated token is not decoded).

    As in llama.cpp only the last prompt token gets an output row: with a
    262k vocabulary a row per prompt token (--all-logits) costs a
    vocabulary-wide matmul each. --stats-only keeps per tensor statistics,
    an xxh3 digest and the first 16 values (compared by digest). A pattern
    that matched nothing is reported with the nearest names seen.

    Weights in buffers that cannot be read back (the CPU's CPU_REPACK) are
    read from the model file; graph inputs read through the scheduler's
    per-backend copies are stored under their own names. A full disk or a
    file-size limit stops the capture with one line, "disk full after N
    tensors; kept in PATH, marked incomplete" (exit 2); Ctrl-C and SIGTERM
    keep the dump too, marked incomplete (exit 130).

    The command starts itself again with the native hook preloaded
    (inspector/native/), which does the per-node work in C and, in --mode
    unsplit (the default), computes each graph in one piece with the
    selected tensors flagged as outputs. The Python eval callback runs
    instead, and the dump's config says why, for --tensor-filter (Python
    regular expressions) and for a selection that names weights.
    """
    from inspector.capture.mode import CaptureMode
    from inspector.capture.selection import Selection
    from inspector.dump.format import Compression
    from inspector.llamacpp.capture import capture_llama
    from inspector.native.inprocess import native_capture
    from inspector.native.tensor_stats import stats_function
    from inspector.present.capture_report import summary_lines

    storage = Compression.parse(compression)
    output = output or default_output(Path(run_config.model).stem)
    stop_on_sigterm()
    selection = Selection(globs=globs, regexes=regexes)
    mode = CaptureMode(mode_name, unsplit_max_mib)
    hook_factory, capture_mode = native_capture(list(filter(None, (run_config.model, run_config.mmproj))),
                                                selection, mode)
    summary = capture_llama(run_config, selection, output, overwrite=overwrite, verbose=verbose,
                            progress=echo_progress, stats_only=stats_only, compression=storage,
                            check_observer=observer_check, hook_factory=hook_factory, capture_mode=capture_mode,
                            stats_of=stats_function())
    for line in summary_lines(summary):
        click.echo(line, err=True)


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@options.tensor_selection("neither this nor --tensor-filter: every computed node plus the graph inputs.")
@options.output_file("Dump file (default: dumps/<program>-<time>.h5).")
@options.overwrite
@options.storage
@options.capture_mode
@click.option("-m", "--model", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="The GGUF the program loads, recorded (fingerprint in O(header)) so that compare can tell "
                   "different model files apart, its origins can compare weights and replay can read them.")
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(globs: tuple[str, ...], regexes: tuple[str, ...], output: Path | None, overwrite: bool,
                 stats_only: bool, compression: str, mode_name: str, unsplit_max_mib: int, model: Path | None,
                 program: tuple[str, ...]) -> None:
    """Run any ggml program, unmodified, and capture its graphs: ggml-inspector exec [OPTIONS] -- PROGRAM [ARGS]...

    The native hook (inspector/native/) is preloaded into the program: it interposes
    ggml_backend_sched_*, chains its eval callback in front of any the
    program sets (which still gets every call it asks for, its answers
    honoured), copies the selected tensors at the moment they are computed
    and streams them here. One evaluation per graph computation, tagged with
    process, scheduler and compute call; its kind is encode for schedulers
    libmtmd created (image encoders), decode for libllama's, graph for any
    other. The dump records the command line,
    the environment variables that matter to ggml and the program's exit
    status; exec exits with that status (128 + N when signal N killed it).
    A crash, Ctrl-C (exit 130) or a full disk (exit 2, "disk full after N
    tensors") keep what arrived, marked incomplete; the program runs on to
    its end. A program that computes through another ggml (statically
    linked, or an incompatible ggml_tensor) runs unhooked and exec says so
    in one line, as it does when the hook stops capturing mid-run.

    The hook matches --tensor-filter with the C library's regcomp: POSIX
    extended regular expressions, not Python's. There is no \\d (write
    [0-9]), no (?:...) and no lazy *?; [[:digit:]] and friends work. Each
    pattern is checked before the program starts.

    By default (--mode unsplit) the hook flags the selected tensors as graph
    outputs where the scheduler plans and allocates, the graph is computed in
    one piece as unhooked, and the tensors are copied after; each evaluation
    records its mode, and why it fell back to the per-node callback.
    """
    import sys

    from inspector.capture.mode import CaptureMode
    from inspector.dump.format import Compression
    from inspector.files.outputs import recorded_inputs, refuse_inputs
    from inspector.native.exec import exec_capture
    from inspector.present.capture_report import exec_lines

    storage = Compression.parse(compression)
    output = output or default_output(Path(program[0]).name)
    # The dump writer checks this too; here it fails before the hook is built and the program started.
    refuse_inputs(output, recorded_inputs({"runner": "exec", "argv": list(program), "model": model}))
    stop_on_sigterm()
    summary = exec_capture(list(program), globs, regexes, output, overwrite=overwrite, progress=echo_progress,
                           stats_only=stats_only, compression=storage, model=model,
                           mode=CaptureMode(mode_name, unsplit_max_mib))
    for line in exec_lines(summary):
        click.echo(line, err=True)
    status = summary.exit_status
    sys.exit(128 - status if status < 0 else status)


@click.command("build-hook")
def build_hook() -> None:
    """Compile the native hook for exec against the installed ggml headers (exec also does it on first use)."""
    from inspector.native.build import library_path

    click.echo(library_path())


@click.command()
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(DEFAULT_DUMP_DIR) / "demo", show_default=True)
def demo(output_dir: Path) -> None:
    """Generate a tiny model, capture it, and list what was caught (no downloads).

    A 4-layer tiny llama is written to the folder; inp_tokens, embd,
    attn_norm-*, l_out-* and result_output are captured while decoding a
    prompt and generating 4 tokens; then an offload sweep (0, 2 and all
    layers on a loopback RPC server) prints its matrix.
    """
    from inspector.present.demo import run_demo

    run_demo(output_dir, echo=click.echo)


COMMANDS = (capture, exec_command, build_hook, demo)
