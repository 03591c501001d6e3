"""The devices registered in the ggml that llama.cpp uses (CPU, GPUs, RPC servers), enumerated in one place.

Every part of the package that names, picks or describes a device walks
this one list: the facts a dump records, the backends replay and mllama
initialise, the RPC devices a server adds, and llama.cpp's ``-dev``/``-ot``.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspector.constants import GGML_BACKEND_DEVICE_TYPES
from inspector.errors import InspectorError
from inspector.ggml.library import GgmlLibraries


@dataclass(frozen=True)
class Device:
    """One ``ggml_backend_dev_t``: its handle, name and kind (``CPU``, ``GPU``, ``IGPU``, ...)."""

    handle: int
    name: str
    description: str
    kind: str


def list_devices(lib: GgmlLibraries) -> list[Device]:
    """Every registered device, in the registry's order (the order llama.cpp offloads in)."""
    registry = lib.ggml
    found = []
    for index in range(registry.ggml_backend_dev_count()):
        handle = registry.ggml_backend_dev_get(index)
        kind = registry.ggml_backend_dev_type(handle)
        found.append(Device(handle=handle, name=registry.ggml_backend_dev_name(handle).decode(errors="replace"),
                            description=registry.ggml_backend_dev_description(handle).decode(errors="replace"),
                            kind=GGML_BACKEND_DEVICE_TYPES.get(kind, str(kind))))
    return found


def device_by_name(lib: GgmlLibraries, name: str) -> int | None:
    """The handle of the device called ``name`` (None: no such device)."""
    return next((device.handle for device in list_devices(lib) if device.name == name), None)


def find_device(lib: GgmlLibraries, name: str | None) -> int:
    """The device called ``name``, or the first CPU device for None; else an error listing what exists."""
    devices = list_devices(lib)
    for device in devices:
        if device.name == name or (name is None and device.kind == "CPU"):
            return device.handle
    raise InspectorError(f"no ggml device {name!r}; available: {', '.join(d.name for d in devices)}")
