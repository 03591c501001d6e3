"""The ``ggml-inspector`` command line (click), one module per command group.

``running`` (capture, demo), ``dumps`` (ls, show, export, gguf, import-raw),
``comparing`` (compare, sweep), ``mllama`` (preprocess, diff-preprocess,
mllama ...), ``plotting`` (plot ..., report), ``servers`` (rpc-server).
llama.cpp's options are declared once in ``llama_options``; shared ones in
``options``; what commands print is formatted by presenter modules beside
the logic they present.
"""

from inspector.cli.app import main

__all__ = ["main"]
