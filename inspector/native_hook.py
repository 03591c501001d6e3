"""The native hook (``hooks/ggml_inspector_hook.c``): where it is, and building it.

The library is compiled by the system C compiler against the ggml headers
that llama-cpp-python installs (``site-packages/include``), so it always
matches the pinned ggml's ``struct ggml_tensor``.  It links no ggml library:
it looks every function up in the program it is preloaded into.  The build
is cached per source and header content, so ``exec`` compiles it once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
from pathlib import Path

from inspector.errors import InspectorError

SOURCE = Path(__file__).resolve().parent.parent / "hooks" / "ggml_inspector_hook.c"
HEADERS = ("ggml.h", "ggml-backend.h")
COMPILE_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-fPIC", "-shared")


def include_directory() -> Path:
    """The folder holding the pinned ggml's public headers (``ggml.h``, ``ggml-backend.h``)."""
    for folder in site.getsitepackages() + [site.getusersitepackages()]:
        candidate = Path(folder) / "include"
        if (candidate / "ggml.h").is_file():
            return candidate
    raise InspectorError("the ggml headers of llama-cpp-python are not installed (no site-packages/include/ggml.h)")


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ggml-inspector"


def _fingerprint(include: Path) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        digest.update((include / header).read_bytes())
    return digest.hexdigest()[:16]


def library_path(build: bool = True) -> Path:
    """The compiled hook for this source and these headers, compiled now if it is not yet."""
    if not SOURCE.is_file():
        raise InspectorError(f"the hook's source {SOURCE} is missing (install ggml-inspector from its repository)")
    include = include_directory()
    target = cache_directory() / f"libggml_inspector_hook-{_fingerprint(include)}.so"
    if target.is_file() or not build:
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise InspectorError("no C compiler (cc or gcc) to build the native hook; install one or set CC")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    command = [compiler, *COMPILE_FLAGS, f"-I{include}", str(SOURCE), "-o", str(partial), "-ldl", "-lpthread"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
        raise InspectorError(f"building the native hook failed: {first}")
    partial.replace(target)  # atomic: a concurrent build never sees half a library
    return target
