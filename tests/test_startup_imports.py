"""What a capture imports before it runs, and the tables kept so that it need not import more.

Why: a one-tensor capture's cost over the run it observes is mostly start-up
(docs/performance.md); gguf-py (with yaml and sentencepiece), importlib.metadata
and the other commands' modules cost ~150 ms of it, and nothing a capture of
plain f32/f16 tensors does needs them.  Each table that stands in for one of
them is checked here against the library it stands in for.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from importlib import metadata

import click
import gguf

import inspector.cli
from inspector.cli.app import COMMAND_MODULES, main
from inspector.constants import LLAMA_FTYPE_NAMES, PLAIN_GGML_TYPES
from inspector.ggml import types
from inspector.ggml.system import RECORDED_PACKAGES, package_versions

# What the command line imports for `capture`: the command's module and everything capture_llama runs with.
CAPTURE_IMPORTS = """
import sys
import click
from inspector.cli.app import main
main.get_command(click.Context(main), "capture")
import inspector.llamacpp.capture, inspector.llamacpp.facts, inspector.native.inprocess, inspector.dump.writer
from inspector.ggml.system import host_facts
host_facts()
print(" ".join(sorted(sys.modules)))
"""


def test_a_capture_imports_neither_gguf_nor_importlib_metadata_nor_other_commands():
    loaded = set(subprocess.run([sys.executable, "-c", CAPTURE_IMPORTS], capture_output=True, text=True,
                                check=True).stdout.split())
    assert "inspector.cli.running" in loaded and "inspector.llamacpp.capture" in loaded  # the probe ran
    unwanted = {"gguf", "yaml", "sentencepiece", "importlib.metadata", "inspector.cli.comparing",
                "inspector.cli.mllama", "inspector.cli.plotting", "inspector.cli.dumps"}
    assert not loaded & unwanted, sorted(loaded & unwanted)


def test_the_group_finds_every_command_in_the_module_that_defines_it():
    defined = {}
    for module_info in pkgutil.iter_modules(inspector.cli.__path__):
        module = importlib.import_module(f"inspector.cli.{module_info.name}")
        for command in getattr(module, "COMMANDS", ()):
            defined[command.name] = module_info.name
    assert defined == COMMAND_MODULES
    context = click.Context(main)
    assert [main.get_command(context, name).name for name in main.list_commands(context)] == sorted(defined)
    assert main.get_command(context, "no-such-command") is None


def test_type_sizes_are_gguf_pys():
    for member in gguf.GGMLQuantizationType:
        assert types.sizes(int(member)) == gguf.GGML_QUANT_SIZES[member], member.name
        assert types.type_number(member.name.lower()) == int(member)
        assert types.type_number(member.name) == int(member)
    assert types.sizes(10_000) is None
    assert {ggml_type for ggml_type, _name, _dtype in PLAIN_GGML_TYPES} <= {int(m) for m in gguf.GGMLQuantizationType}


def test_file_type_names_are_gguf_pys():
    for number, name in LLAMA_FTYPE_NAMES.items():
        assert gguf.LlamaFileType(number).name.removeprefix("MOSTLY_").removeprefix("ALL_") == name


def test_package_versions_are_importlib_metadatas():
    expected = {}
    for name in RECORDED_PACKAGES:
        try:
            expected[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            expected[name] = ""
    assert package_versions(RECORDED_PACKAGES) == expected
    assert package_versions(("no-such-package-here",)) == {"no-such-package-here": ""}
