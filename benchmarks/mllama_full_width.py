"""``bench_mllama.py --full-width``: Llama 3.2 11B Vision's real widths at reduced depth, per ``--outtype``.

The checkpoint is generated here, without transformers (an 11B-wide model in
torch would need its weights in f32 twice), and written as bf16 safetensors
as the hub's is, tensor by tensor: the real widths (vision 1280 wide, 16
heads, FFN 5120, 4 tiles of 560 px: 6,404 image keys; text 4096 wide, 32
heads, 8 KV heads, FFN 14,336, vocabulary 128,256 + 8 image rows, the
projector at its real 7680 x 4096: five intermediate taps, of the two local
layers) and a reduced depth: 2 local vision layers, 1 global layer, 2 text
layers of which layer 1 is cross-attention.  Matrices are N(0, 1/fan_in), so
activations stay finite through any depth.  About 1.66 B parameters: 3.3 GB
of bf16.

Per outtype: ``mllama convert`` (wall time, its own peak RSS, the file's
size), then one in-process ``generate`` (``-n 8``, 2 threads) whose eval
callback timestamps every layer boundary: the time between two boundaries is
that layer's compute (the callback's own copying excluded), so each layer
kind (local and global vision layers, self- and cross-attention text layers,
on the prompt and per generated token) has a measured cost, and the fixed
rest (patch embedding, projector, embedding, output) too.  That gives the
extrapolation to the real 32 + 8 vision and 32 + 8 text layers; the file's
size extrapolates exactly from its per-layer tensor bytes.  Capture costs:
``generate`` as a process with nothing selected, with every layer output
selected, and their dump size.

Heavy: converting every outtype writes ~20 GB in all (f32 6.6 GB) and each
generate encodes a 4-tile image at full width; on 2 busy cores expect about
an hour.  ``--smoke`` runs the same steps with every width divided by 8
(the vocabulary and image geometry kept) to check the script in minutes.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

VOCAB = 128_256
RATIOS = [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]
REAL_DEPTH = {"vision_local": 32, "vision_global": 8, "text_self": 32, "text_cross": 8}

LAYER_TIMES = r"""
import json, sys, time
from inspector.capture import hook as hooks
from inspector.capture.selection import Selection
from inspector.ggml.tensor import Tensor
from inspector.mllama import generate as runner

marks = []
original = hooks.TensorHook.__init__

def timed_init(self, *args, **kwargs):
    original(self, *args, **kwargs)
    inner = self._on_eval

    def on_eval(tensor, ask, user_data):
        if ask:
            return inner(tensor, ask, user_data)
        entered = time.perf_counter()
        result = inner(tensor, ask, user_data)
        marks.append((self._eval_index, Tensor(self.lib, tensor).name, entered, time.perf_counter()))
        return result
    self.callback = hooks.EvalCallback(on_eval)

begin = hooks.TensorHook.begin_evaluation

def timed_begin(self, eval_index):
    begin(self, eval_index)
    now = time.perf_counter()
    marks.append((eval_index, "<start>", now, now))

hooks.TensorHook.__init__ = timed_init
hooks.TensorHook.begin_evaluation = timed_begin
model, image, out, ids, n, threads, globs = sys.argv[1:4] + [sys.argv[4], int(sys.argv[5]), int(sys.argv[6]),
                                                            sys.argv[7].split(",")]
config = runner.GenerateConfig(model=model, image=image, token_ids=[int(i) for i in ids.split(",")], n_predict=n,
                               n_ctx=len(ids.split(",")) + n, threads=threads)
begun = time.perf_counter()
summary = runner.generate(config, Selection(globs=tuple(globs)), out, overwrite=True)
total = time.perf_counter() - begun
segments = []
for (e0, _, _, left), (e1, name, entered, _) in zip(marks, marks[1:]):
    if e0 == e1:
        segments.append([e1, name, entered - left])
status = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"generate_s": total, "segments": segments, "peak_rss_bytes": int(status.split()[1]) * 1024,
                  "generated_ids": summary.generated_ids}))
