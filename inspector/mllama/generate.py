"""The whole Llama 3.2 Vision in ggml: encode an image, decode a prompt that holds its token, generate greedily.

Both graphs run on one ``ggml_backend_sched`` (the vision runner's), as in
the original port.  How the language model gets the vision output is the
point of ``vision_output``:

- ``copy`` (the default, and correct): ``ca_patch_embd`` is copied out of
  the scheduler's buffers right after the vision graph and handed to the
  text graph as the input leaf ``cross_attn_states``.
- ``late-read`` (the original port's bug, on purpose): the scheduler is
  reset and the text graph allocated; ``cross_attn_states`` is a leaf placed
  at the address where the vision graph left ``ca_patch_embd``.  The text
  graph's own tensors are allocated over that memory, so what the
  cross-attention layers read depends on the text graph's layout: on a
  probe in the vision graph, on how many layers are offloaded.

The scheduler is reserved for the vision graph and the prompt's text graph
before either runs, so allocating the second never frees the first's memory:
``late-read`` reads reused memory, never freed memory.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture.hook import HookCounters, TensorHook
from inspector.capture.selection import Selection
from inspector.capture.session import CaptureSession
from inspector.constants import MLLAMA_VISION_OUTPUTS
from inspector.dump.inputs import runner_inputs
from inspector.dump.inputs import unknown as unknown_inputs
from inspector.errors import InspectorError
from inspector.ggml import read_tensor
from inspector.ggml.graph import set_data
from inspector.ggml.system import system_facts
from inspector.ggml.tensor import Tensor
from inspector.mllama.encode import EncodeConfig, Session
from inspector.mllama.model import build_mllama
from inspector.mllama.preprocess import Preprocessed
from inspector.mllama.text_model import (
    ImageRows,
    TextGraph,
    TextModel,
    build_text_graph,
    causal_mask,
    load_text_model,
)
from inspector.native.tensor_stats import stats_function

# Why generate's graphs are captured node by node: it reserves every graph's buffers up front, without output flags,
# and the allocator keeps the plan it made there.
GENERATE_RESERVES = "mllama generate plans its compute buffers for every graph up front, without output flags"


@dataclass(kw_only=True)
class GenerateConfig(EncodeConfig):
    """The vision run's settings (model, image, placement, probes) and the language model's."""

    token_ids: list[int]
    n_predict: int = 0
    n_ctx: int = 256
    vision_output: str = "copy"


@dataclass
class GenerateSummary:
    path: Path
    tensors: int
    seconds: float
    counters: HookCounters
    token_ids: list[int]
    generated_ids: list[int]
    prompt_logits: np.ndarray
    placement: dict[str, str]


def _check_tokens(config: GenerateConfig, model: TextModel) -> int:
    """The image token's position; every id must index the embedding table (image rows included)."""
    h = model.hparams
    for token in config.token_ids:
        if not 0 <= token < h.embedding_rows:
            raise InspectorError(f"--token-ids: {token} is outside the embedding table (0..{h.embedding_rows - 1}; "
                                 f"ids from {h.vocab} on are the image tokens)")
    if h.image_token not in config.token_ids:
        raise InspectorError(f"the prompt has no image token ({h.image_token}, <|image|>): put it where the image "
                             "goes; Llama 3.2 Vision reads an image only from the image token on")
    if len(config.token_ids) + config.n_predict > model.n_ctx:
        raise InspectorError(f"{len(config.token_ids)} prompt tokens plus -n {config.n_predict} do not fit "
                             f"-c {model.n_ctx}")
    return config.token_ids.index(h.image_token)


