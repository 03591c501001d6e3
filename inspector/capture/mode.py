"""How a graph's tensors are taken: computed in one piece and copied after, or asked for node by node.

Why two ways: asking the scheduler for a node through the eval callback
splits the graph there and synchronises (no fusion, no CUDA graphs), so a
capture of everything computes a graph of one-node pieces.  Flagging the
selected tensors as graph outputs when the scheduler plans its buffers
(``ggml_backend_sched_reserve``) and allocates the graph keeps their memory
to the end instead: the graph runs in one piece, as unhooked, and is read
after.  The price is compute-buffer memory (every kept tensor has its own),
bounded by ``max_mib``; past the bound, and wherever the plan could not be
flagged, the per-node callback is the fallback and the dump says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNSPLIT = "unsplit"
CALLBACK = "callback"
MODES = (UNSPLIT, CALLBACK)
DEFAULT_UNSPLIT_MAX_MIB = 4096


@dataclass(frozen=True)
class CaptureMode:
    """``unsplit`` (the default, with the callback as fallback) or ``callback`` (node by node, on request)."""

    name: str = UNSPLIT
    # The most compute-buffer memory the tensors kept to the end of a compute may take, in MiB.
    unsplit_max_mib: int = DEFAULT_UNSPLIT_MAX_MIB

    def __post_init__(self) -> None:
        if self.name not in MODES:
            raise ValueError(f"capture mode {self.name!r} is not one of {', '.join(MODES)}")
        if not 0 <= self.unsplit_max_mib <= 1 << 40:
            raise ValueError(f"unsplit bound {self.unsplit_max_mib} MiB is out of range")

    @property
    def unsplit(self) -> bool:
        return self.name == UNSPLIT

    @property
    def max_bytes(self) -> int:
        return self.unsplit_max_mib << 20

    def environment(self) -> dict[str, str]:
        """The native hook's variables for this mode (inspector/native/README.md)."""
        return {"GGML_INSPECTOR_MODE": self.name, "GGML_INSPECTOR_UNSPLIT_MAX_MIB": str(self.unsplit_max_mib)}

    def describe(self) -> dict[str, Any]:
        """What a dump's config records of the mode asked for; each evaluation records the mode it ran."""
        return {"requested": self.name, "unsplit_max_mib": self.unsplit_max_mib}


DEFAULT_MODE = CaptureMode()
