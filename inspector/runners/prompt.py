"""What a run feeds the model: given token ids, or text tokenized as llama.cpp tokenizes it.

A bug report's exact input must be reproducible, so the three ways in are
exact: ``--token-ids`` bypasses the tokenizer; ``-p``/``-f`` text is
tokenized with special tokens parsed (``<|eot_id|>`` is one token, as in
llama-cli); ``-cnv`` first formats the text as one user turn with a chat
template, by llama.cpp's built-in template matcher or, with ``--jinja``, by a
sandboxed Jinja engine given what llama.cpp's gives a template.
"""

from __future__ import annotations

import ctypes
from datetime import datetime
from typing import TYPE_CHECKING, Any

import llama_cpp

from inspector.errors import SetupError

if TYPE_CHECKING:
    from inspector.runners.llama import LlamaRunConfig, LlamaSession


def _messages(config: LlamaRunConfig) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    return [*messages, {"role": "user", "content": config.prompt}]


def _model_template(session: LlamaSession) -> str:
    template = llama_cpp.llama_model_chat_template(session.model, None)
    if not template:
        raise SetupError("the model has no chat template (tokenizer.chat_template); give one with "
                             "--chat-template NAME_OR_TEXT")
    return template.decode("utf-8", errors="replace")


def _builtin_format(template: str, messages: list[dict[str, str]]) -> str:
    """llama.cpp's own formatter: it recognises a template by name (``chatml``) or by its text."""
    encoded = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(encoded))(*encoded)
    capacity = 2 * sum(len(role) + len(content) for role, content in encoded) + 256
    for _attempt in range(2):
        buffer = ctypes.create_string_buffer(capacity)
        length = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(encoded), True, buffer, capacity)
        if length < 0:
            raise SetupError("llama.cpp's built-in formatter does not know this chat template; pass --jinja "
                                 "to render it with a Jinja engine")
        if length <= capacity:
            return buffer.raw[:length].decode("utf-8", errors="replace")
        capacity = length
    raise SetupError("the chat template's output kept growing")


def _raise_exception(message: str) -> None:
    raise SetupError(f"the chat template refused the conversation: {message}")


def _jinja_format(template: str, messages: list[dict[str, str]], session: LlamaSession) -> str:
    """Render like llama.cpp's ``--jinja``: its variables, BOS/EOS stripped when the tokenizer adds them.

    The template comes from the model file, which is untrusted: the sandbox
    refuses attribute access that leads out of the template (``__class__``).
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

    bos, eos = session.special_text("bos"), session.special_text("eos")
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals.update(raise_exception=_raise_exception,
                               strftime_now=lambda spec: datetime.now().strftime(spec))
    variables: dict[str, Any] = {"messages": messages, "bos_token": bos, "eos_token": eos,
                                 "add_generation_prompt": True}
    try:
        text = environment.from_string(template).render(**variables)
    except SecurityError as error:
        raise SetupError(f"the chat template tried something unsafe and was stopped: {error}") from None
    except TemplateError as error:
        raise SetupError(f"the chat template does not render: {error}") from None
    if bos and session.adds_bos and text.startswith(bos):
        text = text[len(bos):]
    if eos and session.adds_eos and text.endswith(eos):
        text = text[:-len(eos)]
    return text


def formatted_prompt(session: LlamaSession, config: LlamaRunConfig) -> str:
    """The text that is tokenized: the prompt, or the prompt formatted as a chat turn."""
    if not config.conversation:
        return config.prompt
    template = config.chat_template or _model_template(session)
    messages = _messages(config)
    return _jinja_format(template, messages, session) if config.jinja else _builtin_format(template, messages)


def prompt_token_ids(session: LlamaSession, config: LlamaRunConfig) -> list[int]:
    """The tokens of the run's input, each checked to be in the vocabulary."""
    if config.token_ids is not None:
        for token in config.token_ids:
            if not 0 <= token < session.n_vocab:
                raise SetupError(f"--token-ids: {token} is outside the vocabulary (0..{session.n_vocab - 1})")
        return list(config.token_ids)
    return session.tokenize(formatted_prompt(session, config))
