"""ggml-inspector: capture, store and compare the tensors of ggml compute graphs.

The public Python API is deliberately small: :func:`open_dump` reads a dump, and
:class:`~inspector.hook.TensorHook` plus :func:`~inspector.runners.llama.capture`
produce one.
"""

from inspector.constants import TOOL_VERSION as __version__
from inspector.store import open_dump

__all__ = ["__version__", "open_dump"]
