"""llama.cpp's own programs, built from the pinned source against the libraries llama-cpp-python installed.

``llama-simple``, ``llama-completion`` and ``llama-mtmd-cli`` come from the
``vendor/llama.cpp`` tree of the llama-cpp-python sdist of the installed
version, fetched with ``pip download``.  A plain CMake build of them compiles
ggml and libllama again and takes about 8 minutes on 2 cores; here only the
programs and their ``common/`` library are compiled, and they link against
the installed ``libllama.so.0``, ``libggml.so.0``, ``libggml-base.so.0`` and
``libmtmd.so.0``.  That is cheaper, and the programs then run the very
kernels an in-process capture runs, so the two compare bit for bit.

What stays expensive is ``common/``: about 50 C++ files, each instantiating
the same parser and JSON templates again.  They are compiled as a few
"unity" translation units (one file including several sources), which does
that work once per unit; at -O0, since every numeric kernel lives in the
installed libraries and the programs' own code only parses options, builds
batches and calls the sampler.  The few sources that cannot share a unit
(their declarations collide) are compiled alone; a unit that fails is
compiled file by file instead, so a new pinned source still builds.

The result is cached under ``~/.cache/ggml-inspector/llama-programs/<key>``
(``XDG_CACHE_HOME`` respected), the key covering the llama-cpp-python
version, this recipe, the compiler and the installed libraries' bytes.  A
build is made in a temporary folder beside it and renamed into place, so a
cached folder is always complete.  ``python tests/llama_programs.py`` builds
(or finds) them and prints their folder and the time it took.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

PROGRAMS = ("llama-simple", "llama-completion", "llama-mtmd-cli")
LIBRARIES = Path(llama_cpp.__file__).parent / "lib"
SONAMES = ("libllama.so.0", "libggml.so.0", "libggml-base.so.0", "libmtmd.so.0")
RECIPE = "1"  # changes whenever what is built, or how, changes: older caches are then not reused
COMPILER = os.environ.get("CXX", "c++")
FLAGS = ("-std=c++17", "-O0", "-g0", "-w", "-pthread")
INCLUDES = ("common", "include", "ggml/include", "vendor", "tools/mtmd")
# The source subtrees the programs need: the rest of the 75 MB sdist is never unpacked.
NEEDED = ("common/", "include/", "ggml/include/", "vendor/", "tools/completion/", "tools/mtmd/",
          "examples/simple/", "src/llama-ext.h")
# Sources whose declarations collide with the others' in one translation unit (json.cpp defines its
# own ordered_json; jinja/value.cpp specializes a template the others instantiate).
ALONE = ("common/json.cpp", "common/jinja/value.cpp", "vendor/cpp-httplib/httplib.cpp")


class BuildError(RuntimeError):
    """The programs could not be built: what failed, and its output's tail."""


@dataclass(frozen=True)
class Unit:
    """One translation unit: an object file made from one or more sources (several: a unity unit)."""

    name: str
    sources: tuple[str, ...]


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ggml-inspector" / "llama-programs"


def cache_key() -> str:
    """What the programs depend on: source version, recipe, compiler, and the libraries they link (their bytes,
    and their folder, which the programs' rpath names)."""
    digest = hashlib.sha256()
    for part in (llama_cpp.__version__, RECIPE, compiler_version(), " ".join(FLAGS), str(LIBRARIES)):
        digest.update(part.encode() + b"\0")
    for soname in SONAMES:
        digest.update((LIBRARIES / soname).read_bytes())
    return f"{llama_cpp.__version__}-{digest.hexdigest()[:16]}"


def llama_programs() -> Path:
    """The folder holding the three programs, built now unless a complete cached build exists."""
    folder = cache_root() / cache_key()
    if all((folder / program).is_file() for program in PROGRAMS):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".building-") as work:
        built = Path(work) / "bin"
        build(fetch_source(Path(work)), built, Path(work) / "obj")
        try:
            built.rename(folder)
        except OSError:
            if not all((folder / program).is_file() for program in PROGRAMS):  # not a concurrent build's
                raise
    return folder


def fetch_source(work: Path, subtrees: tuple[str, ...] = NEEDED) -> Path:
    """The sdist's ``vendor/llama.cpp`` tree (only ``subtrees`` of it), unpacked under ``work``."""
    with tarfile.open(sdist()) as tar:
        members = [member for member in tar if needed(member.name, subtrees)]
        tar.extractall(work / "unpacked", members=members, filter="data")
    (top,) = (work / "unpacked").iterdir()
    return top / "vendor" / "llama.cpp"


def sdist() -> Path:
    """The installed version's llama-cpp-python sdist, downloaded once into the cache (renamed into place whole):
    the programs and the converter's tests unpack different parts of the same 75 MB archive."""
    archive = cache_root() / f"llama-cpp-python-{llama_cpp.__version__}.tar.gz"
    if archive.is_file():
        return archive
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".downloading-") as download:
        # pip's own socket timeout and retries: a stalled connection is retried, not waited on for minutes.
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
             "--timeout", "30", "--retries", "5", f"llama-cpp-python=={llama_cpp.__version__}", "-d", download],
            "pip download of the sdist")
        (downloaded,) = Path(download).glob("*.tar.gz")
        downloaded.rename(archive)
    return archive


