"""``capture-hf``: run a transformers checkpoint once and dump its activations as llama.cpp's tensors.

One forward pass over the prompt's tokens is one evaluation, recorded with
its token ids, positions and output rows like any run's
(``docs/format.md``, "Evaluation inputs"), so ``compare`` aligns it with a
ggml run at any batch split and compares per token.  A model given an image
(``--image``, mllama) computes its vision tower in the same forward pass;
its tensors go to an evaluation of kind ``encode`` before the prompt's,
with unknown inputs as a ggml encoder's, which alignment pairs with the
port's encoder evaluation by their order.  Every tensor the map
names is taken by a forward hook (or a pre-hook, or a wrapper around a
function such as ``apply_rotary_pos_emb``), laid out as ggml lays out that
tensor (``inspector.reference.layout``) and written under llama.cpp's name
and occurrence, with op ``REFERENCE`` (which matches any op in a comparison).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from inspector.capture.selection import Selection
from inspector.capture.session import CaptureSession, Progress
from inspector.constants import REFERENCE_RUNNER
from inspector.dump.record import TensorRecord
from inspector.errors import InspectorError, SetupError
from inspector.native.tensor_stats import stats_function
from inspector.reference.checkpoint import Checkpoint, identity, load_model, load_tokenizer, open_checkpoint
from inspector.reference.images import ImageInputs, image_inputs, image_token
from inspector.reference.layout import Heads, to_ggml
from inspector.reference.name_map import (
    EVALUATIONS,
    ArchitectureMap,
    TensorMapping,
    config_value,
    load_map_file,
    map_for,
)

OP = "REFERENCE"
GGML_TYPE = {"float32": "f32", "float64": "f64", "bfloat16": "bf16"}
BUFFER = "CPU (torch)"
MAX_TOKENS = 1 << 16
SHOWN_UNMAPPED = 8


@dataclass
class HfRunConfig:
    """What ``capture-hf`` runs: a checkpoint, its input, the precision and the maps."""

    model: str
    prompt: str | None = None
    token_ids: list[int] | None = None
    dtype: str = "float32"
    map_files: list[str] = field(default_factory=list)
    image: str | None = None

    def describe(self) -> dict[str, Any]:
        """The dump's config: what ran, and its precision as the settings a ggml run records (the reference
        keeps its keys and values in ``dtype``, its "KV cache", and computes attention without flash
        attention's f16 products), so the default tolerance weighs them as it weighs two ggml runs'."""
        cache = GGML_TYPE[self.dtype]
        return {"runner": REFERENCE_RUNNER, "model": self.model, "prompt": self.prompt, "token_ids": self.token_ids,
                "image": self.image, "dtype": self.dtype, "map_files": self.map_files, "type_k": cache,
                "type_v": cache, "flash_attn": "off",
                "model_facts": {"file_type": cache.upper()}}


@dataclass
class HfCaptureSummary:
    """What the capture did: counts, the map used, and what the map did not cover."""

    path: Path
    tensors: int
    n_tokens: int
    architecture: str
    unmapped_modules: list[str]
    missing: list[str]
    # Mapped tensors whose module or function the forward pass never ran (no image given, a layer skipped).
    not_computed: list[str] = field(default_factory=list)


def _heads(architecture: ArchitectureMap, config: dict[str, Any]) -> Heads:
    def value(key: str, fallback: int | None = None) -> int:
        named = architecture.heads.get(key)
        found = config_value(config, named) if named else None
        found = fallback if found is None else found
        if not isinstance(found, int) or found <= 0:
            raise SetupError(f"the checkpoint's config has no positive {architecture.heads.get(key, key)!r}")
        return found
    q = value("q")
    hidden = config_value(config, architecture.heads.get("hidden", "hidden_size"))
    return Heads(q, value("kv", q), value("head_dim", hidden // q if isinstance(hidden, int) else None))


def _tokens(run: HfRunConfig, checkpoint: Checkpoint, architecture: ArchitectureMap) -> list[int]:
    if run.token_ids is not None:
        ids = list(run.token_ids)
    elif run.prompt is not None:
        ids = list(load_tokenizer(checkpoint)(run.prompt, add_special_tokens=True)["input_ids"])
    else:
        raise InspectorError("give the input: -p TEXT, -f FILE or --token-ids IDS")
    if not ids or len(ids) > MAX_TOKENS:
        raise InspectorError(f"the input has {len(ids)} tokens; capture-hf takes 1 to {MAX_TOKENS}")
    vocabulary = config_value(checkpoint.config, architecture.vocabulary)
    # The image token lies past the text vocabulary (mllama's embedding table has rows for it).
    allowed = {image_token(architecture.image, checkpoint.config)} if architecture.image else set()
    if isinstance(vocabulary, int) and any(not 0 <= token < vocabulary and token not in allowed for token in ids):
        raise InspectorError(f"a token id is outside the model's vocabulary of {vocabulary}")
    return ids


def _image(run: HfRunConfig, architecture: ArchitectureMap, checkpoint: Checkpoint, tokens: list[int]
           ) -> ImageInputs | None:
    """The image inputs when the map reads an image; an image is required there and refused elsewhere."""
    if not architecture.image:
        if run.image is not None:
            raise InspectorError(f"--image: the {architecture.architecture} map takes no image")
        return None
    if run.image is None:
        raise InspectorError(f"the {architecture.architecture} map reads an image: give --image IMG (and its "
                             "image token in the prompt)")
    return image_inputs(architecture.image, checkpoint, run.image, tokens)


def _numpy(value: Any, index: int) -> np.ndarray:
    """A hooked value (a tensor, or a tuple holding it at ``index``) as numpy, batch axis dropped."""
    import torch

    if isinstance(value, (tuple, list)):
        value = value[index] if index < len(value) else None
    if not isinstance(value, torch.Tensor):
        raise InspectorError(f"the hooked value is {type(value).__name__}, not a tensor")
    value = value.detach()
    if value.dtype not in (torch.float32, torch.float64):
        value = value.to(torch.float32)  # bfloat16 and half widen exactly
    array = value.cpu().numpy()
    return array[0] if array.ndim >= 2 and array.shape[0] == 1 else array


class _Recorder:
    """Receives hooked values in execution order and writes them as records of the evaluation they belong to.

    The evaluations are begun in ``EVALUATIONS`` order as their first tensor
    arrives (an image encoder's before the prompt's), and all of them by
    ``close``, so the dump's evaluations do not depend on the selection.
    """

    def __init__(self, session: CaptureSession, heads: Heads, selection: Selection, tokens: list[int],
                 encode: dict[str, Any] | None) -> None:
        self.session, self.heads, self.selection, self.tokens, self.encode = session, heads, selection, tokens, encode
        self.kinds = [kind for kind in EVALUATIONS if kind != "encode" or encode is not None]
        self.begun = 0
        self.eval_index = self.node = -1
        self.failures: list[str] = []
        self.taken: set[tuple[str, int, str]] = set()

    def _advance(self, kind: str) -> bool:
        """Begin the evaluations up to ``kind``; False when ``kind``'s evaluation has already ended."""
        wanted = self.kinds.index(kind) + 1
        if wanted < self.begun:
            return False
        while self.begun < wanted:
            current = self.kinds[self.begun]
            self.begun += 1
            self.node = 0
            if current == "encode":
                self.eval_index = self.session.begin_evaluation("encode", dict(self.encode or {}))
                continue
            n = len(self.tokens)
            inputs = {"tokens": self.tokens, "n_tokens": n, "positions": list(range(n)), "seq_ids": [0] * n,
                      "outputs": list(range(n)), "source": "runner"}
            self.eval_index = self.session.begin_evaluation("prompt", {"inputs_known": True, "inputs": inputs,
                                                                       "n_tokens": n, "token_ids": self.tokens})
            self._inputs()
        return True

    def _inputs(self) -> None:
        """llama.cpp's input leafs, as the graph would hold them: the token ids and their positions."""
        for name, values in (("inp_tokens", self.tokens), ("inp_pos", range(len(self.tokens)))):
            if self.selection.matches(name):
                array = np.asarray(values, dtype=np.int32)
                self.session.writer.write(TensorRecord.for_array(name, array, self.eval_index, self.node, OP), array)
                self.node += 1

    def take(self, mapping: TensorMapping, value: Any) -> None:
        if mapping.evaluation not in self.kinds or not self._advance(mapping.evaluation):
            self.failures.append(f"{mapping.name}: computed outside its {mapping.evaluation} evaluation")
            return
        try:
            array = to_ggml(_numpy(value, mapping.index), mapping.layout, self.heads)
        except InspectorError as error:
            self.failures.append(f"{mapping.name}: {error}")
            return
        record = replace(TensorRecord.for_array(mapping.name, array, self.eval_index, self.node, OP),
                         occurrence=mapping.occurrence, is_leaf=False, flags=[], buffer=BUFFER, buffer_type="CPU")
        self.session.writer.write(record, array)
        self.taken.add((mapping.name, mapping.occurrence, mapping.evaluation))
        self.node += 1

    def close(self) -> None:
        """Begin whatever evaluation no tensor began (a selection that takes none of its tensors)."""
        self._advance(self.kinds[-1])

    def never_taken(self, mappings: list[TensorMapping]) -> list[TensorMapping]:
        """Mappings whose hook never fired: the forward pass skipped the module or made fewer calls."""
        return [m for m in mappings if (m.name, m.occurrence, m.evaluation) not in self.taken]


