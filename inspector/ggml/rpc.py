"""ggml's RPC backend: serve this host's CPU, and register remote devices for llama.cpp.

On a CPU-only host a loopback RPC server stands in for a GPU: llama.cpp
offloads ``--n-gpu-layers`` to it, its tensors live in ``RPC0[...]``
buffers, and the scheduler copies activations across the boundary, which is
exactly the machinery whose bugs offload sweeps look for.

Devices must be registered in the ggml that libllama uses (see
:mod:`inspector.ggml.library`) before the model loads.
"""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import tempfile
import time

from inspector.errors import InspectorError
from inspector.ggml.devices import find_device, list_devices
from inspector.ggml.library import load

CONNECT_TIMEOUT_S = 5.0
SERVER_START_TIMEOUT_S = 60.0

_registered: dict[str, list[str]] = {}


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``HOST:PORT`` to (host, port), with a clear error for anything else."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InspectorError(f"RPC endpoint {endpoint!r} is not HOST:PORT")
    return host.strip("[]"), int(port_text)


def check_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast (bounded wait) when nothing listens at ``endpoint``: ggml's own connect can hang."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise InspectorError(f"RPC server {endpoint} is unreachable ({error.strerror or error}); "
                             f"start one with: ggml-inspector rpc-server --host {host} --port {port}") from None


def add_servers(endpoints: list[str]) -> list[str]:
    """Register each RPC server's devices with ggml (once per endpoint); return their device names."""
    lib = load()
    rpc = lib.require_rpc()
    names: list[str] = []
    for endpoint in endpoints:
        if endpoint in _registered:
            names.extend(_registered[endpoint])
            continue
        check_reachable(endpoint)
        before = len(list_devices(lib))
        registry = rpc.ggml_backend_rpc_add_server(endpoint.encode())
        if not registry:
            raise InspectorError(f"RPC server {endpoint} answered but reported no devices "
                                 "(is it a ggml RPC server of protocol version 7?)")
        lib.ggml.ggml_backend_register(registry)
        added = [device.name for device in list_devices(lib)[before:]]
        _registered[endpoint] = added
        names.extend(added)
    return names


def registered_devices() -> list[str]:
    """Every RPC device this process has registered (they cannot be unregistered)."""
    return [name for names in _registered.values() for name in names]


def serve(host: str, port: int, threads: int, device: str | None = None) -> None:
    """Serve a local ggml device over RPC until the process is stopped (blocks)."""
    lib = load()
    rpc = lib.require_rpc()
    chosen = find_device(lib, device)
    devices = (ctypes.c_void_p * 1)(chosen)
    rpc.ggml_backend_rpc_start_server(f"{host}:{port}".encode(), None, threads, 1, devices)
    raise InspectorError(f"the RPC server on {host}:{port} stopped (is the port already in use?)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LoopbackServer:
    """An RPC server in a child process on 127.0.0.1, for the duration of a ``with`` block.

    Stopped on exit, also on Ctrl-C or error, so sweeps and tests never leak it.
    """

    def __init__(self, threads: int = 1, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.threads = threads
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "inspector", "rpc-server", "--host", self.host, "--port", str(self.port),
             "--threads", str(self.threads)],
            stdout=subprocess.DEVNULL, stderr=self._log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                message = self._log.read().decode(errors="replace").strip().splitlines()
                raise InspectorError(f"loopback RPC server failed to start: {message[-1] if message else '?'}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise InspectorError(f"loopback RPC server did not listen on {self.endpoint} within "
                             f"{SERVER_START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