class _TextRunner:
    """Allocates, fills and computes text graphs on the vision session's scheduler."""

    def __init__(self, session: Session, model: TextModel, rows: ImageRows) -> None:
        self.session = session
        self.model = model
        self.rows = rows
        self.lib = session.lib

    def reserve(self, n_tokens: int) -> None:
        """Size the compute buffers for the prompt's text graph too (a throwaway one, as Session.reserve does)."""
        measured = build_text_graph(self.model, n_tokens, 0, "read")
        try:
            if not self.session.calls.ggml_backend_sched_reserve(self.session.sched, measured.graph):
                raise InspectorError("the scheduler could not reserve memory for the text graph")
        finally:
            measured.free()

    def compute(self, graph: TextGraph, tokens: list[int], hook: TensorHook | None, states: np.ndarray | None,
                left_behind: int | None) -> np.ndarray:
        """Compute ``graph`` on ``tokens``; the image from ``states`` (copied) or ``left_behind`` (an address).

        ``hook`` None: the native hook, which took the scheduler (``Session.calls``), captures it itself.
        """
        lib, calls, sched = self.lib, self.session.calls, self.session.sched
        calls.ggml_backend_sched_reset(sched)
        calls.ggml_backend_sched_set_eval_callback(
            sched, ctypes.cast(hook.callback, ctypes.c_void_p) if hook is not None else None, None)
        leaf = graph.inputs.get("cross_attn_states")
        sizes = self.session.buffer_sizes()
        if leaf is not None and left_behind is not None:
            # The original port's read: the leaf is where the vision graph left its output.
            source = Tensor(lib, left_behind).struct
            if lib.base.ggml_backend_tensor_alloc(source.buffer, leaf, source.data) != 0:
                raise InspectorError("cannot place cross_attn_states at the vision output's address")
        if not calls.ggml_backend_sched_alloc_graph(sched, graph.graph):
            raise InspectorError("the scheduler could not allocate the text graph")
        if leaf is not None and left_behind is not None and self.session.buffer_sizes() != sizes:
            # A grown buffer is a freed one: the late read would read freed memory, not reused memory.
            raise InspectorError("the scheduler reallocated its compute buffers for the text graph, so the vision "
                                 "output's memory was freed, not reused: late-read cannot be reproduced safely "
                                 "with this placement")
        n, n_past = graph.n_tokens, graph.n_past
        positions = np.arange(n_past, n_past + n)
        set_data(lib, graph.inputs["inp_tokens"], np.asarray(tokens, dtype=np.int32))
        set_data(lib, graph.inputs["inp_pos"], positions.astype(np.int32))
        set_data(lib, graph.inputs["kq_mask"], causal_mask(n, n_past))
        if "cross_attn_mask" in graph.inputs:
            mask, rows = self.rows.masks(positions)
            set_data(lib, graph.inputs["cross_attn_mask"], mask)
            set_data(lib, graph.inputs["cross_attn_rows"], rows)
        if leaf is not None and left_behind is None:
            set_data(lib, leaf, states)
        status = calls.ggml_backend_sched_graph_compute(sched, graph.graph)
        if status != 0:
            raise InspectorError(f"text graph compute failed with status {status}")
        logits = read_tensor(Tensor(lib, graph.outputs["result_output"])).array
        return logits.reshape(n, -1)


def _encode_and_generate(config: GenerateConfig, capture: CaptureSession, hook: Any, text: _TextRunner,
                         inputs: Preprocessed, geometry: dict, native: Any = None) -> tuple[np.ndarray, list[int]]:
    """The vision graph, the prompt's text graph, then ``n_predict`` greedy steps; the prompt's logits and tokens.

    Generation stops early when the hook stopped capturing (a signal, a full
    disk): the session says why when it closes the dump.  With ``native``
    (the preloaded hook, which took the scheduler) the graphs are computed
    through its calls.
    """
    session, model = text.session, text.model
    graph_hook = None if native is not None else hook

    vision_graph = build_mllama(session.weights, tuple(config.probes))
    prompt_graph = build_text_graph(model, len(config.token_ids), 0, "read")
    generated: list[int] = []
    try:
        session.reserve(tuple(config.probes))
        text.reserve(len(config.token_ids))
        capture.begin_evaluation("encode", {"geometry": geometry, "image": config.image, **unknown_inputs()})
        capture.say(f"encoding the image on {', '.join(b.name for b in session.backends)}")
        session.compute(vision_graph, inputs, graph_hook, why_not_unsplit=GENERATE_RESERVES)
        vision_out = vision_graph.outputs["ca_patch_embd"]
        states = None
        if config.vision_output == "copy":
            states = read_tensor(Tensor(session.lib, vision_out)).array.reshape(-1, model.hparams.hidden)
        capture.begin_evaluation("decode", {"token_ids": config.token_ids, "pos0": 0, "n_tokens": len(config.token_ids),
                                            **runner_inputs(0, len(config.token_ids), tokens=config.token_ids)})
        capture.say(f"decoding {len(config.token_ids)} prompt tokens ({config.vision_output})")
        prompt_logits = text.compute(prompt_graph, config.token_ids, graph_hook, states,
                                     vision_out if states is None else None)
        last = prompt_logits[-1]
        for step in range(config.n_predict):
            if not hook.capturing:
                break
            token = int(np.argmax(last))
            generated.append(token)
            if step == config.n_predict - 1:
                break
            pos = len(config.token_ids) + step
            step_graph = build_text_graph(model, 1, pos, "cached")
            try:
                capture.begin_evaluation("generate", {"token_ids": [token], "pos0": pos, "n_tokens": 1,
                                                      **runner_inputs(pos, 1, tokens=[token])})
                last = text.compute(step_graph, [token], graph_hook, None, None)[-1]
            finally:
                step_graph.free()
    finally:
        vision_graph.free()
        prompt_graph.free()
    return prompt_logits, generated