def needed(name: str, subtrees: tuple[str, ...] = NEEDED) -> bool:
    parts = name.split("/", 1)
    inside = parts[1] if len(parts) == 2 else ""
    return inside.startswith("vendor/llama.cpp/") and inside.removeprefix("vendor/llama.cpp/").startswith(subtrees)


def units(source: Path, build_info: Path) -> list[Unit]:
    """common/ as two unity units plus the sources that must stay alone, and each program's own file."""
    common = sorted(str(path.relative_to(source)) for path in (source / "common").glob("*.cpp"))
    nested = sorted(str(path.relative_to(source)) for pattern in ("common/jinja/*.cpp", "common/parsers/*.cpp")
                    for path in source.glob(pattern))
    return [Unit("common-top", tuple(s for s in common if s not in ALONE)),
            Unit("common-nested", tuple(s for s in nested if s not in ALONE)),
            *(Unit(Path(alone).stem, (alone,)) for alone in ALONE),
            Unit("build-info", (str(build_info),)),
            Unit("simple", ("examples/simple/simple.cpp",)),
            Unit("completion", ("tools/completion/completion.cpp", "tools/completion/main.cpp")),
            Unit("mtmd-cli", ("tools/mtmd/mtmd-cli.cpp",))]


def build(source: Path, out: Path, objects: Path) -> None:
    """Compile the units on every core this process may use, then link the three programs into ``out``."""
    objects.mkdir(parents=True)
    jobs = max(1, len(os.sched_getaffinity(0)))
    todo = units(source, write_build_info(source, objects))
    with ThreadPoolExecutor(jobs) as pool:
        made = dict(zip((unit.name for unit in todo), pool.map(lambda u: compile_unit(source, objects, u), todo),
                        strict=True))
    common = [path for name in ("common-top", "common-nested", "json", "value", "httplib", "build-info")
              for path in made[name]]
    libraries = [f"-L{LIBRARIES}", f"-Wl,-rpath,{LIBRARIES}", *(f"-l:{soname}" for soname in SONAMES)]
    out.mkdir()
    link(out / "llama-simple", made["simple"], libraries)
    link(out / "llama-completion", made["completion"] + common, libraries)
    link(out / "llama-mtmd-cli", made["mtmd-cli"] + common, libraries)


def compile_unit(source: Path, objects: Path, unit: Unit) -> list[Path]:
    """The unit's object file; a unity unit that does not compile is compiled one source at a time."""
    target = objects / f"{unit.name}.o"
    if len(unit.sources) == 1:
        compile_file(source, source / unit.sources[0], target)
        return [target]
    unity = objects / f"{unit.name}.cpp"
    unity.write_text("".join(f'#include "{source / name}"\n' for name in unit.sources))
    try:
        compile_file(source, unity, target)
        return [target]
    except BuildError:
        return [path for index, name in enumerate(unit.sources)
                for path in compile_unit(source, objects, Unit(f"{unit.name}-{index}", (name,)))]


def compile_file(source: Path, file: Path, target: Path) -> None:
    run([COMPILER, *FLAGS, "-fPIC", *(f"-I{source / folder}" for folder in INCLUDES), "-c", str(file),
         "-o", str(target)], f"compiling {file.name}")


def link(program: Path, objects: list[Path], libraries: list[str]) -> None:
    run([COMPILER, "-pthread", *map(str, objects), "-o", str(program), *libraries], f"linking {program.name}")


def write_build_info(source: Path, objects: Path) -> Path:
    """build-info.cpp from common/'s template, as CMake's configure_file writes it (no git here)."""
    values = {"LLAMA_BUILD_NUMBER": "0", "LLAMA_BUILD_COMMIT": f"llama-cpp-python-{llama_cpp.__version__}",
              "BUILD_COMPILER": compiler_version().splitlines()[0].replace('"', "'"),
              "BUILD_TARGET": os.uname().machine}
    text = (source / "common" / "build-info.cpp.in").read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    written = objects / "build-info.cpp"
    written.write_text(text)
    return written


@functools.cache
def compiler_version() -> str:
    return run([COMPILER, "--version"], "asking the C++ compiler its version")


def run(command: list[str], what: str) -> str:
    """``command``'s standard output; a BuildError naming ``what`` and the command if it cannot run or fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    except OSError as error:
        raise BuildError(f"{what} failed: {error}") from error
    if result.returncode != 0:
        raise BuildError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n"
                         f"{(result.stdout + result.stderr)[:4000]}")
    return result.stdout


if __name__ == "__main__":
    started = time.monotonic()
    print(llama_programs(), f"{time.monotonic() - started:.1f} s")
