"""Where a command's output goes: never onto one of its inputs, and never half-written.

Why one module: every command with an output file had its own "exists; pass
--overwrite" check, and none asked whether the output *was* one of its
inputs, so ``capture -m M.gguf -o M.gguf --overwrite`` truncated the model it
was about to load. Here an output that is an input (the same file, reached
through the same path, a symlink or a hard link) is refused, ``--overwrite``
or not.

Files other than dumps are written under a temporary name beside the
destination and renamed over it once complete (:func:`atomic_output`): a
failure leaves nothing behind, and the file ``--overwrite`` would replace
stays whole until its replacement is. Dumps are the exception: an
interrupted capture must leave a valid dump, marked incomplete, at its final
path (:mod:`inspector.dump.writer`), so they get the input check only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from inspector.errors import InspectorError
from inspector.files.disk_space import describe_errno, disk_full_errno

PathLike = str | os.PathLike[str]
# The keys of a run's recorded configuration that name files the run reads.
INPUT_KEYS = ("model", "mmproj", "prompt_file", "image", "source")
INPUT_LIST_KEYS = ("images",)


def _resolved(path: PathLike) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether ``a`` and ``b`` are one file: the same device and inode, through symlinks and hard links.

    When either does not exist (an output not written yet), their resolved
    paths are compared instead.
    """
    try:
        first, second = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return _resolved(a) == _resolved(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def refuse_inputs(output: PathLike, inputs: Iterable[PathLike | None]) -> None:
    """Raise InspectorError if ``output`` is one of ``inputs`` (``None`` entries are skipped)."""
    for source in inputs:
        if source is not None and str(source) and same_file(output, source):
            raise InspectorError(f"{output} is the input {source}: an output never replaces an input of the "
                                 "command, even with --overwrite; choose another output")


def folder_files(folder: PathLike) -> list[Path]:
    """The entries directly inside ``folder`` (none if it is not a readable folder): inputs of a folder input."""
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries]
    except (OSError, ValueError):
        return []


def _argument_paths(argv: Iterable[Any]) -> list[str]:
    """Every argument of a program's command line that could name a file: ``X`` and the ``Y`` of ``--opt=Y``."""
    found = []
    for argument in argv:
        if isinstance(argument, str) and argument:
            found.append(argument)
            if argument.startswith("-") and "=" in argument:
                found.append(argument.partition("=")[2])
    return found


def recorded_inputs(config: Mapping[str, Any]) -> list[str]:
    """The files a run reads, from the configuration its dump records.

    A llama.cpp capture records its model, projector, prompt file and images;
    mllama its model and image; preprocess its image; import-raw its source;
    import its folder and the streams in it; exec the program's command line
    (whose files it cannot know otherwise) and the model given with -m.
    """
    found: list[str] = [str(config[key]) for key in INPUT_KEYS if isinstance(config.get(key), str | os.PathLike)]
    for key in INPUT_LIST_KEYS:
        values = config.get(key)
        if isinstance(values, list):
            found += [str(value) for value in values if isinstance(value, str | os.PathLike)]
    folder, streams = config.get("folder"), config.get("streams")
    if isinstance(folder, str) and isinstance(streams, list):
        found += [os.path.join(folder, name) for name in streams if isinstance(name, str)]
    if config.get("runner") == "exec" and isinstance(config.get("argv"), list):
        found += _argument_paths(config["argv"])
    return found


def check_output(path: PathLike, *, overwrite: bool, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Refuse an output that is an input, a folder, or an existing file without ``overwrite``; return it as a Path."""
    path = Path(path)
    refuse_inputs(path, inputs)
    if path.is_dir():
        raise InspectorError(f"{path} is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise InspectorError(f"{path} exists; pass --overwrite to replace it")
    return path


def _default_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (mkstemp makes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(temporary: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(temporary, path)
        return
    # Without --overwrite a file that appeared meanwhile is not replaced: link() does not replace.
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise InspectorError(f"{path} exists; pass --overwrite to replace it") from None
    except OSError:
        os.replace(temporary, path)  # a file system without hard links
        return
    temporary.unlink()


@contextlib.contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False,
                  inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Write to the yielded temporary path; it becomes ``path`` only if the block finishes.

    The temporary file sits beside ``path`` (so the rename is atomic) under a
    hidden name ending in ``path``'s own suffix (numpy and matplotlib choose
    the format from it). On any exception, Ctrl-C included, it is removed and
    ``path`` is left as it was. The output folder is created if missing.
    """
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=f".part{path.suffix}")
    except OSError as error:
        raise InspectorError(f"cannot write in {folder}: {error.strerror or error}") from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, _default_mode())
        _publish(temporary, path, overwrite)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        code = disk_full_errno(error)
        if code is None:
            raise
        # Named after the output, not the temporary name the user never gave.
        raise InspectorError(f"cannot write {path}: {describe_errno(code)}; nothing was written") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str, *, overwrite: bool = True, inputs: Iterable[PathLike | None] = ()) -> Path:
    """``path.write_text(text)``, atomically and never onto an input.

    A lone surrogate (JSON from a file may hold one) is written as ``\\udcNN``
    instead of failing the write.
    """
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as temporary:
        temporary.write_text(text, encoding="utf-8", errors="backslashreplace")
    return Path(path)


def discard_in_background(path: PathLike) -> threading.Thread | None:
    """Remove the regular file at ``path`` now and free its blocks on another thread, returned (join it before
    measuring free space); anything else stays.

    Why: a dump replaced with ``--overwrite`` is usually the previous run's, a
    few hundred MB written moments before, and truncating it cost 30-190 ms in
    the kernel (more while its pages are still being written back) on the
    path of the capture about to start.  The name is unlinked here, so the new
    dump is created at once; the one descriptor left, whose closing frees the
    blocks, is closed by a daemon thread (by the process's exit at the latest).
    A symbolic link is left for the writer to follow, as before.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.unlink(path)
    except OSError:
        os.close(descriptor)
        return None
    closing = threading.Thread(target=os.close, args=(descriptor,), name="discard-replaced-dump", daemon=True)
    closing.start()
    return closing
