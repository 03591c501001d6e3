"""Facts about the machine and the libraries, stored with every dump.

Two runs that differ only in these facts (another llama.cpp build, another
device) are exactly the comparisons users make, so record them all.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from importlib import metadata
from typing import Any

from inspector.constants import GGML_MAX_N_THREADS, MAX_THREADS_PER_CORE, TOOL_VERSION
from inspector.ggml.devices import list_devices
from inspector.ggml.library import GgmlLibraries


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


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
        "packages": {name: _version(name) for name in ("llama-cpp-python", "numpy", "h5py", "gguf", "Pillow")},
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
