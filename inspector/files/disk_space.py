"""Stop writing a dump *before* the disk or the file-size limit is reached, and keep room to close it.

Why not just catch HDF5's error: once a raw-data write fails with ENOSPC,
HDF5 holds dirty metadata it cannot flush; closing the file then fails
("Can't destroy cache (slist already enabled?)"), h5py prints tracebacks
from object destructors, and the process can segfault at exit.  So the
writer asks :meth:`SpaceGuard.check` before every tensor and stops cleanly
while there is still room for the closing metadata.

When space vanishes anyway between the check and the write (another process
filling the disk), :meth:`SpaceGuard.release` deletes a small reserve file
made next to the dump at start, so the close that follows can flush.  Under
a file-size limit a deleted file frees nothing for the dump itself: there
the soft limit is lifted to the hard one (as any process may) until the dump
is closed.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import time
from pathlib import Path

from inspector.errors import InspectorError

# Room kept free for the dump's closing metadata (attributes, index, group headers).
CLOSE_MARGIN_BYTES = 256 * 1024
# HDF5's per-dataset overhead (object header, record attribute, index row), generously.
PER_TENSOR_OVERHEAD_BYTES = 16 * 1024
# Enough to flush a second's worth of pending metadata (index rows, records, object headers).
RESERVE_BYTES = 512 * 1024
# The room measured is trusted for this long, and only while the checks since ask for less than half of it.
REMEASURE_S = 0.25
# errno values that mean "no more room" (h5py reports them inside its message).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}
_ERRNO_IN_MESSAGE = re.compile(r"errno = (\d+)")


class DiskFull(InspectorError):
    """The dump's disk (or the process's file-size limit) has no room for the next tensor."""


def disk_full_errno(error: BaseException) -> int | None:
    """The errno of an OSError (or h5py's error text) when it means the disk is full, else None."""
    code = getattr(error, "errno", None)
    if code is None:
        match = _ERRNO_IN_MESSAGE.search(str(error))
        code = int(match.group(1)) if match else None
    return code if code in DISK_FULL_ERRNOS else None


def describe_errno(code: int) -> str:
    return {errno.EFBIG: "file size limit reached", errno.EIO: "I/O error"}.get(code, "disk full")


class SpaceGuard:
    """Free-space and RLIMIT_FSIZE checks for one growing file, plus a releasable reserve."""

    def __init__(self, path: Path, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = path
        self.reserve_path = path.with_name(f".{path.name}.space-reserve")
        self._reserve_held = False
        # The soft RLIMIT_FSIZE that release() lifted, for restore().
        self._soft_limit: int | None = None
        # The room last measured, when, and the bytes checked since (what the dump may have used of it).
        self._measured_room = 0
        self._measured_at = float("-inf")
        self._asked_since = 0
        if reserve_bytes > 0:
            try:
                with open(self.reserve_path, "wb") as handle:
                    handle.truncate(0)
                    handle.write(b"\0" * reserve_bytes)
                self._reserve_held = True
            except OSError:
                # No room even for the reserve: the first check will say so.
                self.reserve_path.unlink(missing_ok=True)

    def room(self) -> int:
        """Bytes the dump may still grow by before the disk or the size limit stops it."""
        stats = os.statvfs(self.path.parent)
        free = stats.f_bavail * stats.f_frsize
        soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            size = self.path.stat().st_size if self.path.exists() else 0
            free = min(free, soft - size)
        return free

    def check(self, nbytes: int, pending_tensors: int = 0) -> None:
        """Raise DiskFull unless ``nbytes`` of data, the metadata of it and of the ``pending_tensors``
        not yet flushed, and the closing margin fit."""
        needed = nbytes + PER_TENSOR_OVERHEAD_BYTES * (pending_tensors + 1) + CLOSE_MARGIN_BYTES
        now = time.monotonic()
        if now - self._measured_at < REMEASURE_S and 2 * (self._asked_since + needed) <= self._measured_room:
            # Far from full a moment ago: a statvfs per tensor cost a 4,576-tensor capture 60 ms, a tenth of
            # the writer's per-tensor time.  Anything else filling the disk meanwhile is what the reserve is for.
            self._asked_since += nbytes
            return
        room = self.room()
        self._measured_room, self._measured_at, self._asked_since = room, now, nbytes
        if room < needed:
            soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            limited = soft != resource.RLIM_INFINITY and room == soft - self.path.stat().st_size
            raise DiskFull("file size limit reached" if limited else "disk full")

    def release(self) -> None:
        """Delete the reserve and lift the soft file-size limit, so that closing the dump has room to flush.

        HDF5 may have placed a new 1 MiB chunk past the limit when a write failed; closing extends the
        file to it, which a size limit refuses however much is deleted.
        """
        if self._reserve_held:
            self.reserve_path.unlink(missing_ok=True)
            self._reserve_held = False
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        if self._soft_limit is None and soft != hard:
            self._soft_limit = soft
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))

    def restore(self) -> None:
        """Put back the soft file-size limit that release() lifted, once the dump is closed."""
        if self._soft_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self._soft_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            self._soft_limit = None
