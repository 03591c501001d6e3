"""The command line as a hostile user meets it: a subprocess under a 1 GiB address-space cap and a timeout.

Shared by the hostile-input tests (GGUFs, images, options).  ``run_capped``
asserts what every hostile case owes the user: no signal, and, on refusal,
exit 2 with exactly one line on stderr.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The cap every case runs under (issue 19: "under a 1 GiB address-space cap").
CAP_BYTES = 1024**3
TIMEOUT_SECONDS = 120


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def limit_memory() -> None:
    """``preexec_fn`` of a capped child: RLIMIT_AS at CAP_BYTES."""
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def run_capped(*args: object, cwd: Path | None = None, timeout: float = TIMEOUT_SECONDS) -> Outcome:
    """Run ``ggml-inspector ARGS`` under the cap; a signal or a timeout fails the test."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    env.pop("GGML_INSPECTOR_DEBUG", None)
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "inspector", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=timeout, preexec_fn=limit_memory)
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr[-2000:]}"
    return Outcome(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def assert_refused(outcome: Outcome, *fragments: str) -> str:
    """Exit 2, exactly one stderr line, ours, holding every fragment; returns the line."""
    assert outcome.returncode == 2, outcome.stderr[-3000:]
    assert len(outcome.lines) == 1, outcome.stderr[-3000:]
    line = outcome.lines[0]
    assert line.startswith("ggml-inspector: error: "), line
    assert "unexpected" not in line, line
    for fragment in fragments:
        assert fragment in line, line
    return line


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
