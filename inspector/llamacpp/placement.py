"""Where llama.cpp may put a model's weights: ``-dev`` (offload devices) and ``-ot`` (buffer overrides).

Both are NULL-terminated C arrays in ``llama_model_params`` that
llama-cpp-python declares as bare pointers; this module builds them from
names, resolved the way llama.cpp's ``common/arg.cpp`` resolves them (a
device by its ggml name, a buffer type by the name of a device's default
buffer type), and keeps them alive for as long as the model may read them.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass, field

from inspector.errors import SetupError
from inspector.ggml.abi import TensorBufferOverride
from inspector.ggml.devices import list_devices
from inspector.ggml.library import GgmlLibraries


@dataclass
class Placement:
    """The C arrays for ``llama_model_params.devices`` and ``.tensor_buft_overrides`` (None: llama.cpp's default)."""

    devices: ctypes.Array | None = None
    overrides: ctypes.Array | None = None
    _patterns: list[bytes] = field(default_factory=list)

    @property
    def devices_address(self) -> int | None:
        return ctypes.addressof(self.devices) if self.devices is not None else None

    @property
    def overrides_address(self) -> int | None:
        return ctypes.addressof(self.overrides) if self.overrides is not None else None


def offload_devices(lib: GgmlLibraries, names: list[str]) -> ctypes.Array:
    """``-dev A,B``: the devices to offload to; ``none`` (or no name) offloads nothing.

    As in llama.cpp, a CPU device is not an offload device and is refused.
    """
    wanted = [] if names == ["none"] else names
    offload = {device.name: device.handle for device in list_devices(lib) if device.kind != "CPU"}
    resolved = []
    for name in wanted:
        device = offload.get(name)
        if device is None:
            raise SetupError(f"-dev: invalid device {name!r}; offload devices: {', '.join(offload) or 'none'}")
        resolved.append(device)
    return (ctypes.c_void_p * (len(resolved) + 1))(*resolved, None)


def buffer_types(lib: GgmlLibraries) -> dict[str, int]:
    """Every device's default buffer type by name (``CPU``, ``CUDA0``, ``RPC0[host:port]``)."""
    found = {}
    for device in list_devices(lib):
        buft = lib.ggml.ggml_backend_dev_buffer_type(device.handle)
        if buft:
            found[lib.base.ggml_backend_buft_name(buft).decode()] = buft
    return found


_ExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


def extra_buffer_types(lib: GgmlLibraries) -> dict[str, int]:
    """The devices' extra buffer types by name (the CPU's ``CPU_REPACK``), found as llama.cpp finds them."""
    found = {}
    for device in list_devices(lib):
        registry = lib.ggml.ggml_backend_dev_backend_reg(device.handle)
        if not registry:
            continue
        address = lib.ggml.ggml_backend_reg_get_proc_address(registry, b"ggml_backend_dev_get_extra_bufts")
        if not address:
            continue
        bufts = _ExtraBufts(address)(device.handle)
        index = 0
        while bufts and bufts[index]:
            found[lib.base.ggml_backend_buft_name(bufts[index]).decode()] = bufts[index]
            index += 1
    return found


def placement(lib: GgmlLibraries, devices: list[str] | None, overrides: list[str]) -> Placement:
    """Resolve ``-dev`` names and ``-ot PATTERN=BUFT`` pairs; unknown names fail with what exists."""
    result = Placement()
    if devices is not None:
        result.devices = offload_devices(lib, devices)
    if overrides:
        known = buffer_types(lib)
        entries = []
        for override in overrides:
            pattern, sep, buft_name = override.partition("=")
            if not sep or not pattern:
                raise SetupError(f"-ot takes PATTERN=BUFFER_TYPE, not {override!r}")
            try:
                re.compile(pattern)
            except re.error as error:
                raise SetupError(f"-ot {override}: {pattern!r} is not a regular expression ({error})") from None
            if buft_name not in known:
                raise SetupError(f"-ot {override}: unknown buffer type {buft_name!r}; available: "
                                     f"{', '.join(sorted(known))}")
            result._patterns.append(pattern.encode())
            entries.append((result._patterns[-1], known[buft_name]))
        result.overrides = (TensorBufferOverride * (len(entries) + 1))(*entries, (None, None))
    return result
