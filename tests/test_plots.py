"""Every plot kind from real captures; the drawn data checked against numpy; files valid in each format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import rewrite_tensor, run_capture
from PIL import Image
from test_cli import assert_one_line_error, cli

from inspector import open_dump
from inspector.compare.tolerance import preset
from inspector.errors import InspectorError
from inspector.present import plots
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plots")
    clean = write_tiny_llama(folder / "a.gguf", TinyLlamaSpec(n_layer=4, seed=21))
    perturbed = write_tiny_llama(folder / "b.gguf", TinyLlamaSpec(n_layer=4, seed=21, perturb=(2, 3, 1.0)))
    # Every prompt token's rows, last layer and logits included: the plots are tokens x channels.
    run_capture(clean, folder / "a.h5", ("l_out-*", "attn_norm-*", "result_output"), all_logits=True)
    run_capture(perturbed, folder / "b.h5", ("l_out-*", "attn_norm-*", "result_output"), all_logits=True)
    image = folder / "image.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 700, 3), dtype=np.uint8)).save(image)
    assert cli("preprocess", image, "-o", folder / "pre.h5").returncode == 0
    return {"a": folder / "a.h5", "b": folder / "b.h5", "image": image, "pre": folder / "pre.h5",
            "folder": folder}


def test_stats_draw_each_captured_tensors_statistics(runs):
    with open_dump(runs["a"]) as dump:
        plot = plots.stats(dump, ["l_out-*"])
        expected = [dump.read(f"l_out-{i}").astype(np.float64) for i in range(4)]
    axes = plot.figure.axes
    assert [axis.get_ylabel() for axis in axes] == list(plots.STATISTICS)
    drawn = {axis.get_ylabel(): axis.lines[0] for axis in axes}
    np.testing.assert_array_equal(drawn["std"].get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(drawn["std"].get_ydata(), [np.std(a) for a in expected], rtol=1e-12)
    np.testing.assert_allclose(drawn["mean"].get_ydata(), [np.mean(a) for a in expected], rtol=1e-12)
    np.testing.assert_allclose(drawn["absmax"].get_ydata(), [np.abs(a).max() for a in expected], rtol=1e-12)
    np.testing.assert_allclose(drawn["rms"].get_ydata(), [np.sqrt(np.mean(a * a)) for a in expected], rtol=1e-12)


def test_hist_counts_and_nonfinite_legend(runs, tmp_path):
    poisoned = tmp_path / "poisoned.h5"
    shutil.copy(runs["a"], poisoned)

    def poison(values):
        values[0, :3] = [np.nan, np.inf, np.nan]
        return values

    data = rewrite_tensor(poisoned, "l_out-1", poison)
    with open_dump(poisoned) as dump:
        plot = plots.histogram(dump, dump.find("l_out-1"), bins=20)
    finite = data[np.isfinite(data)].astype(np.float64)
    np.testing.assert_array_equal(plot.data["counts"], np.histogram(finite, bins=plot.data["edges"])[0])
    legend = plot.figure.axes[0].get_legend().get_texts()[0].get_text()
    assert legend == f"{finite.size} finite, 2 NaN, 1 Inf"


def test_heatmap_slices_and_robust_limits(runs):
    with open_dump(runs["pre"]) as dump:
        entry = dump.find("inp_raw")
        array = dump.read(entry)
        plot = plots.heatmap(dump, entry, "1,2,:,10:50")
    np.testing.assert_array_equal(plot.data["image"], array[1, 2, :, 10:50])
    low, high = np.percentile(array[1, 2, :, 10:50], [1, 99])
    assert plot.data["limits"] == pytest.approx((low, high))
    assert np.array_equal(plot.figure.axes[0].images[0].get_array(), array[1, 2, :, 10:50])
    for bad in ("1,2,3,4,5", "x", "0,0,0,:"):  # too many parts, not an index, only one range left
        with pytest.raises(InspectorError):
            plots.two_d(array, bad)


def test_diff_marks_the_first_divergence(runs):
    plot = plots.difference_along_execution(runs["a"], runs["b"], preset("f32"))
    comparison = plot.data["comparison"]
    first = plot.data["first_divergence"]
    assert plot.data["names"][first] == "l_out-2"  # the planted weight is in layer 2
    assert all(value == 0 for value in plot.data["nmse"][:first])
    top = plot.figure.axes[0]
    np.testing.assert_allclose(top.lines[0].get_ydata(), np.maximum([r.metrics.nmse for r in comparison.rows],
                                                                     1e-30))
    assert any(list(line.get_xdata()) == [first, first] for line in top.lines[1:])


def test_element_difference_is_b_minus_a(runs):
    with open_dump(runs["a"]) as a, open_dump(runs["b"]) as b:
        plot = plots.element_difference(a, b, "l_out-3", 0, 0)
        expected = b.read("l_out-3").astype(np.float64) - a.read("l_out-3")
    np.testing.assert_array_equal(plot.data["difference"], expected)


def test_image_undoes_normalisation_exactly(runs):
    with open_dump(runs["pre"]) as dump:
        plot = plots.image([dump])
        geometry = dump.config["geometry"]
    picture = plot.data["pictures"][0]
    width, height = geometry["resized_wh"]
    canvas_w, canvas_h = geometry["canvas_wh"]
    expected = np.zeros((canvas_h, canvas_w, 3), dtype=np.uint8)
    resized = Image.open(runs["image"]).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    expected[:height, :width] = np.asarray(resized)
    np.testing.assert_array_equal(picture, expected)


def test_image_pair_shows_a_difference_panel(runs, tmp_path):
    with open_dump(runs["pre"]) as dump:
        swapped = dump.read("inp_raw")
        assert (dump.config["geometry"]["grid_rows"], dump.config["geometry"]["grid_cols"]) == (1, 2)
    swapped[[0, 1]] = swapped[[1, 0]]
    np.save(tmp_path / "swapped.npy", swapped)
    assert cli("import-raw", tmp_path / "swapped.npy", "--name", "inp_raw", "-o", tmp_path / "b.h5").returncode == 0
    with open_dump(runs["pre"]) as a, open_dump(tmp_path / "b.h5") as b:
        plot = plots.image([a, b])
    first, second = plot.data["pictures"]
    np.testing.assert_array_equal(second, np.concatenate([first[:, 560:], first[:, :560]], axis=1))
    np.testing.assert_array_equal(plot.data["difference"],
                                  np.abs(first.astype(int) - second.astype(int)).max(axis=2))


def test_sweep_matrix_holds_the_summary_nmse(tiny_f32, tmp_path):
    out = tmp_path / "sweep"
    assert cli("sweep", tiny_f32, "-p", "hello", "--n-gpu-layers", "0,1", "--vary", "flash_attn=on,off",
               "--threads", "1", "--ctx", "64", "--rpc", "auto", "-o", out).returncode in (0, 1)
    summary = json.loads((out / "summary.json").read_text())
    plot = plots.sweep(summary)
    labels = plot.data["columns"]
    for row, tensor in enumerate(summary["tensors"]):
        for column, label in enumerate(labels):
            assert plot.data["nmse"][row, column] == max(tensor["cells"][label]["nmse"] or 1e-30, 1e-30)
    assert "RPC0" in {cell for row in plot.data["buffers"] for cell in row}
    for suffix in (".png", ".svg"):
        result = cli("plot", "sweep", out, "--per-layer", "-o", tmp_path / f"sweep{suffix}")
        assert result.returncode == 0 and (tmp_path / f"sweep{suffix}").read_bytes().startswith(MAGIC[suffix])


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_cli_writes_every_kind_in_every_format(runs, tmp_path, suffix):
    a, b, pre = runs["a"], runs["b"], runs["pre"]
    commands = {
        "stats": ("stats", a, "-t", "l_out-*"), "hist": ("hist", a, "l_out-0", "--log"),
        "heatmap": ("heatmap", a, "result_output"), "diff": ("diff", a, b), "diff-tensor": ("diff", a, b, "l_out-3"),
        "image": ("image", pre),
    }
    for name, args in commands.items():
        out = tmp_path / f"{name}{suffix}"
        result = cli("plot", *args, "-o", out, "--title", f"test {name}")
        assert result.returncode == 0, (name, result.stderr)
        assert out.read_bytes().startswith(MAGIC[suffix]), name
    if suffix == ".png":
        assert Image.open(tmp_path / "stats.png").size[0] > 300


def test_plot_bad_inputs(runs, tmp_path):
    assert_one_line_error(cli("plot", "stats", runs["a"], "-o", tmp_path / "x.jpg"), ".png, .svg, .pdf")
    assert_one_line_error(cli("plot", "heatmap", runs["a"], "l_out-0", "--slice", "a,b"), "--slice")
    assert_one_line_error(cli("plot", "image", runs["a"]), "no tensor 'inp_raw'")
    assert_one_line_error(cli("plot", "sweep", tmp_path), "no such sweep summary")
    assert_one_line_error(cli("plot", "stats", tmp_path / "none.h5"), "no such file")
