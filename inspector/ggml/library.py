"""Load the ggml shared libraries that llama-cpp-python's ``libllama`` links.

Why not ``ctypes.CDLL("libggml.so")``: a wheel install materialises
``libggml.so``, ``libggml.so.0`` and ``libggml.so.0.x.y`` as three separate
files.  ``libllama`` links the SONAME file ``libggml.so.0``; opening any other
copy maps a second ggml with its own backend registry and its own globals, so
an RPC device registered there would be invisible to llama.cpp.  We therefore
import ``llama_cpp`` first (which loads ``libllama`` and, through its RUNPATH,
the SONAME files) and then open exactly those SONAME files by path: the
dynamic loader recognises the already-mapped file and hands back the same
handle.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from inspector.constants import GGML_OBJECT_SIZE
from inspector.errors import InspectorError
from inspector.ggml.abi import GgmlTensorStruct
from inspector.ggml.signatures import BY_LIBRARY, declare

SONAME_GGML_BASE = "libggml-base.so.0"
SONAME_GGML = "libggml.so.0"
SONAME_GGML_CPU = "libggml-cpu.so.0"
SONAME_GGML_RPC = "libggml-rpc.so.0"
SONAME_LLAMA = "libllama.so.0"

RPC_REBUILD_HINT = (
    'CMAKE_ARGS="-DGGML_RPC=ON" pip install --no-cache-dir --force-reinstall '
    "--no-deps llama-cpp-python==0.3.36"
)


@dataclass(frozen=True)
class GgmlLibraries:
    """Handles to the ggml libraries shared with llama.cpp.

    ``base`` holds the tensor, graph, backend-buffer and GGUF API, ``ggml``
    the backend registry, devices and the scheduler, ``cpu`` the CPU
    backend's own calls; ``rpc`` is None when the llama-cpp-python build has
    no RPC backend.  Every function the package calls is declared on them
    (:mod:`inspector.ggml.signatures`).
    """

    directory: Path
    base: ctypes.CDLL
    ggml: ctypes.CDLL
    cpu: ctypes.CDLL | None
    rpc: ctypes.CDLL | None

    def require_rpc(self) -> ctypes.CDLL:
        """Return the RPC library, or explain how to rebuild with it."""
        if self.rpc is None:
            raise InspectorError(
                "this llama-cpp-python was built without the ggml RPC backend; "
                f"rebuild it with: {RPC_REBUILD_HINT}"
            )
        return self.rpc


def library_directory() -> Path:
    """The folder llama-cpp-python loads ``libllama`` from (honours LLAMA_CPP_LIB_PATH)."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        return Path(override)
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


@cache
def load() -> GgmlLibraries:
    """Load (once per process) the ggml libraries that libllama itself uses."""
    try:
        import llama_cpp  # noqa: F401  (loads libllama and its SONAME dependencies)
    except (ImportError, OSError, RuntimeError) as error:
        raise InspectorError(f"cannot load llama-cpp-python: {error}") from None
    directory = library_directory()
    try:
        base = ctypes.CDLL(str(directory / SONAME_GGML_BASE))
        ggml = ctypes.CDLL(str(directory / SONAME_GGML))
    except OSError as error:
        raise InspectorError(f"cannot load ggml from {directory}: {error}") from None
    cpu, rpc = (ctypes.CDLL(str(directory / name)) if (directory / name).exists() else None
                for name in (SONAME_GGML_CPU, SONAME_GGML_RPC))
    libraries = GgmlLibraries(directory=directory, base=base, ggml=ggml, cpu=cpu, rpc=rpc)
    for attribute, tables in BY_LIBRARY.items():
        handle = getattr(libraries, attribute)
        if handle is not None:
            declare(handle, tables)
    _check_tensor_layout(base)
    return libraries


def _check_tensor_layout(base: ctypes.CDLL) -> None:
    """Refuse a ggml whose ``struct ggml_tensor`` is not the one we mirror, before reading garbage.

    ``ggml_tensor_overhead()`` is ``sizeof(ggml_object) + sizeof(ggml_tensor)``:
    a field added or removed upstream changes it.
    """
    expected = ctypes.sizeof(GgmlTensorStruct) + GGML_OBJECT_SIZE
    actual = base.ggml_tensor_overhead()
    if actual != expected:
        raise InspectorError(
            f"the ggml in {SONAME_GGML_BASE} has a struct ggml_tensor of {actual - GGML_OBJECT_SIZE} bytes; "
            f"this ggml-inspector mirrors the {ctypes.sizeof(GgmlTensorStruct)}-byte one of llama-cpp-python 0.3.36"
        )
