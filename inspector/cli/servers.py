"""Long-running helpers: ``rpc-server`` (this host's CPU or a device over ggml's RPC backend)."""

from __future__ import annotations

import os
import signal

import click

from inspector.cli.llama_options import Threads

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@click.command("rpc-server")
@click.option("-H", "--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=50052, show_default=True)
@click.option("-t", "--threads", type=Threads(), default=None, help="CPU threads (default: all cores).")
@click.option("-d", "--device", default=None, help="ggml device to serve (default: the CPU).")
def rpc_server(host: str, port: int, threads: int | None, device: str | None) -> None:
    """Serve this host's CPU (or DEVICE) over ggml's RPC backend until stopped (llama.cpp's rpc-server options)."""
    from inspector.ggml import rpc

    if host not in LOOPBACK_HOSTS:
        click.echo("warning: ggml's RPC protocol has no authentication; serve only on trusted networks", err=True)
    # The server blocks inside C: let Ctrl-C and SIGTERM end the process directly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    click.echo(f"serving on {host}:{port} (Ctrl-C to stop)", err=True)
    rpc.serve(host, port, threads or os.cpu_count() or 1, device)


COMMANDS = (rpc_server,)
