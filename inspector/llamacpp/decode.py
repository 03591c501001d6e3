"""The decode loop: the prompt in ubatches (text, or text and images), then greedy generation.

Every ``llama_decode`` is one graph evaluation; ``begin_evaluation`` is
called before each with its kind and facts, so a dump's evaluation
boundaries are llama.cpp's.  The prompt is rendered once (a chat template
may read the clock) and that one text is tokenized and recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp
import numpy as np

from inspector.capture.hook import TensorHook
from inspector.dump.inputs import runner_inputs
from inspector.errors import SetupError
from inspector.ggml.log import LogBuffer
from inspector.gguf.header import check_gguf_file
from inspector.llamacpp.config import LlamaRunConfig
from inspector.llamacpp.multimodal import decode_multimodal_prompt, open_projector
from inspector.llamacpp.prompt import formatted_prompt, prompt_token_ids
from inspector.llamacpp.session import LlamaSession

# Called before each llama_decode with the evaluation's kind and facts; returns its index.
BeginEvaluation = Callable[[str, dict[str, Any]], int]


@dataclass
class LlamaRunResult:
    """What the run produced; ``prompt_logits`` has a row per prompt token with ``all_logits``, else one."""

    token_ids: list[int]
    generated_ids: list[int]
    generated_text: str
    prompt_logits: np.ndarray
    evaluations: int
    seconds: float
    # The context size llama.cpp made (-c 0 becomes the model's training context).
    n_ctx: int = 0
    # The text a chat template made of the prompt (-cnv), which was then tokenized.
    formatted_prompt: str | None = None
    # With --mmproj: the prompt's text and image chunks, and the images read.
    chunks: list[dict[str, Any]] | None = None
    images: list[dict[str, Any]] | None = None


@dataclass
class _DecodedPrompt:
    """The prompt as decoded: its text tokens, the position after it, its logits and the evaluations it took."""

    token_ids: list[int]
    n_past: int
    logits: np.ndarray
    evaluations: int


def run(config: LlamaRunConfig, hook: TensorHook | None, begin_evaluation: BeginEvaluation,
        log: LogBuffer) -> LlamaRunResult:
    """Decode the prompt in ubatches, then generate ``n_predict`` tokens greedily.

    With ``hook=None`` no eval callback is installed: the baseline that
    benchmarks compare capture overhead against.
    """
    started = time.perf_counter()

    def start_evaluation(kind: str, info: dict[str, Any]) -> int:
        index = begin_evaluation(kind, info)
        if hook is not None:
            hook.begin_evaluation(index)
        return index

    if config.mmproj:
        check_gguf_file(config.mmproj)  # a FIFO would hang libmtmd's loader
    with LlamaSession(config, hook, log) as session, open_projector(session, config, hook) as projector:
        text = None if config.token_ids is not None else formatted_prompt(session, config)
        step = min(session.n_batch, session.n_ubatch)
        multimodal = None
        if projector is not None:
            multimodal = decode_multimodal_prompt(session, projector, text or "", config.images, start_evaluation,
                                                  step, config.all_logits)
            prompt = _DecodedPrompt(multimodal.token_ids, multimodal.n_past, multimodal.logits,
                                    multimodal.evaluations)
            _check_room(prompt.n_past, config, session.n_ctx)
        else:
            prompt = _decode_text(session, config, prompt_token_ids(session, config, text), start_evaluation, step)
        generated, evaluations = _generate(session, config, prompt, start_evaluation)
        return LlamaRunResult(
            token_ids=prompt.token_ids,
            generated_ids=generated,
            generated_text=session.detokenize(generated),
            prompt_logits=prompt.logits,
            evaluations=prompt.evaluations + evaluations,
            seconds=time.perf_counter() - started,
            n_ctx=session.n_ctx,
            formatted_prompt=multimodal.text if multimodal is not None else text if config.conversation else None,
            chunks=multimodal.chunks if multimodal is not None else None,
            images=multimodal.images if multimodal is not None else None,
        )


def _decode_text(session: LlamaSession, config: LlamaRunConfig, token_ids: list[int],
                 start_evaluation: BeginEvaluation, step: int) -> _DecodedPrompt:
    """Decode a text prompt ``step`` tokens per evaluation, after checking the context holds it."""
    if not token_ids:
        raise SetupError("the prompt is empty after tokenization")
    n_past = len(token_ids)
    if config.n_ctx and n_past > config.n_ctx:
        raise SetupError(f"the prompt is {n_past} tokens: -c/--ctx-size {config.n_ctx} cannot hold it "
                         f"(give -c {n_past} or more, or -c 0 for the model's training context)")
    _check_room(n_past, config, session.n_ctx)
    rows = []
    for start in range(0, n_past, step):
        chunk = token_ids[start:start + step]
        n_outputs = len(chunk) if config.all_logits else int(start + step >= n_past)
        start_evaluation("prompt", {"token_ids": chunk, "pos0": start, "n_tokens": len(chunk),
                                    **runner_inputs(start, n_outputs, tokens=chunk)})
        rows.append(session.decode(chunk, start, n_outputs))
    return _DecodedPrompt(token_ids, n_past, np.concatenate(rows), len(rows))


def _generate(session: LlamaSession, config: LlamaRunConfig, prompt: _DecodedPrompt,
              start_evaluation: BeginEvaluation) -> tuple[list[int], int]:
    """Greedy tokens after the prompt, and the evaluations they took.

    -n -1: until an end-of-generation token or a full context; -2: until a
    full context (llama.cpp's meanings).
    """
    generated: list[int] = []
    evaluations = 0
    last = prompt.logits[-1]
    limit = config.n_predict if config.n_predict >= 0 else session.n_ctx - prompt.n_past
    for step_index in range(limit):
        token = int(np.argmax(last))
        generated.append(token)
        end_of_generation = config.n_predict != -2 and llama_cpp.llama_vocab_is_eog(session.vocab, token)
        if end_of_generation or step_index == limit - 1:
            break
        pos = prompt.n_past + step_index
        start_evaluation("generate", {"token_ids": [token], "pos0": pos, "n_tokens": 1,
                                      **runner_inputs(pos, 1, tokens=[token])})
        last = session.decode([token], pos, 1)[-1]
        evaluations += 1
    return generated, evaluations


def _check_room(n_past: int, config: LlamaRunConfig, n_ctx: int) -> None:
    """Refuse a prompt that, with ``-n``, does not fit the context llama.cpp made."""
    room = n_ctx - n_past
    if room < 0 or (config.n_predict > 0 and config.n_predict > room):
        raise SetupError(f"the prompt ({n_past} positions) plus -n/--n-predict needs -c/--ctx-size "
                         f"{n_past + max(config.n_predict, 0)} or more (it is {n_ctx})")