"""


def full_config(divisor: int = 1) -> dict:
    """config.json of the reduced-depth, full-width checkpoint (widths divided by ``divisor`` for --smoke)."""
    vision_hidden, text_hidden = 1280 // divisor, 4096 // divisor
    return {
        "model_type": "mllama", "_name_or_path": f"mllama-full-width-{divisor}", "image_token_index": VOCAB,
        "vision_config": {"hidden_size": vision_hidden, "intermediate_size": 5120 // divisor,
                          "attention_heads": 16 // divisor, "num_hidden_layers": 2, "num_global_layers": 1,
                          "intermediate_layers_indices": [0, 1, 0, 1, 1], "image_size": 560, "patch_size": 14,
                          "max_num_tiles": 4, "num_channels": 3, "norm_eps": 1e-5, "supported_aspect_ratios": RATIOS,
                          "vision_output_dim": vision_hidden * 6},
        "text_config": {"hidden_size": text_hidden, "intermediate_size": 14336 // divisor, "num_hidden_layers": 2,
                        "num_attention_heads": 32 // divisor, "num_key_value_heads": 8 // divisor,
                        "vocab_size": VOCAB, "cross_attention_layers": [1], "rms_norm_eps": 1e-5,
                        "max_position_embeddings": 131072, "bos_token_id": 128000, "eos_token_id": 128009,
                        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192}},
    }


def boundaries(config: dict) -> list[str]:
    """The exact names of the layer boundaries the timing callback stops at (captured; copies excluded).

    Exact, not ``layer_out-*``: that glob also matches the ``layer_out-N (reshaped)`` views the projector's
    intermediate taps make, and would cut a layer's time in two.
    """
    vision, text = config["vision_config"], config["text_config"]
    return (["ln_pre", *(f"layer_out-{i}" for i in range(vision["num_hidden_layers"])), "ln_post",
             *(f"global_layer_out-{i}" for i in range(vision["num_global_layers"])), "ca_patch_embd", "inp_embd",
             *(f"l_out-{i}" for i in range(text["num_hidden_layers"])), "result_output"])


def checkpoint_shapes(config: dict) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every HF (on-disk) tensor name and shape of the checkpoint: the vision tower, projector, text model."""
    from inspector.mllama import gguf_layout as L
    from inspector.mllama.convert import text_layout

    vision = config["vision_config"]
    d, f, tiles = vision["hidden_size"], vision["intermediate_size"], vision["max_num_tiles"]
    positions, ids = (vision["image_size"] // vision["patch_size"]) ** 2 + 1, len(RATIOS) + 1
    v = "vision_model."
    yield v + "patch_embedding.weight", (d, 3, vision["patch_size"], vision["patch_size"])
    yield v + "class_embedding", (d,)
    yield v + "gated_positional_embedding.embedding", (positions, d)
    yield v + "gated_positional_embedding.gate", (1,)
    yield v + "gated_positional_embedding.tile_embedding.weight", (ids, tiles * positions * d)
    for table in ("pre", "post"):
        yield f"{v}{table}_tile_positional_embedding.embedding.weight", (ids, tiles * d)
        yield f"{v}{table}_tile_positional_embedding.gate", (1,)
    for norm in ("layernorm_pre", "layernorm_post"):
        yield f"{v}{norm}.weight", (d,)
        yield f"{v}{norm}.bias", (d,)
    for stack, count in (("transformer", vision["num_hidden_layers"]),
                         ("global_transformer", vision["num_global_layers"])):
        for index in range(count):
            p = f"{v}{stack}.layers.{index}."
            yield from ((f"{p}self_attn.{proj}_proj.weight", (d, d)) for proj in "qkvo")
            yield from ((p + name, shape) for name, shape in (("mlp.fc1.weight", (f, d)), ("mlp.fc1.bias", (f,)),
                                                              ("mlp.fc2.weight", (d, f)), ("mlp.fc2.bias", (d,))))
            for norm in ("input_layernorm", "post_attention_layernorm"):
                yield f"{p}{norm}.weight", (d,)
                yield f"{p}{norm}.bias", (d,)
            if stack == "global_transformer":
                yield p + "gate_attn", (1,)
                yield p + "gate_ffn", (1,)
    text = text_layout(config)
    yield "multi_modal_projector.weight", (text.hidden, vision["vision_output_dim"])
    yield "multi_modal_projector.bias", (text.hidden,)
    for part in L.text_parts(text.layers, frozenset(text.cross_layers)):
        name = L.TEXT_HEAD_ON_DISK if part == "lm_head.weight" else L.TEXT_PREFIX_ON_DISK + part
        yield name, text.shape(part)


def _values(name: str, shape: tuple[int, ...], rng: np.random.Generator, rows: int) -> np.ndarray:
    """``rows`` rows of random values scaled as the tensor's kind needs: finite activations at any depth."""
    width = shape[-1]
    values = rng.standard_normal((rows, width), dtype=np.float32)
    if len(shape) == 1 and "norm" in name:
        return 1 + 0.1 * values
    if len(shape) == 1 or "embed" in name:
        return values if shape == (1,) else 0.1 * values  # (1,): the tanh gates, opened
    fan_in = math.prod(shape[1:])
    return values / np.float32(math.sqrt(fan_in))


def _bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) as uint16."""
    bits = values.view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_checkpoint(folder: Path, config: dict, seed: int = 7) -> Path:
    """config.json and one bf16 safetensors file, written a few rows at a time (memory stays small)."""
    if (folder / "config.json").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    shapes = list(checkpoint_shapes(config))
    header, offset = {}, 0
    for name, shape in shapes:
        size = math.prod(shape) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    rng = np.random.default_rng(seed)
    with open(partial / "model.safetensors", "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        for name, shape in shapes:
            rows, width = math.prod(shape[:-1]), shape[-1]
            step = max(1, (8 << 20) // width)
            for first in range(0, rows, step):
                _bf16(_values(name, shape, rng, min(step, rows - first))).tofile(handle)
    (partial / "config.json").write_text(json.dumps(config, indent=1))
    partial.rename(folder)
    return folder


def _peak_rss_command(arguments: list[str]) -> tuple[float, int]:
    """Wall time and the process's own peak RSS (VmHWM: wait4's ru_maxrss carries the parent's across exec)."""
    code = ("import sys\nfrom inspector.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
            "    print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')), file=sys.stderr)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:2])} exited {done.returncode}: {done.stderr[-500:]}")
    line = next(line for line in done.stderr.splitlines() if line.startswith("VmHWM:"))
    return seconds, int(line.split()[1]) * 1024


