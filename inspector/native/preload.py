"""Start ``capture`` again with the native hook preloaded: the one step that must happen before ggml loads.

Kept apart from :mod:`inspector.native.inprocess` so that the command line
can take it first thing, before it imports click, numpy or h5py: what runs
before the re-execution is paid twice.
"""

from __future__ import annotations

import os
import sys

# Set by the re-execution: the hook's path (this process has it preloaded), and the LD_PRELOAD the user had.
PRELOADED = "GGML_INSPECTOR_PRELOADED"
USER_PRELOAD = "GGML_INSPECTOR_USER_LD_PRELOAD"
# Commands that run llama.cpp (or mllama's own graphs) in this process and capture them with the hook.
PRELOADING_COMMANDS = (("capture",), ("mllama", "encode"), ("mllama", "generate"))


def reexec_preloaded(argv: list[str]) -> None:
    """Run ``ggml-inspector ARGV`` again (this process replaced) with the hook preloaded; returns, changing
    nothing, where it cannot or need not.

    The hook is built on first use, as for exec; without a compiler the
    capture runs the Python hook and its dump says why.
    """
    preloading = any(tuple(argv[:len(command)]) == command for command in PRELOADING_COMMANDS)
    if not preloading or os.environ.get(PRELOADED) or not sys.executable or "--help" in argv or "-h" in argv:
        return
    from inspector.errors import InspectorError
    from inspector.native.build import library_path

    try:
        hook = library_path()
    except InspectorError:
        return
    user = os.environ.get("LD_PRELOAD", "")
    environment = {**os.environ, PRELOADED: str(hook), USER_PRELOAD: user,
                   "LD_PRELOAD": " ".join(filter(None, [str(hook), user]))}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "inspector", *argv], environment)
