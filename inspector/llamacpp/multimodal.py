"""A multimodal prompt through libmtmd: each image encoded by the projector, then decoded by the language model.

libmtmd (llama.cpp's ``tools/mtmd``) splits a prompt at its media markers
into text and image chunks, preprocesses each image and encodes it on its own
``ggml_backend_sched``, whose eval callback is ``mtmd_context_params.cb_eval``:
the same hook as the language model's, so one dump holds both.  The runner
drives the chunks itself rather than through ``mtmd_helper_eval_chunks`` so
that every graph computation is one evaluation with an exact boundary: an
``encode`` per image, a ``prompt`` per ubatch of text tokens or of image
embeddings, as ``llama-mtmd-cli`` would compute them.

Images are the user's files (untrusted): the size is bounded and Pillow reads
the header (format, dimensions) before llama.cpp's own decoder sees the bytes,
so ``inp_raw`` holds the pixels that ``llama-mtmd-cli`` would have decoded.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as mtmd

from inspector.dump.inputs import runner_inputs
from inspector.dump.inputs import unknown as unknown_inputs
from inspector.errors import SetupError
from inspector.files.images import check_pixels, pillow_pixel_limit
from inspector.files.inputs import check_regular_file, open_regular_file
from inspector.ggml.devices import device_by_name
from inspector.ggml.library import load
from inspector.ggml.log import LOG_THUNK
from inspector.gguf.header import read_header
from inspector.llamacpp.config import LlamaRunConfig

if TYPE_CHECKING:
    from inspector.capture.hook import TensorHook
    from inspector.llamacpp.session import LlamaSession

MAX_IMAGE_FILE_BYTES = 256 * 1024**2
# Vision encoders have tens of blocks; a count past this is a crafted header, not a model.
MAX_PROJECTOR_BLOCKS = 1024
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "PPM", "TGA")
TEXT_CHUNK, IMAGE_CHUNK = mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT, mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE

# (kind, info) -> the evaluation's index; called before each graph computation.
StartEvaluation = Callable[[str, dict[str, Any]], int]


def read_image(path: str) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and what Pillow says of its header, refused in one line if it is not an image we decode."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    try:
        size = check_regular_file(file, "an image file", SetupError).st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise SetupError(f"--image {path}: {size} bytes is more than the {MAX_IMAGE_FILE_BYTES} an image may be")
        with open_regular_file(file, "an image file", SetupError) as handle:
            data = handle.read(MAX_IMAGE_FILE_BYTES + 1)
            handle.seek(0)
            # Pillow's bomb bound off (it would warn, then fail, before ours): the check below decides.
            with pillow_pixel_limit(None), Image.open(handle) as image:
                image_format, (width, height) = image.format, image.size
    except UnidentifiedImageError:
        raise SetupError(f"--image {path}: not an image file") from None
    except OSError as error:
        raise SetupError(f"--image {path}: {error.strerror or error}") from None
    if image_format not in IMAGE_FORMATS:
        raise SetupError(f"--image {path}: {image_format} images are not decoded by llama.cpp "
                         f"(it reads {', '.join(IMAGE_FORMATS)})")
    check_pixels(f"--image {path}", width, height, SetupError)
    return data, {"path": str(file.resolve()), "format": image_format, "width": width, "height": height,
                  "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class MultimodalPrompt:
    """The prompt as decoded: text tokens, chunk layout, the position after it and its logits."""

    token_ids: list[int]
    chunks: list[dict[str, Any]]
    images: list[dict[str, Any]]
    n_past: int
    logits: np.ndarray
    evaluations: int = 0
    text: str = ""


@dataclass
class VisionProjector:
    """An ``mtmd_context`` on the session's model; ``close`` frees it (before the model)."""

    ctx: Any
    n_embd: int
    _keep: list[Any] = field(default_factory=list)

    @classmethod
    def load(cls, session: LlamaSession, config: LlamaRunConfig, hook: TensorHook | None) -> VisionProjector:
        """The projector ``config.mmproj`` on the session's model, its graphs hooked like the model's."""
        check_projector_tensors(config.mmproj)
        offload_devices = session.offload_devices
        params = mtmd.mtmd_context_params_default()
        params.print_timings = False
        params.warmup = False  # a warm-up encode would be one more graph in the dump, of a blank image
        params.n_threads = config.threads
        params.flash_attn_type = session.flash_attn_type
        # As llama.cpp does: the first device of -dev (here, of the run's offload devices), else any GPU.
        use_gpu = config.mmproj_offload and offload_devices != ["none"]
        params.use_gpu = use_gpu
        if use_gpu and offload_devices:
            params.device = device_by_name(load(), offload_devices[0])
        if hook is not None and hook.callback is not None:
            params.cb_eval = ctypes.cast(hook.callback, llama_cpp.ggml_backend_sched_eval_callback)
            params.cb_eval_user_data = None
        ctx = mtmd.mtmd_init_from_file(config.mmproj.encode(), session.model, params)
        if not ctx:
            raise SetupError(f"libmtmd could not load --mmproj {config.mmproj}: "
                             f"{session.log.last_error() or 'unknown error'}")
        projector = cls(ctx, llama_cpp.llama_model_n_embd(session.model))
        if not mtmd.mtmd_support_vision(ctx):
            projector.close()
            raise SetupError(f"--mmproj {config.mmproj} has no vision encoder")
        if mtmd.mtmd_decode_use_mrope(ctx):
            projector.close()
            raise SetupError(f"--mmproj {config.mmproj} needs M-RoPE positions (the Qwen-VL family), which capture "
                             "does not drive yet; run llama-mtmd-cli under `ggml-inspector exec` instead")
        return projector

    def close(self) -> None:
        if self.ctx:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None

    def tokenize(self, text: str, images: list[bytes]) -> Any:
        """libmtmd's chunks of ``text`` (one media marker per image) and the images' bitmaps."""
        # Counted here: the pinned libmtmd reports a count mismatch as a preprocessing error (2), not 1.
        marker = mtmd.mtmd_default_marker().decode()
        if text.count(marker) != len(images):
            raise SetupError(f"the prompt has {text.count(marker)} media markers ({marker}) for {len(images)} "
                             "--image files")
        bitmaps = []
        for data in images:
            buffer = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.ctx, buffer, len(data), False)
            if not bitmap:
                raise SetupError("llama.cpp could not decode an --image")
            bitmaps.append(bitmap)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            encoded = text.encode("utf-8")
            request = mtmd.mtmd_input_text(text=encoded, text_len=len(encoded), add_special=True, parse_special=True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(len(bitmaps), 1))(*bitmaps)
            status = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(request), array, len(bitmaps))
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        if status != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise SetupError("libmtmd could not preprocess an image" if status == 2
                             else f"libmtmd could not tokenize the prompt (mtmd_tokenize returned {status})")
        return chunks


