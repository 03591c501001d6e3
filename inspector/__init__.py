"""ggml-inspector: capture, store and compare the tensors of ggml compute graphs.

The public Python API is deliberately small: :func:`open_dump` reads a dump, and
:class:`~inspector.capture.hook.TensorHook` plus :func:`~inspector.llamacpp.capture.capture_llama`
produce one.  ``open_dump`` is imported on first use, so that importing the
package (the command line does) does not load h5py and numpy.
"""

from typing import Any

from inspector.constants import TOOL_VERSION as __version__

__all__ = ["__version__", "open_dump"]


def __getattr__(name: str) -> Any:
    if name == "open_dump":
        from inspector.dump.reader import open_dump

        return open_dump
    raise AttributeError(f"module 'inspector' has no attribute {name!r}")