def _where(mapping: TensorMapping) -> str:
    return f"{mapping.name} ({mapping.module or mapping.function + '()'})"


@contextmanager
def _hooks(model: Any, mappings: list[TensorMapping], take: Callable[[TensorMapping, Any], None]
           ) -> Iterator[list[TensorMapping]]:
    """Hooks for every mapping while inside; yields the mappings whose module or function the model lacks."""
    handles, missing, patched = [], [], []
    calls: dict[str, list[TensorMapping]] = {}
    for mapping in mappings:
        if mapping.point == "call":
            calls.setdefault(mapping.function, []).append(mapping)
            continue
        try:
            module = model.get_submodule(mapping.module)
        except AttributeError:
            missing.append(mapping)
            continue
        if mapping.point == "output":
            handles.append(module.register_forward_hook(lambda _m, _i, out, m=mapping: take(m, out)))
        else:
            handles.append(module.register_forward_pre_hook(lambda _m, args, m=mapping: take(m, args)))
    namespace = sys.modules[type(model).__module__]
    for name, wanted in calls.items():
        original = getattr(namespace, name, None)
        if not callable(original):
            missing.extend(wanted)
            continue
        by_call: dict[int, list[TensorMapping]] = {}
        for mapping in wanted:
            by_call.setdefault(mapping.call, []).append(mapping)
        counter = iter(range(1 << 30))

        def wrapper(*args: Any, _original: Callable[..., Any] = original,
                    _by_call: dict[int, list[TensorMapping]] = by_call, _counter: Iterator[int] = counter,
                    **kwargs: Any) -> Any:
            result = _original(*args, **kwargs)
            for mapping in _by_call.get(next(_counter), []):
                take(mapping, result)
            return result

        setattr(namespace, name, wrapper)
        patched.append((name, original))
    try:
        yield missing
    finally:
        for handle in handles:
            handle.remove()
        for name, original in patched:
            setattr(namespace, name, original)