@contextmanager
def open_projector(session: LlamaSession, config: LlamaRunConfig,
                   hook: TensorHook | None) -> Iterator[VisionProjector | None]:
    """The run's projector for a block (None without ``--mmproj``), freed at its end, before the model."""
    if not config.mmproj:
        yield None
        return
    # libmtmd logs through its own callback (the projector's loader, clip's graph): into the run's buffer.
    mtmd.mtmd_helper_log_set(LOG_THUNK, ctypes.c_void_p(0))
    projector = VisionProjector.load(session, config, hook)
    try:
        yield projector
    finally:
        projector.close()


def _text_tokens(chunk: Any) -> list[int]:
    count = ctypes.c_size_t(0)
    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
    return [int(tokens[i]) for i in range(count.value)]


def with_markers(text: str, n_images: int) -> str:
    """As llama-mtmd-cli: a prompt without a media marker gets one in front per image."""
    marker = mtmd.mtmd_default_marker().decode()
    return text if marker in text else marker * n_images + text


def check_projector_tensors(path: str) -> None:
    """Refuse a projector lacking a tensor that libmtmd's vision encoders use without checking.

    libmtmd loads the patch embedding and the attention projections as
    optional (different families use different ones) and then builds the
    graph on whichever it expects, so a file without them is a null pointer
    in ggml, not an error.  These are the tensors every ViT-style encoder
    reads: the patch embedding, and per block attn_q/k/v (or a fused attn_qkv).
    """
    header = read_header(path)
    missing = [] if "v.patch_embd.weight" in header.tensors else ["v.patch_embd.weight"]
    blocks = header.get("clip.vision.block_count")
    if blocks is None:
        raise SetupError(f"--mmproj {path} is not a vision projector (it has no clip.vision.block_count)")
    if not isinstance(blocks, int) or not 0 < blocks <= MAX_PROJECTOR_BLOCKS:
        raise SetupError(f"--mmproj {path} declares clip.vision.block_count {blocks!r}")
    for block in range(blocks):
        prefix = f"v.blk.{block}."
        if f"{prefix}attn_qkv.weight" not in header.tensors:
            missing += [f"{prefix}attn_{part}.weight" for part in "qkv"
                        if f"{prefix}attn_{part}.weight" not in header.tensors]
    if missing:
        raise SetupError(f"--mmproj {path} has no {missing[0]}" + (f" (and {len(missing) - 1} more tensors)"
                                                                   if len(missing) > 1 else "")
                         + ", which libmtmd's vision encoder needs")


