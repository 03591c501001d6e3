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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import llama_cpp

from inspector.constants import (
    MAX_TEMPLATE_MEMORY_BYTES,
    MAX_TEMPLATE_OUTPUT_CHARS,
    MAX_TEMPLATE_SECONDS,
    TEMPLATE_OUTPUT_FACTOR,
)
from inspector.errors import SetupError

if TYPE_CHECKING:
    from inspector.llamacpp.config import LlamaRunConfig
    from inspector.llamacpp.session import LlamaSession

# A template's ``a ** b`` may make a number of at most this many bits.
MAX_POWER_BITS = 4096


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


class _TemplateOverrun(SetupError):
    """A template went past a limit (size, time, memory); the message says which."""


def _bounded_environment(max_chars: int):
    """A sandbox whose ``*``, ``**`` and ``%`` are checked before they run.

    ``"a" * 9999999999`` would allocate 10 GB in one C call, and ``9 ** 9 ** 9``
    computes for minutes in one C call (no signal interrupts it): both are
    refused from their operands.  Jinja does not constant-fold an intercepted
    operator, so the check also covers constants.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(("*", "**", "%"))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for sequence, count in ((left, right), (right, left)):
                    if (isinstance(sequence, str | list | tuple) and isinstance(count, int)
                            and len(sequence) * count > max_chars):
                        raise _TemplateOverrun(f"the chat template repeats a {type(sequence).__name__} {count} "
                                               f"times, past the {max_chars} characters a prompt may have")
            if operator == "**" and isinstance(left, int) and isinstance(right, int | float):
                if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > MAX_POWER_BITS:
                    raise _TemplateOverrun(f"the chat template computes {left} ** {right}, a number too large")
            result = super().call_binop(context, operator, left, right)
            if operator == "%" and isinstance(result, str) and len(result) > max_chars:
                raise _TemplateOverrun(f"the chat template formats a string past {max_chars} characters")
            return result

    return BoundedSandbox(trim_blocks=True, lstrip_blocks=True)


@contextmanager
def _limits(seconds: float, memory_bytes: int) -> Iterator[None]:
    """Run a block with a time limit (SIGALRM, main thread only) and at most ``memory_bytes`` of new address space.

    The memory bound is RLIMIT_AS lowered for the block: any allocation past
    it (a filter such as ``center(10**10)``, ``str.format`` with a huge
    width) fails with MemoryError instead of exhausting the machine.
    """
    import resource
    import signal
    import threading

    def expire(_signum: int, _frame: object) -> None:
        raise _TemplateOverrun(f"the chat template did not render within {seconds:g} seconds")

    timed = threading.current_thread() is threading.main_thread()
    if timed:
        previous_handler = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/status") as status:
            used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        used = None
    bound = None if used is None else used + memory_bytes
    if bound is not None and (hard == resource.RLIM_INFINITY or bound < hard) and (
            soft == resource.RLIM_INFINITY or bound < soft):
        resource.setrlimit(resource.RLIMIT_AS, (bound, hard))
    else:
        bound = None
    try:
        yield
    finally:
        if bound is not None:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)


def render_template(template: str, variables: dict[str, Any], input_chars: int) -> str:
    """Render an untrusted chat template in a sandbox, within a size, time and memory limit.

    The text may be at most MAX_TEMPLATE_OUTPUT_CHARS characters, or
    TEMPLATE_OUTPUT_FACTOR times the template and messages' length if that
    is more: a chat template lays the messages out once, with some markup.
    Any overrun is one line.
    """
    from jinja2 import TemplateError
    from jinja2.sandbox import SecurityError

    max_chars = max(MAX_TEMPLATE_OUTPUT_CHARS, TEMPLATE_OUTPUT_FACTOR * (len(template) + input_chars))
    environment = _bounded_environment(max_chars)
    environment.globals.update(raise_exception=_raise_exception,
                               strftime_now=lambda spec: datetime.now().strftime(spec))
    pieces: list[str] = []
    try:
        with _limits(MAX_TEMPLATE_SECONDS, MAX_TEMPLATE_MEMORY_BYTES):
            length = 0
            for piece in environment.from_string(template).generate(**variables):
                length += len(piece)
                if length > max_chars:
                    raise _TemplateOverrun(f"the chat template's output passed {max_chars} characters")
                pieces.append(piece)
    except SecurityError as error:
        raise SetupError(f"the chat template tried something unsafe and was stopped: {error}") from None
    except TemplateError as error:
        raise SetupError(f"the chat template does not render: {error}") from None
    except MemoryError:
        pieces.clear()
        raise _TemplateOverrun(f"the chat template needed more than {MAX_TEMPLATE_MEMORY_BYTES // 1024**2} MiB "
                               "to render") from None
    except RecursionError:
        raise _TemplateOverrun("the chat template recurses without end") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as error:
        raise SetupError(f"the chat template does not render: {type(error).__name__}: {error}") from None
    return "".join(pieces)


def _jinja_format(template: str, messages: list[dict[str, str]], session: LlamaSession) -> str:
    """Render like llama.cpp's ``--jinja``: its variables, BOS/EOS stripped when the tokenizer adds them.

    The template comes from the model file or the command line, both
    untrusted: the sandbox refuses attribute access that leads out of the
    template (``__class__``), and :func:`render_template` bounds its size,
    time and memory.
    """
    bos, eos = session.special_text("bos"), session.special_text("eos")
    variables: dict[str, Any] = {"messages": messages, "bos_token": bos, "eos_token": eos,
                                 "add_generation_prompt": True}
    text = render_template(template, variables, sum(len(m["content"]) for m in messages))
    if bos and session.adds_bos and text.startswith(bos):
        text = text[len(bos):]
    if eos and session.adds_eos and text.endswith(eos):
        text = text[:-len(eos)]
    return text


def formatted_prompt(session: LlamaSession, config: LlamaRunConfig) -> str:
    """The text that is tokenized: the prompt, or the prompt formatted as a chat turn.

    Rendered once per run and handed to whatever tokenizes and records it: a
    template may read the clock (``strftime_now``), so a second rendering
    could differ from the text that was tokenized.
    """
    if not config.conversation:
        return config.prompt
    template = config.chat_template or _model_template(session)
    messages = _messages(config)
    return _jinja_format(template, messages, session) if config.jinja else _builtin_format(template, messages)


def prompt_token_ids(session: LlamaSession, config: LlamaRunConfig, text: str | None) -> list[int]:
    """The tokens of the run's input: ``--token-ids`` (each checked to be in the vocabulary), else ``text``'s.

    ``text`` is :func:`formatted_prompt`'s, rendered once by the caller.
    """
    if config.token_ids is not None:
        for token in config.token_ids:
            if not 0 <= token < session.n_vocab:
                raise SetupError(f"--token-ids: {token} is outside the vocabulary (0..{session.n_vocab - 1})")
        return list(config.token_ids)
    return session.tokenize(text or "")
