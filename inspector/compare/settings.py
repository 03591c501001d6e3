"""The few run settings that decide what a run computes, for a one-line answer to "how do the runs differ?".

A dump's configuration holds dozens of keys (argv, environment, storage,
paths), and two runs made by different programs differ in most of them, so
listing every difference buries the one that matters.  ``compare`` prints
only the keys of :data:`SETTINGS` that both runs record and that differ, in
that fixed order (what was run, the batch sizes, the types, the placement,
the threads), values cut to :data:`MAX_VALUE_CHARS`.  A setting one program
does not record (None on one side: an ``exec`` of another program records no
``n_ubatch``) is not a difference.  ``compare --json`` (``config_differences``)
and ``ls --config`` keep the full list.
"""

from __future__ import annotations

from typing import Any

# Flattened config keys (inspector.compare.runs.flatten_config) in the order shown, and their labels.
# model_facts.fingerprint/sha256 and name come first, together as "model" (see _model).
SETTINGS: tuple[tuple[str, str], ...] = (
    ("model_facts.file_type", "weights"),
    ("mmproj_facts.fingerprint", "mmproj"),
    ("prompt", "prompt"),
    ("token_ids", "token_ids"),
    ("n_ctx", "n_ctx"),
    ("n_batch", "n_batch"),
    ("n_ubatch", "n_ubatch"),
    ("type_k", "type_k"),
    ("type_v", "type_v"),
    ("flash_attn", "flash_attn"),
    ("n_gpu_layers", "n_gpu_layers"),
    ("offload_layers", "offload_layers"),
    ("devices", "devices"),
    ("device", "device"),
    ("override_tensor", "override_tensor"),
    ("op_offload", "op_offload"),
    ("rpc", "rpc"),
    ("mmproj_offload", "mmproj_offload"),
    ("threads", "threads"),
    ("threads_batch", "threads_batch"),
    ("probes", "probes"),
    ("vision_output", "vision_output"),
)
MAX_VALUE_CHARS = 40
FINGERPRINT_CHARS = 8


def short(value: Any) -> str:
    """A value as a Python literal, cut to MAX_VALUE_CHARS (escaping is the caller's: it prints)."""
    text = repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS - 3] + "..."


def _differs(values: tuple[Any, Any] | None) -> bool:
    return values is not None and None not in values and values[0] != values[1]


def _model(differences: dict[str, tuple[Any, Any]]) -> tuple[str, str] | None:
    """The model files, when both runs identify theirs and the identities differ: name and fingerprint prefix.

    The path a run was given is not compared: the same file under two names
    is the same model, and an ``exec`` dump records another form of the path.
    """
    identity = next((key for key in ("model_facts.sha256", "model_facts.fingerprint")
                     if _differs(differences.get(key))), None)
    if identity is None:
        return None
    names = differences.get("model_facts.name") or (None, None)
    named = _differs(names)
    a, b = ((f"{names[side]} " if named else "") + str(differences[identity][side])[:FINGERPRINT_CHARS]
            for side in (0, 1))
    return a, b


def setting_differences(differences: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """The settings that matter among ``config_differences`` (flattened key -> (A, B)), in SETTINGS order."""
    chosen: dict[str, tuple[Any, Any]] = {}
    model = _model(differences)
    if model is not None:
        chosen["model"] = model
    for key, label in SETTINGS:
        if _differs(differences.get(key)):
            chosen[label] = differences[key]
    return chosen


def describe(differences: dict[str, tuple[Any, Any]]) -> str:
    """``n_ubatch: 512 -> 4, flash_attn: 'off' -> 'on'``, or "" when no setting that matters differs."""
    shown = {label: (a, b) if label == "model" else (short(a), short(b))
             for label, (a, b) in setting_differences(differences).items()}
    return ", ".join(f"{label}: {a} -> {b}" for label, (a, b) in shown.items())
