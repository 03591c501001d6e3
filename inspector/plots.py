"""Pictures of dumps: per-layer statistics, histograms, heatmaps, differences, mllama tiles, sweeps.

Each function takes dumps (or a sweep summary), computes what it shows with
numpy, and returns a :class:`Plot`: the matplotlib figure plus the numbers it
drew, so tests can check the picture's data against independent numpy
computations.  Tensors are loaded one at a time.  Rendering is headless (Agg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from inspector import verdict  # noqa: E402
from inspector.compare import compare_dumps  # noqa: E402
from inspector.dump_format import TensorStats  # noqa: E402
from inspector.errors import InspectorError  # noqa: E402
from inspector.identity import layer_of  # noqa: E402
from inspector.mllama.preprocess import CLIP_MEAN, CLIP_STD  # noqa: E402
from inspector.store import Dump, Entry  # noqa: E402
from inspector.sweep_summary import sweep_matrix  # noqa: E402
from inspector.tolerance import Tolerance  # noqa: E402

STATISTICS = ("mean", "std", "min", "max", "absmax", "rms")
FORMATS = (".png", ".svg", ".pdf")
HEATMAP_PERCENTILES = (1.0, 99.0)


@dataclass
class Plot:
    figure: Figure
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() not in FORMATS:
            raise InspectorError(f"{path}: choose an output ending in {', '.join(FORMATS)}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(self.figure)
        return path


def plotted_statistics(stats: TensorStats) -> dict[str, float]:
    """What ``plot stats`` draws, derived from the statistics stored at capture time.

    The store already holds min, max, mean and std over the finite elements
    (float64); abs-max and RMS follow from them (RMS² = std² + mean²), so the
    plot reads the index only, never the tensors.
    """
    return {"mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
            "absmax": max(abs(stats.min), abs(stats.max)), "rms": math.sqrt(stats.std ** 2 + stats.mean ** 2)}


def _x_positions(entries: list[Entry]) -> tuple[list[float], str]:
    """Layer index from a ``-N`` name suffix when every tensor has one, else execution order."""
    layers = [layer_of(e.name) for e in entries]
    if None not in layers and len(set(layers)) == len(layers):
        return layers, "layer"
    return list(range(len(entries))), "execution order"


def stats(dump: Dump, patterns: list[str], eval_index: int = 0, statistic: str | None = None,
          title: str | None = None) -> Plot:
    """Per-layer statistics of the selected tensors of one evaluation: where activations blow up."""
    entries = [e for e in dump.entries(patterns or None) if e.eval_index == eval_index]
    if not entries:
        raise InspectorError(f"no tensor matches {patterns} in evaluation {eval_index}")
    chosen = [statistic] if statistic else list(STATISTICS)
    if statistic and statistic not in STATISTICS:
        raise InspectorError(f"--stat must be one of {', '.join(STATISTICS)}")
    values = {name: [] for name in STATISTICS}
    for entry in entries:
        for name, value in plotted_statistics(entry.stats).items():
            values[name].append(value)
    x, x_label = _x_positions(entries)
    figure, axes = plt.subplots(len(chosen), 1, figsize=(8, 1.9 * len(chosen) + 0.6), sharex=True, squeeze=False)
    for axis, name in zip(axes[:, 0], chosen, strict=True):
        axis.plot(x, values[name], marker="o", markersize=3, label=name)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(x_label)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    selected = ", ".join(patterns) or "all tensors"
    figure.suptitle(title or f"{dump.path.name}: {selected} (eval {dump.evaluation_label(eval_index)})")
    return Plot(figure, {"x": x, "names": [e.name for e in entries], **{k: values[k] for k in chosen}})


def histogram(dump: Dump, entry: Entry, log: bool = False, bins: int = 100, title: str | None = None) -> Plot:
    array = dump.read(entry).astype(np.float64).ravel()
    finite = array[np.isfinite(array)]
    n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    figure, axis = plt.subplots(figsize=(8, 4))
    counts, edges, _ = axis.hist(finite, bins=bins, log=log,
                                 label=f"{finite.size} finite, {n_nan} NaN, {n_inf} Inf")
    axis.legend()
    axis.set_xlabel("value")
    axis.set_ylabel("count")
    axis.set_title(title or f"{entry.name} (eval {dump.evaluation_label(entry.eval_index)}) {entry.shape}")
    return Plot(figure, {"counts": counts, "edges": edges, "n_nan": n_nan, "n_inf": n_inf})


def parse_slice(text: str | None, ndim: int) -> tuple[Any, ...]:
    """``--slice`` in numpy order: comma-separated per axis, each ``:``, ``i``, or ``a:b``.

    Fewer parts than axes are padded with ``:`` on the right; the result must
    leave exactly two axes (rows, columns).  Without ``--slice``, a tensor of
    rank > 2 keeps its last two axes and takes index 0 of the others.
    """
    if text is None:
        parts = ["0"] * max(ndim - 2, 0) + [":"] * min(ndim, 2)
    else:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) > ndim:
            raise InspectorError(f"--slice has {len(parts)} parts for a tensor of {ndim} axes")
        parts += [":"] * (ndim - len(parts))
    result: list[Any] = []
    for part in parts:
        try:
            if ":" in part:
                bounds = [int(b) if b else None for b in part.split(":")]
                result.append(slice(*bounds))
            else:
                result.append(int(part))
        except (ValueError, TypeError):
            raise InspectorError(f"--slice part {part!r} is not an index or a:b range") from None
    if sum(isinstance(r, slice) for r in result) != 2 and ndim >= 2:
        raise InspectorError("--slice must leave exactly two ranges (rows, columns), e.g. '0,:,:'")
    return tuple(result)


def two_d(array: np.ndarray, slicing: str | None) -> np.ndarray:
    if array.ndim == 1:
        return array.reshape(1, -1)
    try:
        return np.asarray(array[parse_slice(slicing, array.ndim)])
    except IndexError as error:
        raise InspectorError(f"--slice is out of range: {error}") from None


def robust_limits(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -1.0, 1.0
    low, high = np.percentile(finite, HEATMAP_PERCENTILES)
    return (float(low), float(high)) if high > low else (float(low) - 1, float(high) + 1)


def heatmap(dump: Dump, entry: Entry, slicing: str | None = None, title: str | None = None) -> Plot:
    view = two_d(dump.read(entry).astype(np.float64), slicing)
    low, high = robust_limits(view)
    figure, axis = plt.subplots(figsize=(9, 5))
    image = axis.imshow(view, aspect="auto", cmap="coolwarm", vmin=low, vmax=high, interpolation="nearest")
    figure.colorbar(image, ax=axis, label=f"value (colour limits: {HEATMAP_PERCENTILES[0]:g}th-"
                                          f"{HEATMAP_PERCENTILES[1]:g}th percentile)")
    axis.set_xlabel("last axis (ggml ne[0])")
    axis.set_ylabel("rows")
    axis.set_title(title or f"{entry.name} (eval {dump.evaluation_label(entry.eval_index)}) {entry.shape}"
                   + (f" [{slicing}]" if slicing else ""))
    return Plot(figure, {"image": view, "limits": (low, high)})


def difference_along_execution(path_a: str | Path, path_b: str | Path, tolerance: Tolerance,
                               patterns: list[str] | None = None, title: str | None = None) -> Plot:
    comparison = compare_dumps(path_a, path_b, tolerance, patterns)
    rows = [row for row in comparison.rows if row.metrics is not None]
    if not rows:
        raise InspectorError("no tensor pair to compare")
    floor = 1e-30  # identical tensors sit on the floor of the log scale
    nmse = [max(row.metrics.nmse, floor) for row in rows]
    max_abs = [max(row.metrics.max_abs_diff, floor) for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    x = list(range(len(rows)))
    top.semilogy(x, nmse, marker=".", label="NMSE")
    if tolerance.nmse:
        top.axhline(tolerance.nmse, color="grey", linestyle="--", label=f"tolerance {tolerance.name}")
    bottom.semilogy(x, max_abs, marker=".", color="tab:orange", label="max |a-b|")
    first = verdict.first_divergence(rows)
    for axis in (top, bottom):
        if first is not None:
            axis.axvline(first, color="red", label=f"first divergence: {rows[first].name}")
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    top.set_ylabel("NMSE")
    bottom.set_ylabel("max |a-b|")
    step = max(1, len(rows) // 30)
    bottom.set_xticks(x[::step], [rows[i].name for i in x[::step]], rotation=70, fontsize=7)
    figure.suptitle(title or f"{Path(path_a).name} vs {Path(path_b).name}")
    return Plot(figure, {"names": [r.name for r in rows], "nmse": [r.metrics.nmse for r in rows],
                         "max_abs_diff": [r.metrics.max_abs_diff for r in rows], "first_divergence": first,
                         "comparison": comparison})


def element_difference(dump_a: Dump, dump_b: Dump, name: str, eval_index: int | None, occurrence: int,
                       slicing: str | None = None, title: str | None = None) -> Plot:
    a = dump_a.read(name, eval_index, occurrence).astype(np.float64)
    b = dump_b.read(name, eval_index, occurrence).astype(np.float64)
    if a.shape != b.shape:
        raise InspectorError(f"{name}: shapes differ ({a.shape} vs {b.shape})")
    difference = two_d(b - a, slicing)
    limit = max(abs(v) for v in robust_limits(difference)) or 1.0
    figure, axis = plt.subplots(figsize=(9, 5))
    image = axis.imshow(difference, aspect="auto", cmap="seismic", vmin=-limit, vmax=limit, interpolation="nearest")
    figure.colorbar(image, ax=axis, label="B - A")
    axis.set_title(title or f"{name}: B - A")
    return Plot(figure, {"difference": difference})


def tiles_to_rgb(inp_raw: np.ndarray, rows: int, cols: int, mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD) -> np.ndarray:
    """Undo the normalisation and lay the tiles out in their grid: (rows*S, cols*S, 3) uint8."""
    tiles, _, size, _ = inp_raw.shape
    if rows * cols > tiles:
        raise InspectorError(f"a {rows}x{cols} grid needs {rows * cols} tiles; inp_raw has {tiles}")
    pixels = inp_raw[: rows * cols].astype(np.float64) * np.array(std).reshape(1, 3, 1, 1) \
        + np.array(mean).reshape(1, 3, 1, 1)
    grid = pixels.reshape(rows, cols, 3, size, size).transpose(0, 3, 1, 4, 2).reshape(rows * size, cols * size, 3)
    return np.clip(np.round(grid * 255), 0, 255).astype(np.uint8)


def grid_of(dump: Dump) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """The tile grid and normalisation of a preprocess/encode dump (one row of all tiles otherwise)."""
    geometry = dump.config.get("geometry") or {}
    settings = dump.config.get("preprocess") or {}
    mean = tuple(settings.get("mean", CLIP_MEAN))
    std = tuple(settings.get("std", CLIP_STD))
    if "grid_rows" in geometry:
        return int(geometry["grid_rows"]), int(geometry["grid_cols"]), mean, std
    tiles = dump.find("inp_raw").shape[0] if dump.entries(["inp_raw"]) else 1
    return 1, tiles, mean, std


def image(dumps: list[Dump], name: str = "inp_raw", title: str | None = None) -> Plot:
    """inp_raw tiles back to RGB; two dumps side by side with a difference panel."""
    pictures = []
    # An imported inp_raw has no geometry of its own: lay it out like the dump that has one.
    with_geometry = [d for d in dumps if "grid_rows" in (d.config.get("geometry") or {})]
    rows, cols, mean, std = grid_of(with_geometry[0] if with_geometry else dumps[0])
    for dump in dumps:
        raw = dump.read(name)
        if raw.ndim != 4 or raw.shape[1] != 3:
            raise InspectorError(f"{dump.path}: {name} has shape {raw.shape}, not (tiles, 3, size, size)")
        pictures.append(tiles_to_rgb(raw, rows, cols, mean, std))
    panels = list(pictures)
    labels = [d.path.name for d in dumps]
    if len(pictures) == 2:
        if pictures[0].shape != pictures[1].shape:
            raise InspectorError(f"the tile grids differ: {pictures[0].shape[:2]} vs {pictures[1].shape[:2]}")
        difference = np.abs(pictures[0].astype(np.int16) - pictures[1].astype(np.int16)).max(axis=2)
        panels.append(difference)
        labels.append("|A - B| (max over channels)")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), squeeze=False)
    for axis, panel, label in zip(axes[0], panels, labels, strict=True):
        axis.imshow(panel, cmap="magma" if panel.ndim == 2 else None, interpolation="nearest")
        axis.set_title(label, fontsize=9)
        size = dumps[0].read(name).shape[-1]
        for edge in range(size, panel.shape[1], size):
            axis.axvline(edge - 0.5, color="yellow", linewidth=0.8)
        for edge in range(size, panel.shape[0], size):
            axis.axhline(edge - 0.5, color="yellow", linewidth=0.8)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title or f"{name} tiles (grid lines between tiles; padding shows as black)")
    return Plot(figure, {"pictures": pictures, "difference": panels[2] if len(panels) == 3 else None})


def sweep(summary: dict[str, Any], per_layer: bool = False, title: str | None = None) -> Plot:
    """The sweep matrix as an NMSE heatmap (log10), cells annotated with the buffer kind."""
    grid = sweep_matrix(summary, per_layer)
    labels, row_names = grid.columns, grid.rows
    if not labels or not row_names:
        raise InspectorError("the sweep summary has nothing to plot")
    floor = 1e-30
    matrix = np.array([[floor if cell is None else max(cell.nmse or floor, floor) for cell in cells]
                       for cells in grid.cells])
    buffers = [["" if cell is None else cell.buffer for cell in cells] for cells in grid.cells]
    values = np.log10(matrix)
    figure, axis = plt.subplots(figsize=(2 + 1.6 * len(labels), 1 + 0.35 * len(row_names)))
    image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=-30, vmax=max(0.0, float(values.max())))
    figure.colorbar(image, ax=axis, label="log10 NMSE vs reference (-30: identical)")
    axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    axis.set_yticks(range(len(row_names)), row_names, fontsize=7)
    for row in range(len(row_names)):
        for column in range(len(labels)):
            axis.text(column, row, buffers[row][column], ha="center", va="center", fontsize=6, color="white")
    axis.set_title(title or f"sweep vs {summary['reference']} (cell text: buffer)")
    return Plot(figure, {"nmse": matrix, "rows": row_names, "columns": labels, "buffers": buffers})
