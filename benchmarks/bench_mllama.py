"""The whole Llama 3.2 Vision path (``mllama convert``, ``mllama generate``) at a real model's costly shape.

Run: ``python benchmarks/bench_mllama.py [--repeats N] [--json OUT]``.  It
builds (once, with transformers, random weights, cached in
benchmarks/results/) an MllamaForConditionalGeneration with what makes the
real Llama 3.2 11B Vision expensive kept at its real size, and only the
widths shrunk so that it runs on 2 cores:

- the real vocabulary: text ``vocab_size`` 128,256 (``lm_head`` 128,256 rows,
  ``embed_tokens`` 128,264 rows: the 8 image rows past it), image token 128,256;
- the real image geometry: ``image_size`` 560, ``patch_size`` 14,
  ``max_num_tiles`` 4 (1,601 positions a tile, 6,404 vision keys; 6,432
  padded positions in the encoder's attention), the real supported aspect
  ratios and their per-aspect-ratio tile position tables;
- small widths: vision hidden 128 (2 heads), 4 local + 2 global layers,
  ``intermediate_layers_indices`` [0, 1, 2, 3] (the real [3, 7, 15, 23, 30] of
  32 layers, scaled down); text hidden 256, 4 layers, cross-attention layers
  [1, 3], 4 heads / 2 KV heads, Llama 3 RoPE.

Every tanh gate is opened (transformers initialises them to 0) and every
parameter perturbed, as tests/tiny_mllama_hf.py does.  Then it times whole
processes, each the median of ``--repeats`` runs after a warm-up
(benchmarks/timing.py):

- ``convert``: ``mllama convert`` of the checkpoint, its GGUF's size and the
  process's peak RSS (one more run, measured with ``wait4``);
- ``generate``: ``mllama generate`` of a generated 1000x800 PNG (4 tiles,
  aspect ratio 2x2) with a 20-token chat prompt holding the image token,
  ``-n 8``, 2 threads.  The baseline is ``-T no_such_tensor`` (the hook is
  installed and nothing is selected: the closest this command has to a plain
  run); ``-T result_output``, capture of everything and ``--vision-output
  late-read -T result_output`` are ratios to it (the baseline, ``-T
  result_output`` and late-read timed in interleaved rounds).  Also ``mllama
  encode -T no_such_tensor`` (the vision encoder alone), the baseline's peak
  RSS, the size of the capture-all dump, and whether copy's generated ids
  equal late-read's (recorded, not judged);
- ``phases``: the baseline in-process with its steps timed (model loads,
  preprocessing, the vision graph, the prompt, each generated token), the
  median of ``--repeats`` runs.

Each section records the 1-minute load average before and after it: the
vision graph's time doubles when something else runs on the 2 cores.

Nothing here asserts a time: it prints one JSON object.

``--full-width [--outtypes f16,q4_k_m] [--smoke]``: Llama 3.2 11B Vision's
real widths at reduced depth, per ``mllama convert --outtype``, with a
per-layer extrapolation to the real depth (``mllama_full_width.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from timing import emit, wall

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 7
THREADS = 2
N_PREDICT = 8
VOCAB = 128_256  # Llama 3's text vocabulary; the embedding has 8 rows more (the image tokens)
IMAGE_TOKEN = VOCAB
ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_global_layers=2, attention_heads=2,
              image_size=560, patch_size=14, max_num_tiles=4, intermediate_layers_indices=[0, 1, 2, 3],
              vision_output_dim=128 * 5, norm_eps=1e-5)
TEXT = dict(hidden_size=256, intermediate_size=896, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, pad_token_id=128004, bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009], cross_attention_layers=[1, 3], max_position_embeddings=131072,
            rms_norm_eps=1e-5, rope_parameters=dict(ROPE))
NAME = f"mllama-v{VISION['hidden_size']}x4+2-t{TEXT['hidden_size']}x4-vocab{VOCAB}-560px-{SEED}"
# exact leaf names of the tanh gates (as tests/tiny_mllama_hf.py): not mlp.gate_proj
GATES = ("gate", "gate_attn", "gate_ffn", "cross_attn_attn_gate", "cross_attn_mlp_gate")
# Llama 3.2 Vision's chat template around "<|image|>Describe this image in one short sentence, please.": 20 ids.
PROMPT_IDS = [128000, 128006, 882, 128007, 271, IMAGE_TOKEN, 75885, 420, 2217, 304, 832, 2875, 11914, 11, 4587, 13,
              128009, 128006, 78191, 128007]
IMAGE_SIZE = (1000, 800)  # width, height: HF's canvas is 2x2 tiles of 560 (the only upscaling grid)

PHASES = """
import json, sys, time
started = time.perf_counter()
from inspector.mllama import encode as encoder
from inspector.mllama import generate as runner
from inspector.capture.selection import Selection
imported = time.perf_counter() - started
spent = {}