def unmapped_modules(model: Any, mappings: list[TensorMapping]) -> list[str]:
    """Leaf modules (no children) whose output no mapping takes: listed, never silently dropped."""
    taken = {m.module for m in mappings if m.point != "call"}
    return [name for name, module in model.named_modules()
            if name and not any(True for _ in module.children()) and name not in taken]


def capture_hf(run: HfRunConfig, selection: Selection, output: str | Path, *, overwrite: bool = False,
               progress: Progress | None = None) -> HfCaptureSummary:
    """Run the checkpoint over the input once and write the mapped activations to ``output``."""
    import torch

    from inspector.ggml.system import host_facts

    checkpoint = open_checkpoint(run.model)
    architecture = map_for(checkpoint.model_type, [load_map_file(path) for path in run.map_files])
    heads = _heads(architecture, checkpoint.config)
    tokens = _tokens(run, checkpoint, architecture)
    mappings = [m for m in architecture.mappings(checkpoint.config) if selection.matches(m.name)]
    image = _image(run, architecture, checkpoint, tokens)
    model = load_model(checkpoint, run.dtype, architecture.model_class)
    config = {**run.describe(), "select": selection.describe(), "map": {"architecture": architecture.architecture,
                                                                       "source": architecture.source},
              "reference": identity(checkpoint)}
    if image is not None:
        config["image_preprocessing"] = image.info["preprocessing"]
    with CaptureSession(output, config, host_facts(), overwrite=overwrite, progress=progress,
                        stats_of=stats_function()) as session:
        recorder = _Recorder(session, heads, selection, tokens, image.info if image is not None else None)
        with _hooks(model, mappings, recorder.take) as missing, torch.no_grad():
            model(input_ids=torch.tensor([tokens]), use_cache=False, **(image.kwargs if image is not None else {}))
        recorder.close()
        lacking = [_where(m) for m in missing]
        idle = [_where(m) for m in recorder.never_taken(mappings) if m not in missing]
        unmapped = unmapped_modules(model, mappings)
        result = {"architecture": architecture.architecture, "unmapped_modules": unmapped, "missing": lacking,
                  "not_computed": idle, "layout_failures": recorder.failures}
        session.finish(result, incomplete="; ".join(recorder.failures[:3]))
    return HfCaptureSummary(session.path, session.tensor_count, len(tokens), architecture.architecture, unmapped,
                            lacking, idle)
