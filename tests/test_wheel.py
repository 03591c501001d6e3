"""A wheel of the package holds the native hook, and ``build-hook`` and ``exec`` work from a plain install of it.

The wheel is built from a copy of the checkout (a build writes ``build/`` and
``*.egg-info`` next to its sources) and installed with ``pip install
--target``, never ``-e``.  The commands then run with only that folder on
``PYTHONPATH``, from a folder outside the checkout, with an empty compile
cache: the hook they compile can only be the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_exec import compile_program, expected_own_graph

from inspector import open_dump

REPOSITORY = Path(__file__).resolve().parent.parent
HOOK_FILES = ("inspector/native/ggml_inspector_hook.c", "inspector/native/ggml_inspector.h")


def pip(*args: object, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it was installed into)."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source / name)
    shutil.copytree(REPOSITORY / "inspector", source / "inspector", ignore=shutil.ignore_patterns("__pycache__"))
    # No build isolation: setuptools is the one installed here, with no index to fetch another from.
    pip("wheel", ".", "--no-deps", "--no-build-isolation", "-w", base / "dist", cwd=source)
    [wheel] = (base / "dist").glob("ggml_inspector-*.whl")
    pip("install", "--no-deps", "--target", base / "target", wheel, cwd=base)
    return wheel, base / "target"


def run_installed(target: Path, cwd: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with only the installed copy of ggml-inspector importable (the editable one comes last)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GGML_INSPECTOR", "PYTHON"))}
    env.update(PYTHONPATH=str(target), XDG_CACHE_HOME=str(cwd / "cache"))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_the_wheel_holds_the_hook_source(installed):
    wheel, target = installed
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for name in HOOK_FILES:
            assert name in names, names
            assert archive.read(name) == (REPOSITORY / name).read_bytes()
    for name in HOOK_FILES:
        assert (target / name).read_bytes() == (REPOSITORY / name).read_bytes()


def test_the_installed_wheel_ships_the_reference_rules(installed, tmp_path):
    """compare --rules reference reads a data file: package-data must carry it into the wheel."""
    _wheel, target = installed
    name = "inspector/compare/rules/reference.toml"
    assert (target / name).read_bytes() == (REPOSITORY / name).read_bytes()
    loaded = run_installed(target, tmp_path, "-c", "from inspector.compare.rules import load_rules; "
                                                   "print(len(load_rules('reference').rules))")
    assert loaded.returncode == 0 and loaded.stdout.strip() == "3", loaded.stderr


def test_build_hook_and_exec_run_from_the_installed_wheel(installed, tmp_path):
    _, target = installed
    where = run_installed(target, tmp_path, "-c", "import inspector, inspector.native.build as b; "
                                                  "print(inspector.__file__); print(b.SOURCE)")
    assert where.returncode == 0, where.stderr
    package, source = map(Path, where.stdout.split())
    assert package.is_relative_to(target) and source == target / HOOK_FILES[0]

    built = run_installed(target, tmp_path, "-m", "inspector", "build-hook")
    assert built.returncode == 0, built.stderr
    library = Path(built.stdout.strip())
    assert library.is_relative_to(tmp_path / "cache") and library.is_file()

    program = compile_program("own_graph.c", tmp_path, "ggml", "ggml-base")
    out = tmp_path / "graph.h5"
    result = run_installed(target, tmp_path, "-m", "inspector", "exec", "-o", out, "--", program)
    assert result.returncode == 0, result.stderr
    values = expected_own_graph()
    with open_dump(out) as dump:
        assert dump.complete and dump.result["exit_status"] == 0
        assert sorted(dump.names()) == ["w", "x", "y", "z"]
        np.testing.assert_array_equal(dump.read("x"), values["x"])
        np.testing.assert_array_equal(dump.read("w"), values["w"])
        np.testing.assert_allclose(dump.read("z"), values["z"], rtol=1e-6, atol=1e-6)