def generate(config: GenerateConfig, selection: Selection, output: str | Path, *, overwrite: bool = False,
             progress: Callable[[str], None] = lambda _m: None,
             hook_factory: Callable[[CaptureSession], Any] | None = None,
             capture_mode: dict[str, Any] | None = None) -> GenerateSummary:
    """Encode, decode the prompt, generate ``n_predict`` tokens greedily; one dump of kinds encode/decode/generate.

    How the capture ends (a signal, a full disk) is the :class:`CaptureSession`'s.  ``hook_factory`` makes the
    command line's preloaded native hook (:func:`inspector.native.inprocess.native_capture`, asked for the callback
    mode: see GENERATE_RESERVES), which takes the scheduler and does the per-node work in C; ``capture_mode`` is
    what the dump's config records of it.
    """
    if config.vision_output not in MLLAMA_VISION_OUTPUTS:
        raise InspectorError(f"--vision-output must be one of {', '.join(MLLAMA_VISION_OUTPUTS)}")
    started = time.perf_counter()
    with Session(config) as session:
        vision = session.weights.hparams
        model = load_text_model(config.model, session.cpu, session.offload, config.offload_layers, config.n_ctx,
                                vision.max_tiles * vision.num_positions)
        try:
            image_position = _check_tokens(config, model)
            inputs = session.preprocess(config.image)
            tiles = int(np.asarray(inputs.aspect_ratio_mask).sum())
            text = _TextRunner(session, model, ImageRows(image_position, tiles, vision.max_tiles,
                                                         vision.num_positions))
            geometry = inputs.geometry.as_dict()
            recorded_mode = capture_mode or {
                "hook": "python", "python_hook_because": "called through the Python API, with no native hook"}
            run_config = {"runner": "mllama-generate", **asdict(config), "hparams": asdict(model.hparams),
                          "backends": [b.name for b in session.backends], "geometry": geometry,
                          "select": selection.describe(),
                          "capture_mode": {**recorded_mode, "callback_because": GENERATE_RESERVES}}
            with CaptureSession(output, run_config, system_facts(session.lib), overwrite=overwrite,
                                progress=progress, stats_of=stats_function()) as capture:
                hook, native = session.capture_hook(capture, selection, hook_factory)
                try:
                    prompt_logits, generated = _encode_and_generate(config, capture, hook, text, inputs, geometry,
                                                                    native)
                finally:
                    if native is not None:
                        native.close()  # every frame read; the hook off
                capture.finish({"token_ids": config.token_ids, "generated_ids": generated,
                                "vision_output": config.vision_output, "image_position": image_position,
                                "tiles": tiles})
            placement = {**session.weights.placement, **model.weights.placement}
            return GenerateSummary(capture.path, capture.tensor_count, time.perf_counter() - started,
                                   hook.counters, config.token_ids, generated, prompt_logits, placement)
        finally:
            model.free()
