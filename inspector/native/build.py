"""The native hook (``inspector/native/ggml_inspector_hook.c``): where it is, building it, and its regex dialect.

The library is compiled by the system C compiler against the ggml headers
that llama-cpp-python installs (``site-packages/include``), so it always
matches the pinned ggml's ``struct ggml_tensor``.  It links no ggml library:
it looks every function up in the program it is preloaded into.  The build
is cached per source and header content, so ``exec`` compiles it once.

Finding the cached library is the first thing ``capture`` does, before it
starts itself again with the hook preloaded: what this module imports at its
top is paid twice per run, so the compiler's (subprocess, shutil) and the
regex check's (ctypes) are imported where they are used.
"""

from __future__ import annotations

import hashlib
import os
import site
from collections.abc import Iterable
from pathlib import Path

from inspector.errors import InspectorError

SOURCE = Path(__file__).resolve().parent / "ggml_inspector_hook.c"
# Compiled into the same library: the dump writer's statistics (inspector/native/tensor_stats.py).
STATS_SOURCE = SOURCE.with_name("tensor_stats.c")
# The calls a program makes to the hook compiled into it; the hook includes it too.
INTERFACE = SOURCE.with_name("ggml_inspector.h")
HEADERS = ("ggml.h", "ggml-backend.h")
COMPILE_FLAGS = ("-std=c11", "-O2", "-Wall", "-Wextra", "-fPIC", "-shared")
# regcomp's flags as the hook passes them.  Only REG_EXTENDED (1 in every C library) decides whether a
# pattern compiles; REG_NOSUB (8 in glibc and musl) only drops the match positions.
REG_EXTENDED, REG_NOSUB = 1, 8
# glibc's regex_t is 64 bytes, musl's and the BSDs' smaller: room enough for any of them.
REGEX_T_BYTES = 1024
# Perl's classes that POSIX ERE does not have: glibc reads "\d" as a plain "d" and matches no digit.
PERL_ONLY_ESCAPES = {"d": "[0-9]", "D": "[^0-9]"}


def include_directory() -> Path:
    """The folder holding the pinned ggml's public headers (``ggml.h``, ``ggml-backend.h``)."""
    for folder in site.getsitepackages() + [site.getusersitepackages()]:
        candidate = Path(folder) / "include"
        if (candidate / "ggml.h").is_file():
            return candidate
    raise InspectorError("the ggml headers of llama-cpp-python are not installed (no site-packages/include/ggml.h)")


def cache_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ggml-inspector"


def _fingerprint(include: Path) -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + INTERFACE.read_bytes() + STATS_SOURCE.read_bytes())
    for header in HEADERS:
        digest.update((include / header).read_bytes())
    return digest.hexdigest()[:16]


def library_path(build: bool = True) -> Path:
    """The compiled hook for this source and these headers, compiled now if it is not yet."""
    if not all(path.is_file() for path in (SOURCE, INTERFACE, STATS_SOURCE)):
        raise InspectorError(f"the hook's source {SOURCE}, {INTERFACE.name} or {STATS_SOURCE.name} is missing "
                             "(install ggml-inspector from its repository)")
    include = include_directory()
    target = cache_directory() / f"libggml_inspector_hook-{_fingerprint(include)}.so"
    if target.is_file() or not build:
        return target
    _compile(include, target)
    return target


def _compile(include: Path, target: Path) -> None:
    import shutil
    import subprocess

    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise InspectorError("no C compiler (cc or gcc) to build the native hook; install one or set CC")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    command = [compiler, *COMPILE_FLAGS, f"-I{include}", str(SOURCE), str(STATS_SOURCE), "-o", str(partial),
               "-ldl", "-lpthread", "-lm"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = next((line for line in result.stderr.splitlines() if "error" in line), result.stderr.strip())
        raise InspectorError(f"building the native hook failed: {first}")
    partial.replace(target)  # atomic: a concurrent build never sees half a library


def check_extended_regexes(patterns: Iterable[str]) -> None:
    """Refuse, in one line, a pattern the hook's ``regcomp(REG_EXTENDED | REG_NOSUB)`` would refuse.

    Checked with the same C library call before the program runs: the hook
    itself can only tell the parent and stop capturing.  Python's ``re`` is
    no judge here: it accepts ``(?:x)`` and ``\\d``, which ERE does not have.
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))  # None: the process's own symbols, libc among them
    libc.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    libc.regerror.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    libc.regerror.restype = ctypes.c_size_t
    libc.regfree.argtypes = [ctypes.c_void_p]
    libc.regfree.restype = None
    for pattern in patterns:
        escape = _perl_only_escape(pattern)
        if escape:
            raise InspectorError(f"invalid POSIX extended regular expression {pattern!r}: \\{escape} is Perl's, "
                                 f"not POSIX's (write {PERL_ONLY_ESCAPES[escape]})")
        compiled = ctypes.create_string_buffer(REGEX_T_BYTES)
        error = libc.regcomp(compiled, pattern.encode("utf-8", "surrogateescape"), REG_EXTENDED | REG_NOSUB)
        if error == 0:
            libc.regfree(compiled)
            continue
        message = ctypes.create_string_buffer(256)
        libc.regerror(error, compiled, message, len(message))
        raise InspectorError(f"invalid POSIX extended regular expression {pattern!r}: "
                             f"{message.value.decode(errors='replace')}")


def _perl_only_escape(pattern: str) -> str:
    """The letter of the first ``\\d`` or ``\\D`` in the pattern (escaped backslashes skipped), or ""."""
    index = 0
    while index < len(pattern) - 1:
        if pattern[index] == "\\":
            if pattern[index + 1] in PERL_ONLY_ESCAPES:
                return pattern[index + 1]
            index += 1
        index += 1
    return ""
