"""The ``ggml-inspector`` command line (click), one module per command group.

``running`` (capture, demo), ``dumps`` (ls, show, export, gguf, import-raw),
``comparing`` (compare, sweep), ``mllama`` (preprocess, diff-preprocess,
mllama ...), ``plotting`` (plot ..., report), ``servers`` (rpc-server).
llama.cpp's options are declared once in ``llama_options``; shared ones in
``options``; what commands print is formatted by presenter modules beside
the logic they present.
"""

import sys

__all__ = ["main"]


def main() -> None:
    """The console script.  ``capture`` first starts itself again with the native hook preloaded
    (:mod:`inspector.native.preload`), before anything heavy is imported."""
    from inspector.native.preload import reexec_preloaded

    reexec_preloaded(sys.argv[1:])
    from inspector.cli.app import main as group

    group()
