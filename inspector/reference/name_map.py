"""Which transformers module computes which llama.cpp tensor: the name and layout maps, as data.

A port's graph names its tensors the way llama.cpp's builders call ``cb()``
(``attn_norm-3``, the three ``Qcur-3``: after the matmul, the reshape into
heads and RoPE); the reference implementation has modules
(``model.layers.3.input_layernorm``).  A map says, per architecture, which
module's output (or input, or which call of a function) is which tensor and
occurrence, and how its values are laid out to match ggml's (``layout``).
A model given an image (mllama) says how the image becomes its inputs
(``image``) and which tensors belong to the image encoder's evaluation
(``evaluation = "encode"``); models whose layers differ (self- and
cross-attention) say per entry which layers it covers (``layers``,
``skip_layers``: config keys).
One TOML file per architecture ships in ``inspector/reference/maps/``; a
user's file (``capture-hf --map-file``) adds an architecture or replaces one
without code.  ``docs/reference.md`` explains how to write one.

A map file is somebody else's file: it is read with a size limit, every key
is checked, and nothing in it runs; module paths are looked up by name.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from inspector.errors import InspectorError, SetupError
from inspector.files.inputs import read_small_file
from inspector.reference.checkpoint import MODEL_CLASSES

MAX_MAP_BYTES = 256 * 1024
MAX_TENSORS = 512
MAX_LAYERS = 4096
# Where a tensor is taken: a module's output, a module's first input, or a call of a function of the model's
# transformers module (``apply_rotary_pos_emb``: RoPE is no module), in call order across the layers.
POINTS = ("output", "input", "call")
# Layout steps, applied in order to the module's tensor with its batch axis dropped (docs/reference.md).
LAYOUTS = ("heads:q", "heads:kv", "rope_rows:q", "rope_rows:kv", "tokens_first", "patches", "one_image",
           "rows")
# The evaluations a capture makes, in the order a ggml port runs them: an image encoder's graph (inputs
# unknown, paired with the port's encoder evaluation by order), then the prompt's (tokens and positions).
EVALUATIONS = ("encode", "prompt")
# How an image becomes the model's inputs (inspector.reference.images): one builder per image architecture.
IMAGE_INPUTS = ("mllama",)
_TENSOR_KEYS = {"name", "occurrence", "module", "point", "function", "index", "layout", "note", "evaluation",
                "layers", "skip_layers"}
_TOP_KEYS = {"architecture", "model_types", "layers", "heads", "tensor", "description", "model_class", "image",
             "vocabulary"}
_HEAD_KEYS = {"q", "kv", "head_dim", "hidden"}
_NAME = re.compile(r"^[A-Za-z0-9_.#\- (){}]{1,64}$")
_MODULE = re.compile(r"^[A-Za-z0-9_.{}]{1,200}$")


@dataclass(frozen=True)
class TensorMapping:
    """One llama.cpp tensor (``name`` may hold ``{layer}``) and where the reference computes it."""

    name: str
    occurrence: int = 0
    module: str = ""
    point: str = "output"
    function: str = ""
    index: int = 0
    layout: tuple[str, ...] = ()
    evaluation: str = "prompt"
    # Config keys (dotted: ``text_config.cross_attention_layers``) of the layers this entry covers, a count or
    # a list, and of layers it leaves out: models whose layers are not all alike (mllama's cross-attention).
    layers: str = ""
    skip_layers: str = ""
    # The layer a per-layer mapping was expanded for (-1: none), and which call of ``function`` is that
    # layer's: the n-th call is the n-th layer the entry covers (a function only some layers call).
    layer: int = -1
    call: int = 0

    @property
    def per_layer(self) -> bool:
        return "{layer}" in self.name or "{layer}" in self.module

    def expand(self, layers: int | list[int]) -> list[TensorMapping]:
        """This mapping per layer (``{layer}`` replaced; ``layers``: a count or the indices), or itself."""
        if not self.per_layer:
            return [self]
        indices = list(range(layers)) if isinstance(layers, int) else layers
        return [replace(self, name=self.name.replace("{layer}", str(n)),
                        module=self.module.replace("{layer}", str(n)), layer=n, call=call)
                for call, n in enumerate(indices)]


@dataclass(frozen=True)
class ArchitectureMap:
    """A whole map: llama.cpp's architecture, the transformers ``model_type`` values it serves, its tensors."""

    architecture: str
    model_types: tuple[str, ...]
    layers: str
    heads: dict[str, str]
    tensors: tuple[TensorMapping, ...]
    source: str = ""
    description: str = field(default="", compare=False)
    model_class: str = MODEL_CLASSES[0]
    image: str = ""
    vocabulary: str = "vocab_size"

    def mappings(self, config: dict[str, Any]) -> list[TensorMapping]:
        """Every entry expanded over the layers it covers in the checkpoint's ``config``."""
        return [m for entry in self.tensors
                for m in (entry.expand(self.layer_indices(entry, config)) if entry.per_layer else [entry])]

    def layer_indices(self, entry: TensorMapping, config: dict[str, Any]) -> list[int]:
        """The layers ``entry`` covers: its ``layers`` key (or the map's) less its ``skip_layers``."""
        covered = _layer_list(config, entry.layers or self.layers)
        skipped = set(_layer_list(config, entry.skip_layers)) if entry.skip_layers else set()
        return [n for n in covered if n not in skipped]


