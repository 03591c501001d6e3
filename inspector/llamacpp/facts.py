"""What a dump records of a GGUF file a run loads (the model, the projector), in bounded reads."""

from __future__ import annotations

from typing import Any

from inspector.gguf.header import cached_sha256, check_gguf_file, fingerprint, read_leading_metadata


def model_facts(path: str, sha256: bool = False) -> dict[str, Any]:
    """Path, size, fingerprint, name and architecture of a GGUF file, in bounded reads.

    O(1) in the vocabulary and the file size: no metadata array is walked and
    the data section is not hashed, unless ``sha256`` asks for the full hash
    (cached by path, size and mtime).
    """
    model = check_gguf_file(path)
    leading = read_leading_metadata(model, ("general.name", "general.architecture"))
    facts = {
        "path": str(model.resolve()),
        "size": model.stat().st_size,
        "fingerprint": fingerprint(path),
        "name": leading.get("general.name"),
        "architecture": leading.get("general.architecture"),
    }
    if sha256:
        facts["sha256"] = cached_sha256(model)
    return facts