def timed(owner, name, key):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        begun = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.setdefault(key, []).append(time.perf_counter() - begun)
    setattr(owner, name, wrapper)

timed(encoder.Session, "__init__", "load_ggml_and_vision_weights")
timed(runner, "load_text_model", "load_text_weights")
timed(encoder.Session, "preprocess", "preprocess_image")
timed(encoder.Session, "reserve", "reserve_vision")
timed(runner._TextRunner, "reserve", "reserve_text")
timed(encoder.Session, "compute", "vision_graph")
timed(runner._TextRunner, "compute", "text_graphs")
timed(runner, "build_text_graph", "build_text_graphs")
model, image, out, ids, n, threads = sys.argv[1:4] + [sys.argv[4], int(sys.argv[5]), int(sys.argv[6])]
config = runner.GenerateConfig(model=model, image=image, token_ids=[int(i) for i in ids.split(",")], n_predict=n,
                               n_ctx=len(ids.split(",")) + n, threads=threads)
begun = time.perf_counter()
summary = runner.generate(config, Selection(globs=("no_such_tensor",)), out, overwrite=True)
total = time.perf_counter() - begun
text = spent.pop("text_graphs")
print(json.dumps({"imports_s": imported, "generate_s": total, **{k: sum(v) for k, v in spent.items()},
                   "prompt_graph_s": text[0], "generated_token_graph_s": sorted(text[1:])[len(text[1:]) // 2],
                   "generated_token_graphs": len(text) - 1, "generated_ids": summary.generated_ids}))
"""


def checkpoint() -> Path:
    """The cached Hugging Face checkpoint folder (config.json + safetensors), built once."""
    RESULTS.mkdir(exist_ok=True)
    folder = RESULTS / NAME
    if (folder / "config.json").exists():
        return folder
    import shutil

    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(SEED)
    config = MllamaConfig(vision_config=dict(VISION), text_config=dict(TEXT), image_token_index=IMAGE_TOKEN)
    config._attn_implementation = "eager"
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.rsplit(".", 1)[-1] in GATES:
                parameter.copy_(torch.randn_like(parameter))  # open every tanh gate (HF inits them to 0)
            else:
                parameter.add_(torch.randn_like(parameter) * 0.1)  # norms are exactly 1 otherwise
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    partial.rename(folder)
    return folder


def make_image(path: Path) -> Path:
    """A deterministic 1000x800 PNG with structure (gradients) and noise: 4 tiles at 560."""
    from PIL import Image

    width, height = IMAGE_SIZE
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(SEED).integers(0, 64, (height, width, 3))
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=-1) // 2 + noise
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def peak_rss(command: list[str]) -> tuple[float, int]:
    """One run of ``command``: its wall time and its own peak resident set (bytes), from wait4."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} exited {process.returncode}: {stderr.decode()[-500:]}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def interleaved(commands: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each command (sorted), run in rounds (A B C, A B C, ...) after one warm-up run each.

    The vision graph's time drifts by ±20% from run to run on a shared 2-core
    machine; in rounds the drift falls on every command alike, where
    ``timing.wall`` (one command's repeats back to back) would put it into the
    ratios.
    """
    for command in commands.values():
        subprocess.run(command, check=True, capture_output=True)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            samples[name].append(time.perf_counter() - started)
    return {name: sorted(values) for name, values in samples.items()}


def inspector_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "inspector", *arguments]


def bench_convert(folder: Path, gguf: Path, repeats: int) -> dict[str, float]:
    command = inspector_command("mllama", "convert", str(folder), "-o", str(gguf), "--overwrite")
    seconds = wall(command, repeats)
    _, rss = peak_rss(command)
    files = sorted(folder.glob("*.safetensors"))
    # O(file) would show as a peak near the GGUF's size whatever the tensors; O(tensor) as a multiple of the largest.
    return {"seconds": seconds, "gguf_bytes": gguf.stat().st_size,
            "checkpoint_bytes": sum(f.stat().st_size for f in files), "safetensors_files": len(files),
            "largest_tensor_f32_bytes": _largest_tensor(files), "peak_rss_bytes": rss,
            "peak_rss_vs_gguf": rss / gguf.stat().st_size}


def _largest_tensor(files: list[Path]) -> int:
    from inspector.mllama.convert import open_safetensors

    return max(int(np.prod(t.shape)) * 4 for f in files for t in open_safetensors(f).values())


def _generated_ids(dump: Path) -> list[int]:
    import h5py

    with h5py.File(dump, "r") as handle:
        return json.loads(handle.attrs["result"])["generated_ids"]


def bench_generate(gguf: Path, image: Path, folder: Path, repeats: int) -> dict[str, object]:
    ids = ",".join(str(i) for i in PROMPT_IDS)

    def generate(out: str, *extra: str) -> list[str]:
        return inspector_command("mllama", "generate", str(gguf), "--image", str(image), "--token-ids", ids,
                                 "-n", str(N_PREDICT), "-t", str(THREADS), "-o", str(folder / out), "--overwrite",
                                 *extra)

    samples = interleaved({"baseline": generate("none.h5", "-T", "no_such_tensor"),
                           "one": generate("one.h5", "-T", "result_output"),
                           "late": generate("late.h5", "--vision-output", "late-read", "-T", "result_output")},
                          repeats)
    baseline, one, late = (statistics.median(samples[name]) for name in ("baseline", "one", "late"))
    _, baseline_rss = peak_rss(generate("none.h5", "-T", "no_such_tensor"))
    encode = wall(inspector_command("mllama", "encode", str(gguf), "--image", str(image), "-t", str(THREADS),
                                    "-T", "no_such_tensor", "-o", str(folder / "encode.h5"), "--overwrite"), repeats)
    everything = wall(generate("all.h5"), repeats)
    import h5py

    with h5py.File(folder / "all.h5", "r") as handle:
        tensors = len(handle["index"])
    copy_ids, late_ids = _generated_ids(folder / "one.h5"), _generated_ids(folder / "late.h5")
    return {"baseline_s": baseline, "interleaved_samples_s": samples, "baseline_peak_rss_bytes": baseline_rss,
            "encode_only_s": encode, "encode_only_share": encode / baseline,
            "one_tensor_ratio": one / baseline, "late_read_one_tensor_ratio": late / baseline,
            "capture_all_ratio": everything / baseline, "capture_all_s": everything,
            "capture_all_bytes": (folder / "all.h5").stat().st_size, "capture_all_tensors": tensors,
            "copy_generated_ids": copy_ids, "late_read_generated_ids": late_ids,
            "copy_ids_equal_late_read_ids": copy_ids == late_ids}


def bench_phases(gguf: Path, image: Path, folder: Path, repeats: int) -> dict[str, float]:
    """The baseline in one process with its steps timed: the median of each over ``repeats`` runs."""
    ids = ",".join(str(i) for i in PROMPT_IDS)
    command = [sys.executable, "-c", PHASES, str(gguf), str(image), str(folder / "phases.h5"), ids,
               str(N_PREDICT), str(THREADS)]
    runs = []
    for _ in range(max(repeats, 1)):
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    result = {key: statistics.median(run[key] for run in runs) for key, value in runs[0].items()
              if isinstance(value, float)}
    result["generated_token_graphs"] = runs[0]["generated_token_graphs"]
    return result


def full_width(args: argparse.Namespace) -> dict[str, object]:
    """--full-width: the real 11B widths at reduced depth, per --outtype (benchmarks/mllama_full_width.py)."""
    import mllama_full_width as full

    divisor = 8 if args.smoke else 1
    config = full.full_config(divisor)
    folder = full.write_checkpoint(RESULTS / config["_name_or_path"], config)
    results: dict[str, object] = {"model": {"config": config, "checkpoint_bytes": sum(
        f.stat().st_size for f in folder.glob("*.safetensors")), "largest_tensor_f32_bytes": _largest_tensor(
        sorted(folder.glob("*.safetensors"))), "prompt_tokens": len(PROMPT_IDS), "n_predict": N_PREDICT,
        "threads": THREADS, "real_depth": full.REAL_DEPTH}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = make_image(work / "photo-1000x800.png")
        for outtype in args.outtypes.split(","):
            before = os.getloadavg()[0]
            result = full.bench_outtype(folder, work, outtype, image, PROMPT_IDS, N_PREDICT, THREADS)
            result["load_average_1min"] = [round(before, 2), round(os.getloadavg()[0], 2)]
            results[outtype] = result
            print(f"{outtype}: {json.dumps(result)}", file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--full-width", action="store_true",
                        help="the real 11B widths at reduced depth, per --outtypes (mllama_full_width.py); heavy")
    parser.add_argument("--outtypes", default="f32,f16,bf16,q8_0,q6_k,q4_k,q4_k_m",
                        help="--full-width: the outtypes to convert and run, comma-separated")
    parser.add_argument("--smoke", action="store_true", help="--full-width with every width divided by 8")
    args = parser.parse_args()
    if args.full_width:
        results = full_width(args)
        emit(results, args.json)
        return
    folder = checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        gguf = work / "model.gguf"
        image = make_image(work / "photo-1000x800.png")
        results: dict[str, object] = {
            "model": {"checkpoint": folder.name, "vocab_size": VOCAB, "embedding_rows": VOCAB + 8,
                      "image_size": VISION["image_size"], "patch_size": VISION["patch_size"],
                      "max_num_tiles": VISION["max_num_tiles"], "positions_per_tile": 1601, "vision_keys": 4 * 1601,
                      "vision": {k: VISION[k] for k in ("hidden_size", "attention_heads", "num_hidden_layers",
                                                        "num_global_layers", "intermediate_layers_indices")},
                      "text": {k: TEXT[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                    "num_attention_heads", "num_key_value_heads",
                                                    "cross_attention_layers")},
                      "image": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} PNG", "prompt_tokens": len(PROMPT_IDS),
                      "n_predict": N_PREDICT, "threads": THREADS, "repeats": args.repeats},
        }
        for key, bench in (("convert", lambda: bench_convert(folder, gguf, args.repeats)),
                           ("generate", lambda: bench_generate(gguf, image, work, args.repeats)),
                           ("phases", lambda: bench_phases(gguf, image, work, args.repeats))):
            before = os.getloadavg()[0]
            results[key] = bench()
            # Times on 2 cores are only as good as the machine was quiet: a 1-minute load average well above
            # the 2 threads this runs says something else competed for the cores.
            results[key]["load_average_1min"] = [round(before, 2), round(os.getloadavg()[0], 2)]
            print(f"{key}: {json.dumps(results[key])}", file=sys.stderr, flush=True)
    emit(results, args.json)


if __name__ == "__main__":
    main()
