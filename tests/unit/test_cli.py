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


def _example(
    out: Path,
    size: int = 3,
    mode: Literal["a", "b"] = "a",
    verbose: bool = False,
    names: list[str] | None = None,
    overrides: list[str] | None = None,
) -> int:
    """Example command."""
    if size < 0:
        raise UserError(f"--size {size} must be >= 0")
    print(out, size, mode, verbose, names, overrides)
    return 0


def test_signature_becomes_flags():
    parser = argparse.ArgumentParser()
    cli.add_signature_arguments(parser, _example)
    ns = parser.parse_args(
        ["k=v", "--out", "x", "--size", "5", "--mode", "b", "--verbose", "--names", "p", "q"]
    )
    assert vars(ns) == {
        "out": Path("x"),
        "size": 5,
        "mode": "b",
        "verbose": True,
        "names": ["p", "q"],
        "overrides": ["k=v"],
    }
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


def test_every_option_of_every_command_is_documented_with_its_default():
    """--help of each subcommand: every option has a description (the function's `Args:` block) and shows
    its default (from the signature); a documented name that is no parameter is a stale doc."""
    import inspect

    undocumented, stale = [], []
    for words, target in cli.COMMANDS.items():
        fn = cli._resolve(target)
        _, docs = cli.parse_doc(fn)
        stale += [f"{' '.join(words)}: {n}" for n in set(docs) - set(inspect.signature(fn).parameters)]
        parser = argparse.ArgumentParser()
        cli.add_signature_arguments(parser, fn)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = (action.help or "").replace("%%", "%")
            described = text.split(" (default: ")[0].split(" (required)")[0].strip()
            if not described:
                undocumented.append(f"{' '.join(words)} {action.option_strings or action.dest}")
            if action.option_strings:
                assert "(default: " in text or "(required)" in text, (words, action.dest, text)
    assert not undocumented, undocumented
    assert not stale, stale


def test_help_shows_description_and_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--anchor-decay ANCHOR_DECAY Anchored AdamW decay toward the pretrained weights" in out
    assert "(default: 0.0)" in out and "--fit FIT fit.json written by dist-forget fit (required)" in out
    assert "Args:" not in out  # the block became per-option help


def test_google_args_block_is_parsed():
    def f(a: int, b: str = "x") -> int:
        """Do it.

        More text.

        Args:
            a: first one,
                continued
            b (str): second one
        """
        return a

    text, args = cli.parse_doc(f)
    assert text == "Do it.\n\nMore text." and args == {"a": "first one, continued", "b": "second one"}


def _listing(words: list[str]) -> str:
    """`dist-forget [GROUP] --help` as a user sees it (a fresh process: the listing imports no command)."""
    res = subprocess.run([sys.executable, "-m", "dist_forget.cli", *words, "--help"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return " ".join(res.stdout.split())


def test_every_command_and_group_is_listed_with_a_one_line_description():
    """Derived from COMMANDS: a new command (or group) without its SUMMARY line fails here."""
    groups = {words[:depth] for words in cli.COMMANDS for depth in range(1, len(words))}
    for words in [*cli.COMMANDS, *groups]:
        text = cli.SUMMARY.get(words, "")
        assert text.strip() and "\n" not in text, f"dist-forget {' '.join(words)}: no one-line SUMMARY"
    assert set(cli.SUMMARY) <= set(cli.COMMANDS) | groups, set(cli.SUMMARY) - set(cli.COMMANDS) - groups
    for parent in [(), *sorted(groups)]:
        out = _listing(list(parent))
        children = {
            w[len(parent)]
            for w in [*cli.COMMANDS, *groups]
            if w[: len(parent)] == parent and len(w) > len(parent)
        }
        for child in children:
            summary = " ".join(cli.SUMMARY[(*parent, child)].split())
            assert f"{child} {summary}" in out, (parent, child, out)
    top = _listing([])
    assert "typed function" not in top and "dispatches" not in top and " commands " not in top


def test_group_without_a_verb_says_what_is_missing():
    res = subprocess.run([sys.executable, "-m", "dist_forget.cli", "convert"], capture_output=True, text=True)
    assert res.returncode == 2 and "the following arguments are required: COMMAND" in res.stderr


def test_a_fraction_flag_takes_a_percent():
    def f(inject_fraction: float = 0.0, lr: float = 1e-3) -> int:
        """F.

        Args:
            inject_fraction: p
            lr: learning rate
        """
        return 0

    parser = argparse.ArgumentParser(exit_on_error=False)
    cli.add_signature_arguments(parser, f)
    assert parser.parse_args(["--inject-fraction", "1%"]).inject_fraction == pytest.approx(0.01)
    assert parser.parse_args(["--inject-fraction", "0.05"]).inject_fraction == 0.05
    with pytest.raises(argparse.ArgumentError, match="invalid fraction value: 'x%'"):
        parser.parse_args(["--inject-fraction", "x%"])
    with pytest.raises(argparse.ArgumentError, match="invalid float value: '1%'"):
        parser.parse_args(["--lr", "1%"])  # not a fraction: a percent means nothing there
