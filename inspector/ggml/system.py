"""Facts about the machine and the libraries, stored with every dump.

Two runs that differ only in these facts (another llama.cpp build, another
device) are exactly the comparisons users make, so record them all.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import sys
from typing import Any

from inspector.constants import GGML_MAX_N_THREADS, MAX_THREADS_PER_CORE, TOOL_VERSION
from inspector.ggml.devices import list_devices
from inspector.ggml.library import GgmlLibraries

# The packages whose versions every dump records: what changes what a run computes, or how its dump is read.
RECORDED_PACKAGES = ("llama-cpp-python", "numpy", "h5py", "gguf", "Pillow")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each package of ``names`` ("" when it is not installed).

    Read from the ``NAME-VERSION.dist-info`` folders on ``sys.path``, first
    found first, as ``importlib.metadata`` finds them.  Why not importlib.metadata
    itself: importing it (email, zipfile, csv) cost ~40 ms of every capture's
    start-up, where listing the path's folders costs ~1 ms.  A package installed
    without such a folder is still asked of importlib.metadata.
    """
    wanted = {_normalized(name): name for name in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            name, separator, version = item.removesuffix(".dist-info").partition("-")
            package = wanted.get(_normalized(name)) if item.endswith(".dist-info") and separator else None
            if package is not None and package not in found:
                found[package] = version
    missing = [name for name in names if name not in found]
    if missing:
        from importlib import metadata

        for name in missing:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = ""
    return {name: found[name] for name in names}


def ggml_devices(lib: GgmlLibraries) -> list[dict[str, Any]]:
    """The devices registered in the ggml that llama.cpp uses (CPU, GPUs, RPC servers)."""
    facts = []
    for device in list_devices(lib):
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        # Asking an RPC device for its memory is a network call, and ggml aborts the
        # process if that server has gone away (a registered device cannot be removed).
        if not device.name.startswith("RPC"):
            lib.ggml.ggml_backend_dev_memory(device.handle, ctypes.byref(free), ctypes.byref(total))
        facts.append({"name": device.name, "description": device.description, "type": device.kind,
                      "memory_free": free.value, "memory_total": total.value})
    return facts


def host_facts() -> dict[str, Any]:
    """Platform and package versions: what every dump records, ggml involved or not."""
    return {
        "tool_version": TOOL_VERSION,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "packages": package_versions(RECORDED_PACKAGES),
    }


def system_facts(lib: GgmlLibraries) -> dict[str, Any]:
    """Host facts plus llama.cpp's system info and the ggml devices."""
    import llama_cpp

    return {
        **host_facts(),
        "llama_cpp_lib_dir": str(lib.directory),
        "llama_system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "ggml_devices": ggml_devices(lib),
        "rpc_available": lib.rpc is not None,
    }


def max_threads() -> int:
    """The most CPU threads a run may ask for.

    ggml's thread pool has GGML_MAX_N_THREADS slots (512; past them ggml
    writes out of bounds and the process dies with SIGSEGV), and its workers
    spin while they wait, so threads well beyond the cores only slow a run.
    """
    return min(GGML_MAX_N_THREADS, MAX_THREADS_PER_CORE * (os.cpu_count() or 1))
