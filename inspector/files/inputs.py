"""Input files are regular files: a FIFO, a device or a folder is refused before anything reads it.

Why: opening a FIFO for reading blocks until a writer appears, and reading
a device (``/dev/zero``) never ends, so a path someone else chose would hang
the command instead of failing.  The path is checked with ``os.stat`` and
opened with ``O_NONBLOCK`` (a FIFO swapped in after the check then opens at
once and fails the second check on the open descriptor).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from inspector.errors import InspectorError


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_regular_file(path: str | os.PathLike[str], what: str, error: type[InspectorError] = InspectorError
                       ) -> os.stat_result:
    """The file's stat, or ``error`` saying why ``path`` is not a regular file to read as ``what``."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as problem:
        raise error(f"{path}: {problem.strerror or problem}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is {_kind(info.st_mode)}, not {what}")
    return info


def open_regular_file(path: str | os.PathLike[str], what: str, error: type[InspectorError] = InspectorError):
    """Open ``path`` for binary reading, refused in one line unless it is a regular file (see module doc)."""
    check_regular_file(path, what, error)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as problem:
        raise error(f"{path}: {problem.strerror or problem}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path} is {_kind(mode)}, not {what}")
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return open(descriptor, "rb")


def regular_path(path: str | os.PathLike[str], what: str, error: type[InspectorError] = InspectorError) -> Path:
    """``path`` as a Path, after :func:`check_regular_file` (for libraries that open it themselves)."""
    check_regular_file(path, what, error)
    return Path(path)


def read_small_file(path: str | os.PathLike[str], limit: int, what: str,
                    error: type[InspectorError] = InspectorError) -> bytes:
    """A whole small file (a map or rules file, a prompt), refused in one line past ``limit`` bytes."""
    with open_regular_file(path, what, error) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path}: over {limit} bytes, too large for {what}")
    return data
