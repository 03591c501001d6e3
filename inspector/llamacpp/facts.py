"""What a dump records of a GGUF file a run loads (the model, the projector), in bounded reads."""

from __future__ import annotations

from typing import Any

from inspector.constants import LLAMA_FTYPE_NAMES
from inspector.gguf.header import cached_sha256, check_gguf_file, fingerprint, read_leading_metadata


def model_facts(path: str, sha256: bool = False) -> dict[str, Any]:
    """Path, size, fingerprint, name, architecture and file type of a GGUF file, in bounded reads.

    ``file_type`` is ``general.file_type`` named as gguf-py names llama.cpp's
    ftype, without its ``MOSTLY_``/``ALL_`` prefix (``F32``, ``Q4_K_M``): what
    the weights mostly are, which decides compare's default tolerance; None
    when the file does not say.

    O(1) in the vocabulary and the file size: nothing past the first 64 KiB of metadata is walked and
    the data section is not hashed, unless ``sha256`` asks for the full hash
    (cached by path, size and mtime).
    """
    model = check_gguf_file(path)
    leading = read_leading_metadata(model, ("general.name", "general.architecture", "general.file_type"))
    facts = {
        "path": str(model.resolve()),
        "size": model.stat().st_size,
        "fingerprint": fingerprint(path),
        "name": leading.get("general.name"),
        "architecture": leading.get("general.architecture"),
        "file_type": _file_type_name(leading.get("general.file_type")),
    }
    if sha256:
        facts["sha256"] = cached_sha256(model)
    return facts


def _file_type_name(value: Any) -> str | None:
    """``15`` -> ``Q4_K_M``; an ftype neither our table nor gguf-py knows keeps its number (``ftype 99``)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if value in LLAMA_FTYPE_NAMES:
        return LLAMA_FTYPE_NAMES[value]
    from gguf import LlamaFileType  # here, not at the top: see inspector.ggml.types

    try:
        return LlamaFileType(value).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        return f"ftype {value}"