def tensor_bytes(gguf: Path) -> dict[str, int]:
    """The file's bytes by layer kind (vision local/global, text self/cross, fixed), for the extrapolation."""
    from gguf import GGUFReader

    from inspector.mllama import gguf_layout as L

    reader = GGUFReader(gguf)
    field = reader.get_field(L.KEY_CROSS_LAYERS)
    cross = {int(field.parts[i][0]) for i in field.data}
    kinds: dict[str, int] = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "v" and parts[1] in ("blk", "gblk"):
            kind = "vision_local" if parts[1] == "blk" else "vision_global"
        elif parts[0] == "blk":
            kind = "text_cross" if int(parts[1]) in cross else "text_self"
        else:
            kind = "fixed"
        kinds[kind] = kinds.get(kind, 0) + int(tensor.n_bytes)
    return kinds


def layer_costs(segments: list[list]) -> dict[str, float]:
    """Seconds per layer kind and the fixed rest of each graph, from the boundary segments.

    Evaluation 0 is the vision graph (``vision_local``/``vision_global``: the median layer, ``vision_fixed``:
    the rest), 1 the prompt and 2.. one per generated token (``prompt_l_out-N``, ``token_l_out-N``: text
    layer N; ``*_fixed``: the rest; tokens: the median over them).
    """
    per_evaluation: dict[int, dict[str, list[float]]] = {}
    for evaluation, name, seconds in segments:
        if name.startswith(("layer_out-", "global_layer_out-")):
            key = "local" if name.startswith("layer_out-") else "global"
        else:
            key = name if name.startswith("l_out-") else "fixed"
        per_evaluation.setdefault(evaluation, {}).setdefault(key, []).append(seconds)
    tokens = sorted(e for e in per_evaluation if e >= 2)
    costs = {}
    for phase, evaluations in (("vision", [0]), ("prompt", [1]), ("token", tokens)):
        for key in {key for e in evaluations for key in per_evaluation.get(e, {})}:
            values = [statistics.median(found[key]) if key in ("local", "global") else sum(found[key])
                      for found in (per_evaluation[e] for e in evaluations) if key in found]
            costs[f"{phase}_{key}"] = statistics.median(values)
    return costs


