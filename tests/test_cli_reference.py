"""docs/cli.md is generated from the commands: it fails here the moment it drifts from them."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.cli.app import main
from inspector.cli.llama_options import LLAMA_OPTIONS
from inspector.cli.reference_doc import render

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_md_is_what_the_commands_say():
    assert DOC.read_text() == render(), "docs/cli.md is stale: python -m inspector.cli.reference_doc > docs/cli.md"


def test_every_model_command_accepts_every_llama_cpp_spelling():
    """capture takes each option under llama.cpp's names; sweep too, but -ngl, which takes a list there."""
    for name, skip in (("capture", ()), ("sweep", ("n_gpu_layers",))):
        command = main.get_command(click.Context(main), name)
        accepted = {flag for param in command.params if isinstance(param, click.Option)
                    for flag in (*param.opts, *param.secondary_opts)}
        for option in LLAMA_OPTIONS:
            if option.field in skip:
                continue
            expected = {flag for flag in option.in_llama_cpp if not flag.endswith(")")}
            assert expected <= accepted, (name, option.field, expected - accepted)
        assert {"-m", "--model", "-T", "--tensor", "--tensor-filter"} <= accepted
