"""The CLI: flags come from typed signatures; UserError prints one line and exits 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from dist_forget import cli
from dist_forget.errors import UserError


def _example(out: Path, size: int = 3, mode: Literal["a", "b"] = "a", verbose: bool = False,
             names: list[str] | None = None, overrides: list[str] | None = None) -> int:
    """Example command."""
    if size < 0:
        raise UserError(f"--size {size} must be >= 0")
    print(out, size, mode, verbose, names, overrides)
    return 0


def test_signature_becomes_flags():
    parser = argparse.ArgumentParser()
    cli.add_signature_arguments(parser, _example)
    ns = parser.parse_args(["k=v", "--out", "x", "--size", "5", "--mode", "b", "--verbose", "--names", "p", "q"])
    assert vars(ns) == {"out": Path("x"), "size": 5, "mode": "b", "verbose": True, "names": ["p", "q"],
                        "overrides": ["k=v"]}
    with pytest.raises(SystemExit):
        parser.parse_args(["--size", "5"])  # --out is required


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, ("example",), f"{__name__}:_example")
    assert cli.main(["example", "--out", "o", "--size", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --size -1 must be >= 0\n"


def test_every_command_resolves_to_a_typed_function():
    """A subcommand that points at a missing module or function fails here, not in a user's hands."""
    for words, target in cli.COMMANDS.items():
        fn = cli._resolve(target)
        parser = argparse.ArgumentParser()
        cli.add_signature_arguments(parser, fn)
        assert fn.__doc__, f"{' '.join(words)}: its function needs a docstring (the --help text)"


def test_help_runs_without_importing_torch():
    code = "import sys; from dist_forget import cli; cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
