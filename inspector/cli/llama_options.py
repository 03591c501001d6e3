"""llama.cpp's command-line options, declared once for every command that runs a model.

People who use this tool live in ``llama-cli`` and ``llama-server``: each
option here keeps llama.cpp's spellings (``common/arg.cpp``), meaning and,
where a capture allows, default; older ggml-inspector spellings stay as
aliases.  The same table builds the click options, turns their values into a
:class:`~inspector.llamacpp.config.LlamaRunConfig` whose field names are
llama.cpp's, renders a recorded configuration back into the command line that
makes it (``ls --config``), and writes the option table of ``docs/cli.md``.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from inspector.constants import (
    DEFAULT_N_BATCH,
    DEFAULT_N_CTX,
    DEFAULT_N_UBATCH,
    DEFAULT_SEED,
    FLASH_ATTN_SPELLINGS,
    GGML_MAX_N_THREADS,
    KV_CACHE_TYPES,
    LLAMA_MAX_INT32,
    LOAD_MODES,
    MAX_THREADS_PER_CORE,
)
from inspector.errors import InspectorError
from inspector.files.inputs import open_regular_file
from inspector.ggml.system import max_threads

if TYPE_CHECKING:
    from inspector.llamacpp.config import LlamaRunConfig

# A prompt file is read whole; beyond this it is not a prompt.
MAX_PROMPT_FILE_BYTES = 64 * 1024 * 1024


class GpuLayers(click.ParamType):
    """``-ngl``: a count, ``auto`` or ``all``."""

    name = "N|auto|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value in ("auto", "all"):
            return value
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number, 'auto' or 'all'", param, ctx)
        if count < 0:
            return "all"  # llama.cpp: a negative count means every layer
        return count


class Threads(click.ParamType):
    """``-t``: a thread count; 0 or less means every core, as in llama.cpp."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            count = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if count > max_threads():
            self.fail(f"{count} threads is more than {max_threads()} ({MAX_THREADS_PER_CORE} per core of this "
                      f"machine's {os.cpu_count() or 1}, and ggml's pool holds at most {GGML_MAX_N_THREADS})",
                      param, ctx)
        return count if count > 0 else os.cpu_count() or 1


class FlashAttention(click.ParamType):
    """``-fa``: on, off or auto, in any spelling llama.cpp accepts (``enabled``, ``1``, ...)."""

    name = "on|off|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        for meaning, spellings in FLASH_ATTN_SPELLINGS.items():
            if str(value).lower() in spellings:
                return meaning
        self.fail(f"{value!r} is not on, off or auto", param, ctx)


class CommaList(click.ParamType):
    """A comma-separated list (``--rpc a:1,b:2``); repeating the option appends."""

    def __init__(self, metavar: str, item: Callable[[str], Any] = str) -> None:
        self.name = metavar
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[Any]:
        if isinstance(value, list):
            return value
        parts = [part.strip() for part in str(value).split(",")]
        if not all(parts):
            self.fail(f"{value!r} has an empty item", param, ctx)
        try:
            return [self.item(part) for part in parts]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.name}", param, ctx)


class Seed(click.ParamType):
    """``-s``: an unsigned 32-bit seed; -1 is llama.cpp's "random" (LLAMA_DEFAULT_SEED)."""

    name = "SEED"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            seed = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a number", param, ctx)
        if seed == -1:
            return DEFAULT_SEED
        if not 0 <= seed <= 0xFFFFFFFF:
            self.fail(f"{seed} is not an unsigned 32-bit number", param, ctx)
        return seed


@dataclass(frozen=True)
class LlamaOption:
    """One option: its LlamaRunConfig field, llama.cpp's spellings, older aliases and click settings."""

    field: str
    flags: tuple[str, ...]
    help: str
    aliases: tuple[str, ...] = ()
    type: Any = None
    default: Any = None
    # A boolean switch: ``flags`` turn it on, ``off_flags`` off.
    off_flags: tuple[str, ...] = ()
    is_flag: bool = False
    multiple: bool = False
    metavar: str | None = None
    # llama.cpp's default where it differs from ours, and why ours differs.
    llama_cpp_default: str | None = None
    # The option llama.cpp spells differently or lacks ("" when it has no such option).
    llama_cpp_flags: tuple[str, ...] | None = None

    @property
    def in_llama_cpp(self) -> tuple[str, ...]:
        """llama.cpp's spellings of this option (empty: llama.cpp has none)."""
        if self.llama_cpp_flags is not None:
            return self.llama_cpp_flags
        return (*self.flags, *self.off_flags)

    @property
    def unset(self) -> Any:
        """The value the option has when not given (left out of a rendered command line)."""
        if self.multiple:
            return []
        return False if self.is_flag and not self.off_flags else self.default


