"""The HTML report: self-contained, and rendered by a real headless browser (Debian's chromium)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import run_capture
from PIL import Image
from test_cli import assert_one_line_error, cli

from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href"):
                self.sources.append(value or "")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the report test needs Debian's chromium: apt-get install -y chromium (see README)"
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    clean = write_tiny_llama(folder / "a.gguf", TinyLlamaSpec(n_layer=3, seed=31))
    planted = write_tiny_llama(folder / "b.gguf", TinyLlamaSpec(n_layer=3, seed=31, perturb=(1, 0, 1.0)))
    run_capture(clean, folder / "a.h5", ("l_out-*", "result_output"))
    run_capture(planted, folder / "b.h5", ("l_out-*", "result_output"))
    out = folder / "report.html"
    result = cli("report", folder / "a.h5", folder / "b.h5", "-o", out)
    assert result.returncode == 0, result.stderr
    return out


def test_report_is_self_contained_and_highlights_the_first_divergence(report):
    text = report.read_text()
    parser = _Assets()
    parser.feed(text)
    assert parser.sources and all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "first divergence: <b>l_out-1</b>" in text
    assert "<tr class='first'>" in text and "Comparison: FAIL" in text
    assert "config.model_facts.fingerprint" in text


def test_report_renders_in_headless_chromium(report, tmp_path):
    screenshot = tmp_path / "report.png"
    run = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                          "--window-size=1200,1600", f"--screenshot={screenshot}", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 20, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom",
                          report.as_uri()], capture_output=True, text=True, timeout=120)
    assert "ggml-inspector report" in dom.stdout and "l_out-1" in dom.stdout


def test_single_run_report_with_inp_raw(tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(image)
    assert cli("preprocess", image, "-o", tmp_path / "pre.h5").returncode == 0
    result = cli("report", tmp_path / "pre.h5", "-o", tmp_path / "one.html")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "one.html").read_text()
    assert "inp_raw tiles" in text and "Comparison" not in text
    assert_one_line_error(cli("report", tmp_path / "pre.h5", "-o", tmp_path / "r.txt"), ".html")
