"""Every `dist-forget ...` command in README.md and the Makefile names a real subcommand with flags it accepts."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from dist_forget import cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _readme_commands() -> list[list[str]]:
    makefile = (ROOT / "Makefile").read_text().replace("$(BIN)/dist-forget", "\ndist-forget")
    makefile = makefile.replace("$(DATA)", "work/data")
    text = (README.read_text() + "\n" + makefile).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("dist-forget "):
            continue
        line = re.sub(r"\[[^\]]*\]", "", line.split("  #")[0])  # optional parts and comments
        commands.append(shlex.split(line)[1:])
    return commands


def test_readme_commands_parse():
    commands = _readme_commands()
    assert len(commands) >= 10
    for words in commands:
        key = next((k for k in cli.COMMANDS if tuple(words[: len(k)]) == k), None)
        assert key is not None, f"README shows an unknown command: dist-forget {' '.join(words)}"
        parser = argparse.ArgumentParser(exit_on_error=False)
        cli.add_signature_arguments(parser, cli._resolve(cli.COMMANDS[key]))
        parser.parse_args(words[len(key):])  # raises on an unknown flag or a badly typed value