def extrapolate(costs: dict[str, float], bytes_by_kind: dict[str, int], cross: int) -> dict[str, float]:
    """The real depth (32 + 8 vision, 32 + 8 text layers) from the measured per-layer costs and bytes."""
    self_layer, cross_layer = f"l_out-{1 - cross}", f"l_out-{cross}"
    vision = (costs.get("vision_fixed", 0.0) + REAL_DEPTH["vision_local"] * costs["vision_local"]
              + REAL_DEPTH["vision_global"] * costs["vision_global"])
    text = {phase: costs.get(f"{phase}_fixed", 0.0) + REAL_DEPTH["text_self"] * costs[f"{phase}_{self_layer}"]
            + REAL_DEPTH["text_cross"] * costs[f"{phase}_{cross_layer}"] for phase in ("prompt", "token")}
    size = bytes_by_kind.get("fixed", 0) + sum(REAL_DEPTH[k] * bytes_by_kind[k] / _layers_in_file(k)
                                               for k in REAL_DEPTH)
    return {"vision_graph_s": vision, "prompt_graph_s": text["prompt"], "per_token_s": text["token"],
            "gguf_bytes": int(size)}


def _layers_in_file(kind: str) -> int:
    """Layers of each kind in the reduced file: 2 local + 1 global vision, 1 self + 1 cross text."""
    return 2 if kind == "vision_local" else 1


def bench_outtype(folder: Path, work: Path, outtype: str, image: Path, prompt: list[int], n_predict: int,
                  threads: int) -> dict[str, object]:
    stops = boundaries(json.loads((folder / "config.json").read_text()))
    gguf = work / f"model-{outtype}.gguf"
    convert_s, convert_rss = _peak_rss_command(["mllama", "convert", str(folder), "-o", str(gguf), "--outtype",
                                                outtype, "--overwrite"])
    ids = ",".join(map(str, prompt))
    done = subprocess.run([sys.executable, "-c", LAYER_TIMES, str(gguf), str(image), str(work / "layers.h5"), ids,
                           str(n_predict), str(threads), ",".join(stops)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"generate ({outtype}) exited {done.returncode}: {done.stderr[-500:]}")
    timed = json.loads(done.stdout.strip().splitlines()[-1])
    costs = layer_costs(timed["segments"])
    bytes_by_kind = tensor_bytes(gguf)
    capture = {}
    for label, selection in (("nothing", ["-T", "no_such_tensor"]), ("layer_outputs", sum(
            (["-T", name] for name in stops), []))):
        seconds, rss = _peak_rss_command(["mllama", "generate", str(gguf), "--image", str(image), "--token-ids", ids,
                                          "-n", str(n_predict), "-t", str(threads), "-o", str(work / "cap.h5"),
                                          "--overwrite", *selection])
        capture[label] = {"seconds": seconds, "peak_rss_bytes": rss, "dump_bytes": (work / "cap.h5").stat().st_size}
    result = {"convert_s": convert_s, "convert_peak_rss_bytes": convert_rss, "gguf_bytes": gguf.stat().st_size,
              "gguf_bytes_by_layer_kind": bytes_by_kind, "generate_in_process_s": timed["generate_s"],
              "generate_peak_rss_bytes": timed["peak_rss_bytes"], "layer_costs_s": costs,
              "generated_ids": timed["generated_ids"], "capture": capture,
              "extrapolated_to_40_40": extrapolate(costs, bytes_by_kind, cross=1)}
    gguf.unlink()
    return result
