"""The ``ggml-inspector`` command line (click), one module per command group.

``running`` (capture, demo), ``dumps`` (ls, show, export, gguf, import-raw),
``comparing`` (compare, sweep), ``mllama`` (preprocess, diff-preprocess,
mllama ...), ``plotting`` (plot ..., report), ``servers`` (rpc-server).
llama.cpp's options are declared once in ``llama_options``; shared ones in
``options``; what commands print is formatted by presenter modules beside
the logic they present.
"""

import sys
from typing import Any

__all__ = ["main"]


def main(args: list[str] | None = None, **options: Any) -> Any:
    """The console script: the click group, called with ``args`` and click's ``options`` (``standalone_mode``).
    From the command line itself, ``capture`` first starts itself again with the native hook preloaded
    (:mod:`inspector.native.preload`), before anything heavy is imported."""
    import os

    # numpy's OpenBLAS would start a spinning thread per core at its first BLAS call, beside the very graph a
    # capture observes; nothing here gains from threaded BLAS.  Before numpy loads, and before the re-execution.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from inspector.native.preload import reexec_preloaded

    if args is None:  # the command line itself: a caller passing its own args keeps its process
        reexec_preloaded(sys.argv[1:])
    from inspector.cli.app import main as group

    return group(args, **options)
