"""Tolerance presets: when two tensors count as "the same" for ``compare``, and which preset two runs call for.

A tensor passes when its NMSE is at most ``nmse`` and, if ``atol``/``rtol``
are set, every finite element satisfies ``|a-b| <= atol + rtol*|b|``; a NaN or
Inf in one run where the other has a number always fails.

| preset | NMSE | reasoning |
| --- | --- | --- |
| exact | bit-identical only | same build, same backend, same graph: anything else is a change |
| f32 | 1e-7 | ggml's test-backend-ops default (``max_nmse_err``) for f32 ops |
| f16 | 5e-4 | test-backend-ops' bound for ops with f16 intermediates (flash attention) |
| quant | 5e-3 | our choice for quantized KV caches and weights (measured below) |

Without ``--tolerance``, ``compare`` (and ``report``, ``plot diff``) choose the
preset from what both dumps recorded (:func:`choose_preset`): the loosest one
any row below calls for, ``f32`` when none does.  A setting one run does not
record (an ``exec`` of another program records no cache type) calls for
nothing.

| the runs | preset | measured: worst per-token NMSE, any layer |
| --- | --- | --- |
| weights F32 vs F16 (``model_facts.file_type``) | f16 | 1.4e-6 |
| weights F32 vs a quantized type | quant | 7.7e-4 (Q8_0); 6.2e-2 (Q4_K_M: another model, over any preset) |
| a quantized KV cache in one run only | quant | 8.8e-5 (float weights), 1.8e-3 (Q4_K_M) |
| quantized weights, and another batch split, flash attention or KV cache type | quant | 6.8e-4 to 1.7e-3 |
| float weights, and KV cache f16 vs f32 or flash attention on vs off | f16 | 2.3e-7 to 1.2e-6 |
| F16/BF16 weights and another batch split | f16 | 4.5e-7 |
| F32 weights and another batch split | f32 | 2.2e-8 |
| only threads differ | f32 | 0 (bit-identical) |

Measured on generated llamas (8 layers, n_embd 256, n_ff 768, the same seed
for every type; Q4_K_M also with 16 layers), 16 prompt tokens at ``-ub 512``
against ``-ub 4``, ``-ub 3`` and ``-ub 1``, one and two threads, on the CPU;
each figure is the worst token of the worst layer.  A quantized model
quantizes its activations too (Q8_0/Q8_K blocks) before each matmul, so a
rounding difference anywhere flips quantization steps downstream: a Q4_K_M
model's ``-ub 512`` vs ``-ub 1`` went from 3e-5 at layer 0 to 6.8e-4 by layer
15 and stays there (the issue measured 1e-15 at layer 0 to 2.6e-4 at layer 17
of a real 270M Q4_K_M, ``-ub 512`` vs ``-ub 4``).  The margins: ``quant`` 2.8
over the worst (a cache type change on Q4_K_M), 7 over batch splits; ``f16``
350; ``f32`` 4.5 over float32 weights' re-split sums.  Placement (``-ngl``,
devices) and thread counts do not loosen the default: a kernel that differs
between backends is what a comparison is there to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from inspector.errors import InspectorError

# Weight types (gguf-py's ftype names, as model_facts.file_type records them) and KV cache types that are floats.
FLOAT_WEIGHTS = frozenset({"F64", "F32", "F16", "BF16"})
FLOAT_CACHES = frozenset({"f64", "f32", "f16", "bf16"})


@dataclass(frozen=True)
class Tolerance:
    name: str
    nmse: float | None
    atol: float = 0.0
    rtol: float = 0.0
    # Further limits only a tolerance rule sets (``compare --rules``, inspector.compare.rules): None checks nothing.
    max_abs: float | None = None
    min_cosine: float | None = None
    # Why this preset: "tolerance quant: weights Q4_K_M, ...", shown by compare's text, --json and report.
    reason: str = field(default="", compare=False)

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
            reason=f"{self.reason}; --nmse/--atol/--rtol replace its thresholds" if self.reason else "",
        )


PRESETS = {
    "exact": Tolerance("exact", None),
    "f32": Tolerance("f32", 1e-7),
    "f16": Tolerance("f16", 5e-4),
    "quant": Tolerance("quant", 5e-3),
}
DEFAULT_PRESET = "f32"
LOOSENESS = ("f32", "f16", "quant")


def preset(name: str) -> Tolerance:
    try:
        return PRESETS[name]
    except KeyError:
        raise InspectorError(f"unknown tolerance {name!r}; choose one of {', '.join(PRESETS)}") from None


def _pair(config_a: dict[str, Any], config_b: dict[str, Any], *keys: str) -> tuple[Any, Any]:
    """A nested setting of both runs (None where a run does not record it)."""
    def get(config: dict[str, Any]) -> Any:
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    return get(config_a), get(config_b)


def _recorded_differently(values: tuple[Any, Any]) -> bool:
    """Both runs record the setting and it differs: unrecorded is not different."""
    return None not in values and values[0] != values[1]


def choose_preset(config_a: dict[str, Any], config_b: dict[str, Any], splits_differ: bool) -> Tolerance:
    """The preset two runs call for (rule table in this module's docstring), its ``reason`` saying why.

    ``config_a``/``config_b`` are the dumps' recorded configurations;
    ``splits_differ``: the runs computed the same tokens in other batch splits
    (:func:`batch_splits_differ`).  A setting one run does not record (an
    ``exec`` of another program records no cache type) neither loosens nor
    tightens the choice.
    """
    weights = _pair(config_a, config_b, "model_facts", "file_type")
    known = list(dict.fromkeys(w for w in weights if isinstance(w, str)))
    quantized = [w for w in known if w not in FLOAT_WEIGHTS]
    # What another rounding costs downstream: quantized weights quantize their activations, which amplifies it.
    amplified = ("quant", f" with {'/'.join(quantized)} weights (their quantized activations amplify rounding "
                          "differences)") if quantized else ("f16", " (f16 rounding)")
    causes: list[tuple[str, str]] = []
    if _recorded_differently(weights):
        if quantized:
            causes.append(("quant", f"weights {weights[0]} vs {weights[1]} (quantization error)"))
        elif set(weights) <= {"F32", "F64"}:  # a float64 reference against a float32 run
            causes.append(("f32", f"weights {weights[0]} vs {weights[1]} (float32 rounding)"))
        else:
            causes.append(("f16", f"weights {weights[0]} vs {weights[1]} (f16 rounding)"))
    caches = _pair(config_a, config_b, "type_k") + _pair(config_a, config_b, "type_v")
    if _recorded_differently(caches[:2]) or _recorded_differently(caches[2:]):
        text = f"KV cache {caches[0]}/{caches[2]} vs {caches[1]}/{caches[3]}"
        if any(isinstance(t, str) and t not in FLOAT_CACHES for t in caches):
            causes.append(("quant", f"{text} (quantized cache)"))
        else:
            causes.append((amplified[0], text + amplified[1]))
    flash = _pair(config_a, config_b, "flash_attn")
    if _recorded_differently(flash):
        causes.append((amplified[0], f"flash attention {flash[0]} vs {flash[1]}{amplified[1]}"))
    if splits_differ:
        causes.append(_split_cause(known, quantized))
    chosen = max((name for name, _ in causes), key=LOOSENESS.index, default=DEFAULT_PRESET)
    deciding = [text for name, text in causes if name == chosen] or [
        "no recorded setting makes the runs round differently (weight and KV cache types, flash attention, batch "
        "splits)"]
    return replace(PRESETS[chosen], reason=f"tolerance {chosen}: {'; '.join(deciding)}")


def _split_cause(known: list[str], quantized: list[str]) -> tuple[str, str]:
    """What other batch splits call for, by the weights' types (module docstring)."""
    if quantized:
        return "quant", f"batch splits differ with {'/'.join(quantized)} weights (quantized matmul kernels differ " \
                        "by batch size)"
    if any(w != "F32" for w in known):
        return "f16", f"batch splits differ with {'/'.join(known)} weights (f16 matmuls sum in another order)"
    if known:
        return "f32", "batch splits differ with F32 weights (float32 sums in another order)"
    return "f32", ("batch splits differ, but neither run recorded its weight types (exec -m MODEL records them; "
                   "quantized weights need --tolerance quant)")


@dataclass(frozen=True)
class ToleranceRequest:
    """What the user asked for: a preset (None: the one the runs call for) and thresholds replacing its own.

    ``compare_dumps`` resolves it once it has aligned the runs, since
    whether their batch splits differ is the alignment's finding.
    """

    preset_name: str | None = None
    nmse: float | None = None
    atol: float | None = None
    rtol: float | None = None

    def resolve(self, config_a: dict[str, Any], config_b: dict[str, Any], splits_differ: bool) -> Tolerance:
        if self.preset_name is None:
            chosen = choose_preset(config_a, config_b, splits_differ)
        else:
            chosen = replace(preset(self.preset_name), reason=f"tolerance {self.preset_name}: named with --tolerance")
        return chosen.with_overrides(self.nmse, self.atol, self.rtol)
