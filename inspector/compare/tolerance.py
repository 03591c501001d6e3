"""Tolerance presets: when two tensors count as "the same" for ``compare``.

A tensor passes when its NMSE is at most ``nmse`` and, if ``atol``/``rtol``
are set, every finite element satisfies ``|a-b| <= atol + rtol*|b|``; a NaN or
Inf in one run where the other has a number always fails.

| preset | NMSE | reasoning |
| --- | --- | --- |
| exact | bit-identical only | same build, same backend, same graph: anything else is a change |
| f32 | 1e-7 | ggml's test-backend-ops default (``max_nmse_err``) for f32 ops |
| f16 | 5e-4 | test-backend-ops' bound for ops with f16 intermediates (flash attention) |
| quant | 5e-3 | our choice for quantized KV caches / weights: q8_0 alone gives ~1e-5, q4 types ~1e-3 |

The default is ``f32``: runs that differ only in offload or thread count sum
in another order, which NMSE 1e-7 tolerates while a real bug does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from inspector.errors import InspectorError


@dataclass(frozen=True)
class Tolerance:
    name: str
    nmse: float | None
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def exact(self) -> bool:
        return self.nmse is None

    def with_overrides(self, nmse: float | None, atol: float | None, rtol: float | None) -> Tolerance:
        """A preset with user thresholds replacing its own (``--nmse``, ``--atol``, ``--rtol``)."""
        if nmse is None and atol is None and rtol is None:
            return self
        return Tolerance(
            name=f"{self.name}+custom",
            nmse=nmse if nmse is not None else (self.nmse if self.nmse is not None else 0.0),
            atol=atol if atol is not None else self.atol,
            rtol=rtol if rtol is not None else self.rtol,
        )


PRESETS = {
    "exact": Tolerance("exact", None),
    "f32": Tolerance("f32", 1e-7),
    "f16": Tolerance("f16", 5e-4),
    "quant": Tolerance("quant", 5e-3),
}
DEFAULT_PRESET = "f32"


def preset(name: str) -> Tolerance:
    try:
        return PRESETS[name]
    except KeyError:
        raise InspectorError(f"unknown tolerance {name!r}; choose one of {', '.join(PRESETS)}") from None
