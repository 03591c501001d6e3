"""Regenerate the pictures README.md shows, from generated models and images (no downloads).

Run from the repository root: ``python docs/make_images.py``.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from inspector import open_dump
from inspector.capture.selection import Selection
from inspector.compare.tolerance import preset
from inspector.dump.raw_import import write_arrays
from inspector.ggml.rpc import LoopbackServer
from inspector.llamacpp.capture import capture_llama
from inspector.llamacpp.config import LlamaRunConfig
from inspector.mllama.preprocess import preprocess
from inspector.present import plots
from inspector.sweep.run import run_sweep
from inspector.tiny_models import TinyLlamaSpec, write_tiny_llama

OUT = Path(__file__).parent / "images"
PROMPT = "The quick brown fox jumps over the lazy dog"


def synthetic_photo(width: int, height: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    red = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0)
    green = 255 * (x / width)
    blue = 255 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(width, height) / 3) ** 2)
    return Image.fromarray(np.stack([red, green, blue], axis=-1).clip(0, 255).astype(np.uint8))


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clean = write_tiny_llama(folder / "a.gguf", TinyLlamaSpec(n_layer=8, seed=7))
        planted = write_tiny_llama(folder / "b.gguf", TinyLlamaSpec(n_layer=8, seed=7, perturb=(5, 2, 0.5)))
        config = LlamaRunConfig(model=str(clean), prompt=PROMPT, threads=1, n_ctx=128)
        select = Selection(globs=("l_out-*", "attn_norm-*", "result_output"))
        capture_llama(config, select, folder / "a.h5", overwrite=True)
        capture_llama(LlamaRunConfig(model=str(planted), prompt=PROMPT, threads=1, n_ctx=128), select,
                      folder / "b.h5", overwrite=True)
        with open_dump(folder / "a.h5") as dump:
            plots.stats(dump, ["l_out-*"]).save(OUT / "stats.png")
            plots.histogram(dump, dump.find("l_out-7"), log=True).save(OUT / "hist.png")
            plots.heatmap(dump, dump.find("l_out-7")).save(OUT / "heatmap.png")
        plots.difference_along_execution(folder / "a.h5", folder / "b.h5", preset("f32")).save(OUT / "diff.png")
        photo = synthetic_photo(900, 500)
        reference = preprocess(photo)
        write_arrays(folder / "hf.h5", {"inp_raw": reference.inp_raw}, "preprocess",
                     {}, {"geometry": reference.geometry.as_dict()}, overwrite=True)
        swapped = reference.inp_raw[:, [2, 1, 0]].copy()
        write_arrays(folder / "bgr.h5", {"inp_raw": swapped}, "import", {}, {}, overwrite=True)
        with open_dump(folder / "hf.h5") as a, open_dump(folder / "bgr.h5") as b:
            plots.image([a, b], title="inp_raw: reference vs channels swapped").save(OUT / "image.png")
        with LoopbackServer(threads=1) as server:
            result = run_sweep(replace(config, rpc=[server.endpoint]), [0, 4, "all"], [("flash_attn", ["on", "off"])],
                               Selection(globs=("l_out-*",)), folder / "sweep", preset("f32"), overwrite=True)
        plots.sweep(result.summary).save(OUT / "sweep.png")
    for path in sorted(OUT.glob("*.png")):
        print(path, Image.open(path).size)


if __name__ == "__main__":
    main()
