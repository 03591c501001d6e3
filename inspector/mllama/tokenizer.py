"""The prompt of ``mllama generate``: exact token ids, or text through the checkpoint's own tokenizer.

``mllama convert`` keeps a checkpoint's ``tokenizer.json`` in the GGUF
(``tokenizer.huggingface.json``); Hugging Face's ``tokenizers`` package
(installed with the ``reference`` extra) reads it, so ``-p`` text is
tokenized exactly as transformers would, special tokens such as
``<|image|>`` included.  Without either, ``--token-ids`` is the way in.
"""

from __future__ import annotations

from inspector.errors import InspectorError
from inspector.gguf import reader as gguf_info
from inspector.mllama import gguf_layout as L


def prompt_token_ids(model: str, prompt: str | None, token_ids: list[int] | None) -> list[int]:
    """The ids to decode: ``token_ids`` as given, or ``prompt`` encoded by the GGUF's tokenizer."""
    if bool(prompt) == (token_ids is not None):
        raise InspectorError("give the prompt with exactly one of -p/--prompt and --token-ids")
    if token_ids is not None:
        return list(token_ids)
    text = gguf_info.field_value(gguf_info.open_gguf(model), L.KEY_TOKENIZER_JSON)
    if text is None:
        raise InspectorError(f"{model} has no tokenizer (the checkpoint had no tokenizer.json): give --token-ids")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InspectorError("-p needs the tokenizers package (pip install 'ggml-inspector[reference]'); "
                             "or give --token-ids") from None
    try:
        return list(Tokenizer.from_str(text).encode(prompt, add_special_tokens=True).ids)
    except Exception as error:  # noqa: BLE001  (a malformed tokenizer.json from someone else's checkpoint)
        raise InspectorError(f"{model}'s tokenizer cannot encode the prompt: {error}") from None