INPUT_OPTIONS = (
    LlamaOption("prompt", ("-p", "--prompt"), "Prompt text, tokenized with special tokens parsed (as llama-cli).",
                metavar="TEXT"),
    LlamaOption("prompt_file", ("-f", "--file"), "Read the prompt from FILE (one trailing newline dropped, as "
                "llama.cpp does).", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE"),
    LlamaOption("token_ids", ("--token-ids",), "Exact input tokens, e.g. 1,15043,29889: the tokenizer is not run "
                "(recorded in the dump).", type=CommaList("ID,ID,...", int), metavar="ID,ID,...",
                llama_cpp_flags=()),
    LlamaOption("conversation", ("-cnv", "--conversation"), "Format the prompt as one user turn with the chat "
                "template (llama-cli's conversation mode, one turn, not interactive).", is_flag=True,
                llama_cpp_default="auto: on when the model has a template; here off, so -p is fed as given"),
    LlamaOption("chat_template", ("--chat-template",), "A llama.cpp built-in template name (chatml, llama3, ...) "
                "or, with --jinja, a Jinja template text; implies -cnv. Default: the model's.", metavar="TEMPLATE"),
    LlamaOption("jinja", ("--jinja",), "Render the chat template with a (sandboxed) Jinja engine, as llama.cpp's "
                "--jinja; implies -cnv.", is_flag=True),
    LlamaOption("system_prompt", ("-sys", "--system-prompt"), "A system message before the prompt (with -cnv).",
                default="", metavar="TEXT"),
    LlamaOption("mmproj", ("-mm", "--mmproj"), "libmtmd's multimodal projector: its image encoder is captured too "
                "(evaluations of kind encode), as llama-mtmd-cli runs it.", type=click.Path(dir_okay=False),
                metavar="FILE"),
    LlamaOption("images", ("--image",), "Images for the prompt's media markers (<__media__>; without one, a "
                "marker per image goes in front, as llama-mtmd-cli does). Comma-separated; repeatable.",
                type=CommaList("FILE,..."), multiple=True, metavar="FILE,..."),
    LlamaOption("mmproj_offload", ("--mmproj-offload",), "Run the projector on the first offload device.",
                off_flags=("--no-mmproj-offload",), default=True, is_flag=True),
)

RUN_OPTIONS = (
    LlamaOption("n_predict", ("-n", "--predict", "--n-predict"), "Tokens to generate greedily after the prompt "
                "(-1: until end of generation, -2: until the context is full).",
                type=click.IntRange(min=-2, max=LLAMA_MAX_INT32),
                default=0, metavar="N", llama_cpp_default="-1; here 0, because the prompt's graphs are what a "
                "capture is usually for"),
    LlamaOption("n_ctx", ("-c", "--ctx-size"), "Context size (0: the model's training context).", aliases=("--ctx",),
                type=click.IntRange(min=0, max=LLAMA_MAX_INT32), default=DEFAULT_N_CTX, metavar="N"),
    LlamaOption("n_batch", ("-b", "--batch-size"), "Logical batch size.", aliases=("--batch",),
                type=click.IntRange(min=1, max=LLAMA_MAX_INT32), default=DEFAULT_N_BATCH, metavar="N"),
    LlamaOption("n_ubatch", ("-ub", "--ubatch-size"), "Physical batch size: tokens per graph evaluation.",
                aliases=("--ubatch",), type=click.IntRange(min=1, max=LLAMA_MAX_INT32), default=DEFAULT_N_UBATCH,
                metavar="N"),
    LlamaOption("n_gpu_layers", ("-ngl", "--gpu-layers", "--n-gpu-layers"), "Layers to offload: a number, 'auto' "
                "or 'all' (auto: every layer onto the offload devices).", type=GpuLayers(), default="auto",
                metavar="N|auto|all",
                llama_cpp_default="auto, which also shrinks offload to fit memory (common's fitting, not in "
                "libllama); here auto offloads every layer"),
    LlamaOption("threads", ("-t", "--threads"), "CPU threads for generation (0 or less: every core). "
                "Default: every core.", type=Threads(), metavar="N"),
    LlamaOption("threads_batch", ("-tb", "--threads-batch"), "CPU threads for prompt processing (default: -t).",
                type=Threads(), metavar="N"),
    LlamaOption("flash_attn", ("-fa", "--flash-attn"), "Flash attention.", type=FlashAttention(), default="auto"),
    LlamaOption("type_k", ("-ctk", "--cache-type-k"), "K cache type (a quantized cache is captured dequantized).",
                type=click.Choice(KV_CACHE_TYPES), default="f16"),
    LlamaOption("type_v", ("-ctv", "--cache-type-v"), "V cache type.", type=click.Choice(KV_CACHE_TYPES),
                default="f16"),
    LlamaOption("rpc", ("--rpc",), "ggml RPC servers whose devices to offload to (comma-separated; repeatable).",
                type=CommaList("HOST:PORT,..."), multiple=True, metavar="HOST:PORT,..."),
    LlamaOption("devices", ("-dev", "--device"), "Offload only to these ggml devices (comma-separated; 'none': "
                "no offload).", type=CommaList("DEV,..."), metavar="DEV,..."),
    LlamaOption("override_tensor", ("-ot", "--override-tensor"), "Put tensors whose name matches the regex in "
                "this buffer type (comma-separated; repeatable).", type=CommaList("PATTERN=BUFT,..."),
                multiple=True, metavar="PATTERN=BUFT,..."),
    LlamaOption("load_mode", ("-lm", "--load-mode"), "How to load the model: auto (mmap unless a device cannot; "
                "CPU weights then live in a CPU_Mapped buffer), none (read into memory), mmap, mlock, mmap+mlock, "
                "dio.", type=click.Choice(tuple(LOAD_MODES)), default="auto"),
    LlamaOption("no_mmap", ("--no-mmap",), "The same as -lm none (older llama.cpp's spelling).", is_flag=True,
                llama_cpp_flags=("--no-mmap (before -lm)",)),
    LlamaOption("seed", ("-s", "--seed"), "RNG seed, recorded (generation is greedy; -1: random).", type=Seed(),
                default=DEFAULT_SEED),
    LlamaOption("op_offload", ("--op-offload",), "Let llama.cpp run large-batch ops of CPU-resident weights on an "
                "offload device.", off_flags=("--no-op-offload",), default=True, is_flag=True),
    LlamaOption("all_logits", ("--all-logits",), "Logits (result_output) for every prompt token, not only the "
                "last.", is_flag=True, llama_cpp_flags=()),
    LlamaOption("sha256", ("--sha256",), "Record the model's full sha256 (cached per path, size and mtime) besides "
                "its fingerprint.", is_flag=True, llama_cpp_flags=()),
)

LLAMA_OPTIONS = INPUT_OPTIONS + RUN_OPTIONS
OPTIONS_BY_FIELD = {option.field: option for option in LLAMA_OPTIONS}
MODEL_FLAGS = ("-m", "--model")


def _joined(_ctx: click.Context, _param: click.Parameter, groups: tuple[list[Any], ...]) -> list[Any]:
    """A repeated comma-list option as one list: ``--rpc a,b --rpc c`` is [a, b, c]."""
    return [item for group in groups for item in group]


def _click_option(option: LlamaOption, extra_aliases: tuple[str, ...] = ()
                  ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    names = [*option.flags, *option.aliases, *extra_aliases]
    settings: dict[str, Any] = {"help": option.help}
    if option.off_flags:
        # click spells a switch "--on/--off": one declaration per pair.
        names = [f"{on}/{off}" for on, off in zip(option.flags, option.off_flags, strict=True)]
        settings.update(default=option.default, show_default=True)
    elif option.is_flag:
        settings.update(is_flag=True, default=False)
    else:
        settings.update(type=option.type, multiple=option.multiple, metavar=option.metavar,
                        default=option.default if not option.multiple else (),
                        show_default=option.default not in (None, ""),
                        callback=_joined if option.multiple else None)
    return click.option(*names, option.field, **settings)


def read_prompt_file(path: Path) -> str:
    """A prompt file's text: a regular file, UTF-8, bounded; one trailing newline dropped (as llama.cpp does)."""
    try:
        with open_regular_file(path, "a prompt file") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_PROMPT_FILE_BYTES:
                raise InspectorError(f"-f {path}: {size} bytes is too large for a prompt file")
            text = handle.read(MAX_PROMPT_FILE_BYTES + 1).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InspectorError(f"-f {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    return text[:-1] if text.endswith("\n") else text


def model_path(model_argument: Path | None, model_option: Path | None) -> Path:
    """The model from ``-m`` or the positional MODEL (one of them, or both the same)."""
    if model_argument and model_option and model_argument != model_option:
        raise InspectorError(f"two models given: {model_argument} and -m {model_option}")
    model = model_option or model_argument
    if model is None:
        raise InspectorError("give the model with -m/--model FILE (or as the first argument)")
    return model


def config_from_values(values: dict[str, Any], model_argument: Path | None, model_option: Path | None
                       ) -> LlamaRunConfig:
    """A LlamaRunConfig from parsed option values (every one named by its config field)."""
    from inspector.llamacpp.config import LlamaRunConfig

    model = model_path(model_argument, model_option)
    settings = {field: value for field, value in values.items() if value is not None}
    if settings.get("prompt_file") is not None:
        if settings.get("prompt"):
            raise InspectorError("give the prompt with one of -p/--prompt and -f/--file")
        path = settings["prompt_file"]
        settings["prompt"] = read_prompt_file(path)
        settings["prompt_file"] = str(path)
    if settings.pop("no_mmap", False):
        if settings.get("load_mode", "auto") not in ("auto", "none"):
            raise InspectorError(f"--no-mmap contradicts -lm {settings['load_mode']}")
        settings["load_mode"] = "none"
    if settings.get("chat_template") or settings.get("jinja"):
        settings["conversation"] = True
    settings.setdefault("threads", os.cpu_count() or 1)
    config = LlamaRunConfig(model=str(model), **settings)
    config.validate()
    return config


def llama_cpp_options(*, exclude: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
                      aliases: dict[str, tuple[str, ...]] | None = None,
                      ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add MODEL / ``-m`` and the llama.cpp options (``only`` these, but not ``exclude``) to a command.

    ``aliases`` adds a command's own older spellings (``--offload-layers``).
    The command receives ``run_config``, a validated LlamaRunConfig, instead
    of the options' values; with ``only``, it receives the model path and
    the chosen values in a dict ``llama_values`` instead (for runners of our
    own graphs, which take a subset).
    """
    chosen = [option for option in LLAMA_OPTIONS
              if option.field not in exclude and (only is None or option.field in only)]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            model_argument = values.pop("model_argument")
            model_option = values.pop("model_option")
            llama_values = {option.field: values.pop(option.field) for option in chosen}
            if only is not None:
                values["llama_values"] = {"model": model_path(model_argument, model_option), **llama_values}
            else:
                values["run_config"] = config_from_values(llama_values, model_argument, model_option)
            return command(**values)

        for option in reversed(chosen):
            wrapper = _click_option(option, (aliases or {}).get(option.field, ()))(wrapper)
        wrapper = click.option(*MODEL_FLAGS, "model_option", type=click.Path(dir_okay=False, path_type=Path),
                               metavar="FILE", help="The GGUF model (or give it as the first argument).")(wrapper)
        return click.argument("model_argument", metavar="[MODEL]", required=False,
                              type=click.Path(dir_okay=False, path_type=Path))(wrapper)

    return decorate


def _rendered(option: LlamaOption, value: Any) -> list[str]:
    flag = option.flags[0]
    if option.off_flags:
        return [flag if value else option.off_flags[0]]
    if option.is_flag:
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, ",".join(str(item) for item in value)]
    return [flag, str(value)]


def command_line(config: dict[str, Any], command: str = "capture") -> str:
    """The ggml-inspector command line that reproduces a recorded run configuration.

    Options at their default are left out; the prompt comes from its file
    when it was read from one.  Tensor selection and storage are added when
    recorded.
    """
    from inspector.capture.selection import SelectionDescription

    words = ["ggml-inspector", command, "-m", str(config.get("model", "MODEL"))]
    for option in LLAMA_OPTIONS:
        value = config.get(option.field)
        if value is None:
            continue
        if option.field == "prompt" and (config.get("prompt_file") or config.get("token_ids") is not None):
            continue
        if option.field == "conversation" and (config.get("chat_template") or config.get("jinja")):
            continue
        # Threads are always written: their default is the recording machine's core count.
        if option.field != "threads" and value == option.unset:
            continue
        words += _rendered(option, value)
    selection = SelectionDescription.from_config(config)
    for glob in selection.globs:
        words += ["--tensor", glob]
    for regex in selection.regexes:
        words += ["--tensor-filter", regex]
    storage = config.get("storage", {})
    if storage.get("stats_only"):
        words.append("--stats-only")
    compression = storage.get("compression", {})
    if compression.get("name", "none") != "none":
        level = compression.get("level")
        words += ["--compression", compression["name"] + (f":{level}" if level is not None else "")]
    return shlex.join(words)


def option_table() -> list[list[str]]:
    """Rows "llama.cpp option | ggml-inspector option | default here | note" for docs/cli.md."""
    rows = [[", ".join(f"`{f}`" for f in MODEL_FLAGS), ", ".join(f"`{f}`" for f in MODEL_FLAGS) + ", or `MODEL`",
             "", ""]]
    for option in LLAMA_OPTIONS:
        ours = [*option.flags, *option.off_flags]
        llama = option.in_llama_cpp
        if option.off_flags:
            default = option.flags[0] if option.default else option.off_flags[0]
        elif option.is_flag or option.default is None or option.default == "":
            default = "every core" if option.field == "threads" else ""
        else:
            default = str(option.default)
        aliases = f" (also {', '.join(f'`{a}`' for a in option.aliases)})" if option.aliases else ""
        rows.append([", ".join(f"`{f}`" for f in llama) or "(none)", ", ".join(f"`{f}`" for f in ours) + aliases,
                     default, f"llama.cpp: {option.llama_cpp_default}" if option.llama_cpp_default else ""])
    return rows
