"""The ``ggml-inspector`` group: every failure becomes one line on stderr and an exit code.

Exit codes: 0 success, 1 a comparison found differences, 2 an error, 130
an interrupted capture.  ``GGML_INSPECTOR_DEBUG=1`` shows tracebacks of
unexpected failures.  Commands live in one module per group and import
their heavy dependencies (llama.cpp, h5py, matplotlib, PIL) only when run,
so ``--help`` starts fast; and a command's module is imported only when
that command runs (:data:`COMMAND_MODULES`), so a capture does not pay for
compare's or mllama's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from importlib import import_module
from typing import Any, NoReturn

import click

from inspector.constants import TOOL_VERSION
from inspector.errors import CaptureInterrupted, InspectorError
from inspector.formatting import printable

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print the one error line and exit; whatever the message quotes from a file stays on that line."""
    click.echo(f"ggml-inspector: error: {printable(message)}", err=True)
    sys.exit(code)


# The module of inspector.cli that defines each command (in its COMMANDS).  Why a table: importing every
# command's module cost ~25 ms of every start, a sixth of what a one-tensor capture adds to the run it observes.
COMMAND_MODULES = {
    "capture": "running", "exec": "running", "build-hook": "running", "demo": "running",
    "capture-hf": "reference",
    "ls": "dumps", "show": "dumps", "export": "dumps", "gguf": "dumps", "import-raw": "dumps", "import": "dumps",
    "compare": "comparing", "sweep": "comparing", "replay": "comparing",
    "preprocess": "mllama", "diff-preprocess": "mllama", "mllama": "mllama",
    "plot": "plotting", "report": "plotting",
    "rpc-server": "servers",
}


class InspectorGroup(click.Group):
    """A click group that turns every failure into one line and an exit code, and imports a command's module
    when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands = import_module(f"inspector.cli.{module}").COMMANDS
        return next(command for command in commands if command.name == cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CaptureInterrupted as error:
            fail(str(error), EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            fail("interrupted", EXIT_INTERRUPTED)
        except InspectorError as error:
            fail(str(error))
        except click.UsageError as error:
            # click would print usage, a hint and the error on three lines.
            fail(error.format_message() + (f" (see {error.ctx.command_path} --help)" if error.ctx else ""))
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
        # numpy's RuntimeWarnings on a tensor full of NaN and infinities (the output already counts
        # them) and matplotlib's font and layout notices are not errors: stderr keeps its one line.
        warnings.simplefilter("ignore")
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit (ulimit -f) a write fails with EFBIG, which the writer turns
        # into a clean incomplete dump, instead of the signal killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
