"""A fork server that runs the ``ggml-inspector`` command line on crafted inputs, many cases a second.

Why a fork server: starting Python and importing numpy, h5py, matplotlib and
llama-cpp-python costs far more than most hostile cases take to be refused,
so a fresh interpreter per case would spend the fuzz suite's time budget on
start-up.  The server is its own process (not the pytest process, which may
have run ggml's thread pools: forking those is unsafe), imports the command
line once, and forks a child per case.  Each child runs exactly what the
console script runs, ``inspector.cli.main`` in standalone mode, under an
address-space cap (``RLIMIT_AS``) in its own process group, with stdout and
stderr in files; the server kills the group at the case's deadline and
reports how the child ended: its exit code, or the signal that killed it, or
a timeout, and its peak resident memory.

Protocol: the parent writes one JSON line, a list of requests; the server
answers with one JSON line, the list of results in the same order.
A request is ``{"argv", "cwd", "cap", "timeout", "out"}`` (``out``: a folder
that receives ``stdout`` and ``stderr``); ``{"self_test": "segv"}`` in a
request makes its child kill itself with SIGSEGV instead of running the CLI
(``"hang"``: wait forever), which proves the server reports a crash as a
crash and a hang as a hang.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Imported once in the server so that a child starts with them; a module another change has
# broken for the moment is imported (and fails, visibly) in the child instead.
PRELOADED = (
    "numpy", "h5py", "PIL.Image", "matplotlib", "matplotlib.pyplot", "gguf", "llama_cpp", "inspector.cli.app",
    "inspector.dump.reader", "inspector.dump.report", "inspector.formatting", "inspector.present.plots",
    "inspector.present.report",
    "inspector.compare.runs", "inspector.compare.report", "inspector.compare.replay", "inspector.llamacpp.capture",
    "inspector.native.stream_import", "inspector.dump.raw_import", "inspector.gguf.header", "inspector.gguf.report",
    "inspector.mllama.preprocess", "inspector.mllama.preprocess_report", "inspector.mllama.diagnose",
    "inspector.mllama.convert", "inspector.mllama.encode",
)
POLL_SECONDS = 0.005


def _child(request: dict[str, Any]) -> None:
    """Become the case: never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        out = Path(request["out"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        cap = int(request["cap"])
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        if request.get("self_test") == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        if request.get("self_test") == "hang":
            while True:
                signal.pause()
        from inspector.cli.app import main

        sys.argv = ["ggml-inspector", *request["argv"]]
        try:
            main.main(args=list(request["argv"]), prog_name="ggml-inspector", standalone_mode=True)
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            if exit_.code is not None and not isinstance(exit_.code, int):
                print(exit_.code, file=sys.stderr)
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001  (what the interpreter would print for an escaping exception)
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_batch(requests: list[dict[str, Any]], parallel: int) -> list[dict[str, Any]]:
    """Every request run in a forked child, ``parallel`` at a time; results in request order."""
    results: list[dict[str, Any] | None] = [None] * len(requests)
    waiting = list(range(len(requests)))
    running: dict[int, tuple[int, float, float]] = {}  # pid -> (request, start, deadline)
    while waiting or running:
        while waiting and len(running) < parallel:
            index = waiting.pop(0)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(requests[index])
            started = time.monotonic()
            running[pid] = (index, started, started + float(requests[index]["timeout"]))
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for child, (index, started, deadline) in list(running.items()):
                if now > deadline:
                    _kill_group(child)
                    os.waitpid(child, 0)
                    del running[child]
                    results[index] = {"status": "timeout", "code": None, "signal": None, "maxrss_kib": None,
                                      "seconds": now - started}
            time.sleep(POLL_SECONDS)
            continue
        if pid not in running:
            continue
        index, started, _deadline = running.pop(pid)
        _kill_group(pid)  # whatever the case left running (a server it started) goes with it
        signalled = os.WIFSIGNALED(status)
        results[index] = {"status": "signal" if signalled else "exit",
                          "code": None if signalled else os.WEXITSTATUS(status),
                          "signal": os.WTERMSIG(status) if signalled else None,
                          "maxrss_kib": usage.ru_maxrss, "seconds": time.monotonic() - started}
    return [result for result in results if result is not None]


def serve(parallel: int) -> None:
    """Answer batches on stdin until it closes."""
    for module in PRELOADED:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001,S112  (a broken module fails visibly in the child that needs it)
            continue
    print(json.dumps({"ready": True, "vm_kib": _vm_size_kib()}), flush=True)
    for line in sys.stdin:
        print(json.dumps(run_batch(json.loads(line), parallel)), flush=True)


def _vm_size_kib() -> int:
    """The server's own address space: every child starts with it, under its cap."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    return -1


class ForkServer:
    """The parent's handle on a running server process."""

    def __init__(self, parallel: int, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, str(parallel)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=env.get("HOME"))
        ready = json.loads(self.process.stdout.readline() or "{}")
        if not ready.get("ready"):
            raise RuntimeError("the fuzz fork server did not start")
        self.vm_kib = int(ready["vm_kib"])

    def run(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.process.stdin.write(json.dumps(requests) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the fuzz fork server died")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