def config_value(config: dict[str, Any], key: str) -> Any:
    """``config[key]``, a dotted key looking into nested tables (``text_config.num_hidden_layers``); None if absent."""
    value: Any = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _layer_list(config: dict[str, Any], key: str) -> list[int]:
    value = config_value(config, key)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_LAYERS:
        return list(range(value))
    if isinstance(value, list) and len(value) <= MAX_LAYERS and all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_LAYERS for n in value):
        return sorted(set(value))
    raise SetupError(f"the checkpoint's config has no layer count or layer list {key!r}")


def _fail(source: str, message: str) -> InspectorError:
    return InspectorError(f"{source}: {message}")


def _text(value: Any, what: str, source: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise _fail(source, f"{what} must be a short name of letters, digits, _.-#() and {{layer}} "
                            f"(got {str(value)[:60]!r})")
    return value


def _tensor(entry: Any, number: int, source: str) -> TensorMapping:
    where = f"[[tensor]] {number + 1}"
    if not isinstance(entry, dict):
        raise _fail(source, f"{where} must be a table")
    unknown = set(entry) - _TENSOR_KEYS
    if unknown:
        raise _fail(source, f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TENSOR_KEYS))})")
    name = _text(entry.get("name"), f"{where} name", source, _NAME)
    point = entry.get("point", "output")
    if point not in POINTS:
        raise _fail(source, f"{where} ({name}): point must be one of {', '.join(POINTS)}")
    occurrence, index = entry.get("occurrence", 0), entry.get("index", 0)
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 64 for n in (occurrence, index)):
        raise _fail(source, f"{where} ({name}): occurrence and index must be integers 0..63")
    layout = entry.get("layout", [])
    if not isinstance(layout, list) or any(step not in LAYOUTS for step in layout):
        raise _fail(source, f"{where} ({name}): layout must be a list of {', '.join(LAYOUTS)}")
    evaluation = entry.get("evaluation", "prompt")
    if evaluation not in EVALUATIONS:
        raise _fail(source, f"{where} ({name}): evaluation must be one of {', '.join(EVALUATIONS)}")
    if point == "call":
        function = _text(entry.get("function"), f"{where} function", source, _MODULE)
        module = ""
    else:
        module = _text(entry.get("module"), f"{where} module", source, _MODULE)
        function = ""
    layers = {key: _text(entry[key], f"{where} {key}", source, _MODULE) for key in ("layers", "skip_layers")
              if key in entry}
    return TensorMapping(name, occurrence, module, point, function, index, tuple(layout), evaluation, **layers)


def parse_map(text: bytes, source: str) -> ArchitectureMap:
    """A map file's contents, checked key by key; any fault is one line naming the file and the key."""
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise _fail(source, f"not a valid TOML map file ({error})") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise _fail(source, f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    architecture = _text(data.get("architecture"), "architecture", source, _NAME)
    model_types = data.get("model_types", [])
    if not isinstance(model_types, list) or not model_types:
        raise _fail(source, "model_types must list the transformers model_type values the map serves")
    heads = data.get("heads", {})
    if not isinstance(heads, dict) or set(heads) - _HEAD_KEYS:
        raise _fail(source, f"heads must be a table of {', '.join(sorted(_HEAD_KEYS))} (config keys)")
    tensors = data.get("tensor", [])
    if not isinstance(tensors, list) or not tensors or len(tensors) > MAX_TENSORS:
        raise _fail(source, f"a map needs 1 to {MAX_TENSORS} [[tensor]] tables")
    model_class, image = data.get("model_class", MODEL_CLASSES[0]), data.get("image", "")
    if model_class not in MODEL_CLASSES:
        raise _fail(source, f"model_class must be one of {', '.join(MODEL_CLASSES)}")
    if image and image not in IMAGE_INPUTS:
        raise _fail(source, f"image must be one of {', '.join(IMAGE_INPUTS)} (how an image becomes the inputs)")
    mappings = tuple(_tensor(entry, number, source) for number, entry in enumerate(tensors))
    if not image and any(m.evaluation == "encode" for m in mappings):
        raise _fail(source, "evaluation \"encode\" needs the map's image key (the model must be given an image)")
    return ArchitectureMap(
        architecture=architecture,
        model_types=tuple(_text(t, "a model_type", source, _NAME) for t in model_types),
        layers=_text(data.get("layers", "num_hidden_layers"), "layers", source, _MODULE),
        heads={key: _text(value, f"heads.{key}", source, _MODULE) for key, value in heads.items()},
        tensors=mappings, source=source, description=str(data.get("description", ""))[:500],
        model_class=model_class, image=image,
        vocabulary=_text(data.get("vocabulary", "vocab_size"), "vocabulary", source, _MODULE))


def load_map_file(path: str | Path) -> ArchitectureMap:
    """A user's map file (``--map-file``)."""
    return parse_map(read_small_file(path, MAX_MAP_BYTES, "a map file"), str(path))


def builtin_maps() -> dict[str, ArchitectureMap]:
    """The maps that ship with the package, by llama.cpp architecture."""
    maps = {}
    for entry in sorted(resources.files("inspector.reference").joinpath("maps").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            parsed = parse_map(entry.read_bytes(), f"maps/{entry.name}")
            maps[parsed.architecture] = parsed
    return maps


def map_for(model_type: str, extra: list[ArchitectureMap] | None = None) -> ArchitectureMap:
    """The map serving a transformers ``model_type``: a user's file first, then the shipped ones."""
    for candidate in [*(extra or []), *builtin_maps().values()]:
        if model_type in candidate.model_types:
            return candidate
    known = sorted({t for m in [*(extra or []), *builtin_maps().values()] for t in m.model_types})
    raise InspectorError(f"no name map for model_type {model_type!r} (maps exist for {', '.join(known)}); write "
                         "one (docs/reference.md) and pass it with --map-file")
