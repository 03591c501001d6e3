"""How preprocessing reads: the geometry sentence of ``preprocess`` and the verdict of ``diff-preprocess``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from inspector.formatting import number, table
from inspector.mllama.diagnose import Diagnosis
from inspector.mllama.preprocess import Geometry


def geometry_sentence(image: str, geometry: Geometry, output: str) -> str:
    g = geometry
    return (f"{image}: {g.original_wh[0]}×{g.original_wh[1]} (w×h) -> resized {g.resized_wh[0]}×{g.resized_wh[1]}"
            f" on canvas {g.canvas_wh[0]}×{g.canvas_wh[1]} ({g.grid_rows}×{g.grid_cols} tiles, rows×columns), "
            f"aspect ratio id {g.aspect_ratio_id} -> {output}")


def diagnosis_json(diagnosis: Diagnosis) -> dict[str, Any]:
    best = diagnosis.best
    return {
        "identical": diagnosis.baseline.identical,
        "baseline": asdict(diagnosis.baseline),
        "explanation": asdict(best) if best else None,
        "hypotheses": [asdict(h) for h in diagnosis.ranked],
        "geometry": diagnosis.reference.geometry.as_dict(),
        "tile_channel_stats": [asdict(s) for s in diagnosis.stats],
    }


def diagnosis_text(diagnosis: Diagnosis) -> str:
    if diagnosis.baseline.identical:
        return "identical: the other inp_raw is bit-identical to the Hugging Face reference"
    best = diagnosis.best
    if best:
        exact = "exactly" if best.identical else f"to NMSE {number(best.nmse)}"
        lines = [f"most likely: {best.name}: {best.explanation} (reproduces the other inp_raw {exact})"]
    else:
        lines = ["no single known cause reproduces the other inp_raw; closest hypotheses below"]
    lines.append(f"reference vs other: NMSE {number(diagnosis.baseline.nmse)}, "
                 f"max |a-b| {number(diagnosis.baseline.max_abs_diff)}")
    g = diagnosis.reference.geometry
    lines.append(f"reference geometry: {g.original_wh[0]}×{g.original_wh[1]} (w×h) -> {g.resized_wh[0]}×"
                 f"{g.resized_wh[1]} on {g.canvas_wh[0]}×{g.canvas_wh[1]}, {g.num_tiles} tiles, aspect ratio id "
                 f"{g.aspect_ratio_id}")
    lines.append(table(["hypothesis", "nmse", "max|a-b|", "explanation"],
                       [[h.name, number(h.nmse), number(h.max_abs_diff), h.explanation]
                        for h in diagnosis.ranked[:8]], right_align={1, 2}))
    lines.append(table(["tile", "channel", "mean ref", "mean other", "std ref", "std other", "nmse"],
                       [[str(s.tile), "RGB"[s.channel], number(s.mean_reference), number(s.mean_other),
                         number(s.std_reference), number(s.std_other), number(s.nmse)] for s in diagnosis.stats],
                       right_align={0, 2, 3, 4, 5, 6}))
    return "\n".join(lines)
