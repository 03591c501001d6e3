"""Pictures of dumps: per-layer statistics, histograms, heatmaps, differences, mllama tiles, sweeps.

Each function takes dumps (or a sweep summary), computes what it shows with
numpy, and returns a :class:`Plot`: the matplotlib figure plus the numbers it
drew, so tests can check the picture's data against independent numpy
computations.  Tensors are loaded one at a time.  Rendering is headless (Agg).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from inspector.compare import verdict  # noqa: E402
from inspector.compare.align import align  # noqa: E402
from inspector.compare.reference import LayerError  # noqa: E402
from inspector.compare.rules import Rules  # noqa: E402
from inspector.compare.runs import compare_dumps  # noqa: E402
from inspector.compare.tolerance import Tolerance, ToleranceRequest  # noqa: E402
from inspector.constants import MAX_HEATMAP_SIDE, STREAM_CHUNK_BYTES  # noqa: E402
from inspector.dump.format import TensorStats  # noqa: E402
from inspector.dump.reader import Dump, Entry  # noqa: E402
from inspector.errors import InspectorError  # noqa: E402
from inspector.files.outputs import atomic_output  # noqa: E402
from inspector.identity import layer_of  # noqa: E402
from inspector.mllama.preprocess import CLIP_MEAN, CLIP_STD  # noqa: E402
from inspector.sweep.summary import sweep_matrix  # noqa: E402

STATISTICS = ("mean", "std", "min", "max", "absmax", "rms")
FORMATS = (".png", ".svg", ".pdf")
HEATMAP_PERCENTILES = (1.0, 99.0)
# Axis and colour limits are kept within ±this: matplotlib computes ranges such as vmax - vmin, which
# overflow float64 for values near ±1.8e308 (a hostile or broken tensor) and then fail to lay out.
PLOT_LIMIT = 1e300


@dataclass
class Plot:
    figure: Figure
    data: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
        """Write the figure to ``path`` (replacing an older one, never one of ``inputs``), whole or not at all."""
        path = Path(path)
        if path.suffix.lower() not in FORMATS:
            raise InspectorError(f"{path}: choose an output ending in {', '.join(FORMATS)}")
        try:
            with atomic_output(path, overwrite=True, inputs=inputs) as temporary:
                self.figure.savefig(temporary, dpi=110, bbox_inches="tight")
        finally:
            plt.close(self.figure)
        return path


def plotted_statistics(stats: TensorStats) -> dict[str, float]:
    """What ``plot stats`` draws, derived from the statistics stored at capture time.

    The store already holds min, max, mean and std over the finite elements
    (float64); abs-max and RMS follow from them (RMS² = std² + mean²), so the
    plot reads the index only, never the tensors.
    """
    values = {"mean": stats.mean, "std": stats.std, "min": stats.min, "max": stats.max,
              "absmax": max(abs(stats.min), abs(stats.max)), "rms": math.hypot(stats.std, stats.mean)}
    # Beyond ±PLOT_LIMIT matplotlib's axis cannot be laid out (its range overflows float64).
    return {name: max(-PLOT_LIMIT, min(PLOT_LIMIT, value)) if math.isfinite(value) else value
            for name, value in values.items()}


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


def bin_edges(stats: TensorStats, bins: int) -> np.ndarray:
    """Fixed edges from the index's min and max of the finite values, as numpy's automatic range picks them.

    Known before a value is read, so the counts can be built piece by piece.
    """
    low, high = stats.min, stats.max
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        low, high = 0.0, 1.0
    # Beyond ±PLOT_LIMIT the axis cannot be drawn; values past it count as outside the range.
    low, high = max(low, -PLOT_LIMIT), min(high, PLOT_LIMIT)
    if low >= high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, bins + 1)


def histogram(dump: Dump, entry: Entry, log: bool = False, bins: int = 100, title: str | None = None) -> Plot:
    """Value histogram, counted piece by piece: memory is one piece of the tensor, whatever its size."""
    dump.require_values(entry)
    edges = bin_edges(entry.stats, bins)
    counts = np.zeros(bins, dtype=np.int64)
    n_finite = n_nan = n_inf = 0
    for piece in dump.iter_chunks(entry):
        values = piece.astype(np.float64, copy=False)
        nan, inf = np.isnan(values), np.isinf(values)
        n_nan, n_inf = n_nan + int(nan.sum()), n_inf + int(inf.sum())
        finite = values[~(nan | inf)]
        n_finite += finite.size
        counts += np.histogram(finite, bins=bins, range=(edges[0], edges[-1]))[0]  # numpy's uniform fast path
    outside = n_finite - int(counts.sum())
    label = f"{n_finite} finite, {n_nan} NaN, {n_inf} Inf" + (
        f", {outside} outside the index's range" if outside else "")
    figure, axis = plt.subplots(figsize=(8, 4))
    counts, edges, _ = axis.hist(edges[:-1], bins=edges, weights=counts, log=log, label=label)
    axis.legend()
    axis.set_xlabel("value")
    axis.set_ylabel("count")
    axis.set_title(title or f"{entry.name} (eval {dump.evaluation_label(entry.eval_index)}) {entry.shape}")
    return Plot(figure, {"counts": counts, "edges": edges, "n_nan": n_nan, "n_inf": n_inf, "outside": outside})


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


def selected_positions(shape: tuple[int, ...], slicing: str | None,
                       max_side: int = MAX_HEATMAP_SIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """Flat C-order positions of the 2-D selection ``--slice`` makes of ``shape``, and the subsampling steps.

    A side longer than ``max_side`` keeps every k-th row or column, so the
    positions (and what is read for them) stay bounded whatever the tensor.
    """
    if len(shape) <= 1:
        axes: list[range | int] = [range(1), range(shape[0] if shape else 1)]
        strides = [0, 1]
    else:
        axes, strides = [], []
        stride = 1
        for n in reversed(shape):
            strides.insert(0, stride)
            stride *= n
        try:
            axes = [range(n)[part] for n, part in zip(shape, parse_slice(slicing, len(shape)), strict=True)]
        except IndexError as error:
            raise InspectorError(f"--slice is out of range: {error}") from None
        except ValueError as error:
            raise InspectorError(f"--slice: {error}") from None
    base = sum(axis * stride for axis, stride in zip(axes, strides, strict=True) if isinstance(axis, int))
    (rows, row_stride), (columns, column_stride) = [(axis, stride) for axis, stride in zip(axes, strides, strict=True)
                                                    if isinstance(axis, range)]
    steps = (max(1, -(-len(rows) // max_side)), max(1, -(-len(columns) // max_side)))
    rows, columns = rows[::steps[0]], columns[::steps[1]]
    if not rows or not columns:
        raise InspectorError(f"the slice of a tensor of shape {shape} is empty: nothing to draw")
    positions = (base + np.asarray(rows, dtype=np.int64)[:, None] * row_stride
                 + np.asarray(columns, dtype=np.int64)[None, :] * column_stride)
    return positions, steps


def gather(dump: Dump, entry: Entry, positions: np.ndarray) -> np.ndarray:
    """The values at flat ``positions`` as float64, reading only the pieces of the tensor that hold them."""
    dump.require_values(entry)
    flat = positions.reshape(-1)
    order = np.argsort(flat, kind="stable")
    wanted = flat[order]
    values = np.empty(flat.size, dtype=np.float64)
    step = max(1, STREAM_CHUNK_BYTES // np.dtype(entry.dtype).itemsize)
    i = 0
    while i < wanted.size:
        start = int(wanted[i]) // step * step
        piece = dump.read_range(entry, start, start + step)
        j = int(np.searchsorted(wanted, start + step, side="left"))
        values[order[i:j]] = piece[wanted[i:j] - start]
        i = j
    return values.reshape(positions.shape)


def _subsampled(steps: tuple[int, int]) -> str:
    return "" if steps == (1, 1) else f" (every {steps[0]}th row, {steps[1]}th column)"


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
    with np.errstate(over="ignore", invalid="ignore"):
        percentiles = np.percentile(finite, HEATMAP_PERCENTILES)
    # Interpolating between values near ±1.8e308 can overflow; past PLOT_LIMIT matplotlib would.
    low, high = np.clip(np.nan_to_num(percentiles, nan=0.0, posinf=PLOT_LIMIT, neginf=-PLOT_LIMIT),
                        -PLOT_LIMIT, PLOT_LIMIT).tolist()
    return (low, high) if high > low else (low - 1, high + 1)


def heatmap(dump: Dump, entry: Entry, slicing: str | None = None, title: str | None = None) -> Plot:
    """A 2-D slice drawn with robust limits; only the bytes holding the (subsampled) slice are read."""
    positions, steps = selected_positions(entry.shape, slicing)
    view = gather(dump, entry, positions)
    low, high = robust_limits(view)
    figure, axis = plt.subplots(figsize=(9, 5))
    image = axis.imshow(np.clip(view, -PLOT_LIMIT, PLOT_LIMIT), aspect="auto", cmap="coolwarm", vmin=low, vmax=high,
                        interpolation="nearest")
    figure.colorbar(image, ax=axis, label=f"value (colour limits: {HEATMAP_PERCENTILES[0]:g}th-"
                                          f"{HEATMAP_PERCENTILES[1]:g}th percentile)")
    axis.set_xlabel("last axis (ggml ne[0])")
    axis.set_ylabel("rows")
    axis.set_title(title or f"{entry.name} (eval {dump.evaluation_label(entry.eval_index)}) {entry.shape}"
                   + (f" [{slicing}]" if slicing else "") + _subsampled(steps))
    return Plot(figure, {"image": view, "limits": (low, high), "steps": steps})


def difference_along_execution(path_a: str | Path, path_b: str | Path, tolerance: Tolerance | ToleranceRequest,
                               patterns: list[str] | None = None, title: str | None = None,
                               rules: Rules | None = None) -> Plot:
    comparison = compare_dumps(path_a, path_b, tolerance, patterns, rules=rules)
    tolerance = comparison.tolerance
    rows = [row for row in comparison.rows if row.metrics is not None]
    if not rows:
        raise InspectorError("no tensor pair to compare")
    floor = 1e-30  # identical tensors sit on the floor of the log scale
    nmse = [max(row.metrics.nmse, floor) for row in rows]
    max_abs = [max(row.metrics.max_abs_diff, floor) for row in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    x = list(range(len(rows)))
    top.semilogy(x, nmse, marker=".", label="NMSE")
    if rules is not None:
        # Each tensor's own limit: its rule's NMSE, or the preset's (none drawn where a rule sets no NMSE).
        limits = [r.threshold.nmse if r.threshold is not None and r.threshold.nmse else math.nan for r in rows]
        top.step(x, [v if math.isfinite(v) else math.nan for v in limits], where="mid", color="grey",
                 linestyle="--", label=f"tolerance ({rules.describe()})")
    elif tolerance.nmse:
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


def error_growth(series: dict[str, list[LayerError]], title: str | None = None) -> Plot:
    """NMSE of the layer outputs layer by layer (log scale), one line per comparison, with its tolerance band.

    ``series`` maps a label (``A vs R``) to the comparison's per-layer errors
    (``inspector.compare.reference.layer_errors``).  The band is the NMSE each
    layer's preset or rule allows, shaded below it; the first layer out of
    tolerance is marked on each line.
    """
    if not any(series.values()):
        raise InspectorError("no layer output was compared (l_out-N, or any tensor named with a -N layer suffix)")
    # The axis starts a decade and a half under the smallest error or limit; identical layers sit on that floor.
    positive = [v for errors in series.values() for e in errors for v in (e.nmse, e.limit or 0.0)
                if v and math.isfinite(v)]
    floor = min(positive, default=1e-12) / 30
    figure, axis = plt.subplots(figsize=(9, 4.5))
    data: dict[str, Any] = {"series": {}, "first_out": {}}
    for index, (label, errors) in enumerate(series.items()):
        colour = f"C{index}"
        layers = [e.layer for e in errors]
        values = [max(e.nmse, floor) if math.isfinite(e.nmse) else PLOT_LIMIT for e in errors]
        axis.semilogy(layers, values, marker="o", markersize=4, color=colour, label=f"{label}: NMSE")
        limits = [e.limit if e.limit else math.nan for e in errors]
        if any(math.isfinite(v) for v in limits):
            axis.fill_between(layers, floor, limits, step="mid", color=colour, alpha=0.08)
            axis.step(layers, limits, where="mid", color=colour, linestyle="--", linewidth=1,
                      label=f"{label}: tolerance")
        first = next((e for e in errors if e.status in verdict.DIVERGING), None)
        if first is not None:
            axis.plot([first.layer], [max(first.nmse, floor)], marker="x", markersize=12, markeredgewidth=2.5,
                      color="red", zorder=5)
        data["series"][label] = {"layers": layers, "nmse": [e.nmse for e in errors], "limits": limits,
                                 "names": [e.name for e in errors]}
        data["first_out"][label] = first.name if first is not None else None
    axis.set_xlabel("layer")
    axis.set_ylabel("NMSE of the layer output")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(bottom=floor)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    axis.set_title(title or "error growth layer by layer (x: first layer out of tolerance)")
    return Plot(figure, data)


def _aligned_evaluation(dump_a: Dump, dump_b: Dump, eval_index: int) -> int:
    """B's evaluation that computed what A's ``eval_index`` did (a warm-up in B shifts every index)."""
    alignment = align(dump_a.evaluations, dump_b.evaluations)
    if any(eval_index in group.evals_a for group in alignment.splits):
        raise InspectorError(f"A's evaluation {eval_index} was batched otherwise in B, so no evaluation of B holds "
                             "the same rows; compare compares them per token")
    b_of_a = alignment.b_of_a()
    if eval_index not in b_of_a:
        raise InspectorError(f"A's evaluation {eval_index} computed nothing B computed ({alignment.summary()})")
    return b_of_a[eval_index]


def element_difference(dump_a: Dump, dump_b: Dump, name: str, eval_index: int | None, occurrence: int,
                       slicing: str | None = None, title: str | None = None) -> Plot:
    entry_a = dump_a.find(name, eval_index, occurrence)
    entry_b = dump_b.find(name, _aligned_evaluation(dump_a, dump_b, entry_a.eval_index), occurrence)
    if entry_a.shape != entry_b.shape:
        raise InspectorError(f"{name}: shapes differ ({entry_a.shape} vs {entry_b.shape})")
    positions, _steps = selected_positions(entry_a.shape, slicing)
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or extremes of opposite sign
        difference = gather(dump_b, entry_b, positions) - gather(dump_a, entry_a, positions)
    limit = max(abs(v) for v in robust_limits(difference)) or 1.0
    figure, axis = plt.subplots(figsize=(9, 5))
    image = axis.imshow(np.clip(difference, -PLOT_LIMIT, PLOT_LIMIT), aspect="auto", cmap="seismic", vmin=-limit,
                        vmax=limit, interpolation="nearest")
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
        size = dumps[0].find(name).shape[-1]
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