def decode_multimodal_prompt(session: LlamaSession, projector: VisionProjector, text: str, image_paths: list[str],
                             start_evaluation: StartEvaluation, step: int, all_logits: bool) -> MultimodalPrompt:
    """Encode every image and decode the whole prompt, ``step`` tokens or embeddings per evaluation."""
    loaded = [read_image(path) for path in image_paths]
    text = with_markers(text, len(loaded))
    chunks = projector.tokenize(text, [data for data, _facts in loaded])
    try:
        n_chunks = mtmd.mtmd_input_chunks_size(chunks)
        kinds = [mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i)) for i in range(n_chunks)]
        if any(kind not in (TEXT_CHUNK, IMAGE_CHUNK) for kind in kinds):
            raise SetupError("the projector made audio chunks; capture drives images only")
        last_chunk = n_chunks - 1
        prompt = MultimodalPrompt(token_ids=[], chunks=[], images=[facts for _data, facts in loaded], n_past=0,
                                  logits=np.empty((0, session.n_vocab), dtype=np.float32), text=text)
        rows: list[np.ndarray] = []
        image_number = 0
        for index in range(n_chunks):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            wants_last_row = index == last_chunk
            if kinds[index] == TEXT_CHUNK:
                tokens = _text_tokens(chunk)
                prompt.token_ids += tokens
                prompt.chunks.append({"type": "text", "token_ids": tokens, "pos0": prompt.n_past})
                for start in range(0, len(tokens), step):
                    piece = tokens[start:start + step]
                    n_outputs = len(piece) if all_logits else int(wants_last_row and start + step >= len(tokens))
                    start_evaluation("prompt", {"token_ids": piece, "pos0": prompt.n_past, "n_tokens": len(piece),
                                                **runner_inputs(prompt.n_past, n_outputs, tokens=piece)})
                    rows.append(session.decode(piece, prompt.n_past, n_outputs))
                    prompt.n_past += len(piece)
                    prompt.evaluations += 1
                continue
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            n_pos = mtmd.mtmd_input_chunk_get_n_pos(chunk)
            facts = {"image": image_number, "n_tokens": n_tokens, "pos0": prompt.n_past, **unknown_inputs()}
            start_evaluation("encode", facts)
            if mtmd.mtmd_encode_chunk(projector.ctx, chunk) != 0:
                raise SetupError(f"libmtmd could not encode image {image_number}: {session.log.last_error()}")
            prompt.evaluations += 1
            embeddings = np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(projector.ctx),
                                               shape=(n_tokens, projector.n_embd)).copy()
            prompt.chunks.append({"type": "image", "image": image_number, "n_tokens": n_tokens, "n_pos": n_pos,
                                  "pos0": prompt.n_past})
            # Bidirectional image attention (Gemma 3) needs the image in one ubatch, as libmtmd's helper does.
            non_causal = bool(mtmd.mtmd_decode_use_non_causal(projector.ctx, chunk))
            piece_size = n_tokens if non_causal else step
            if non_causal:
                llama_cpp.llama_set_causal_attn(session.ctx, False)
            try:
                for start in range(0, n_tokens, piece_size):
                    piece = embeddings[start:start + piece_size]
                    n_outputs = len(piece) if all_logits else int(wants_last_row and start + piece_size >= n_tokens)
                    pos0 = prompt.n_past + start
                    start_evaluation("prompt", {"image": image_number, "pos0": pos0, "n_tokens": len(piece),
                                                **runner_inputs(pos0, n_outputs, embeddings=piece)})
                    rows.append(session.decode_embeddings(piece, pos0, n_outputs))
                    prompt.evaluations += 1
            finally:
                if non_causal:
                    llama_cpp.llama_set_causal_attn(session.ctx, True)
            prompt.n_past += n_pos
            image_number += 1
        prompt.logits = np.concatenate(rows) if rows else prompt.logits
        return prompt
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
