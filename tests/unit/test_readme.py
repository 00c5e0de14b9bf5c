"""Every `dist-forget ...` command in README.md and the Makefile, and every launcher example in README.md and
the launchers' comments, names a real subcommand with flags it accepts (running them: tests/integration/
test_readme_runs.py)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from dist_forget import cli
from dist_forget.config import load_config, read_yaml
from dist_forget.config_commands import SWEEP_KEYS, _config_class

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
        if words in (["--help"], ["-h"]):  # the top-level listing
            continue
        key = next((k for k in cli.COMMANDS if tuple(words[: len(k)]) == k), None)
        assert key is not None, f"README shows an unknown command: dist-forget {' '.join(words)}"
        parser = argparse.ArgumentParser(exit_on_error=False)
        cli.add_signature_arguments(parser, cli._resolve(cli.COMMANDS[key]))
        ns = parser.parse_args(words[len(key) :])  # raises on an unknown flag or a badly typed value
        config = getattr(ns, "config", None)
        if config is not None and str(config).startswith("configs/"):  # its config and overrides load
            kind = "sweep" if SWEEP_KEYS & set(read_yaml(ROOT / config)) else "run"
            load_config(_config_class(kind), ROOT / config, getattr(ns, "overrides", None))


LAUNCHED = re.compile(r"(?:^|\s)launchers/(?:deepspeed\.sh|torchrun\.sh|slurm\.sbatch)\s+(.*)$")


def _launcher_lines() -> list[tuple[str, str]]:
    """(where, what follows the launcher) for every launcher example: README.md's shell blocks and the
    comments of the launchers themselves (the words after a launcher are a dist-forget command line)."""
    found = []
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    sources = [
        ("README.md", [ln for b in blocks for ln in b.splitlines() if not ln.lstrip().startswith("#")])
    ]
    for script in ("deepspeed.sh", "torchrun.sh", "slurm.sbatch"):
        lines = (ROOT / "launchers" / script).read_text().splitlines()
        sources.append((f"launchers/{script}", [ln.lstrip("#") for ln in lines if ln.startswith("#")]))
    for where, lines in sources:
        for line in lines:
            match = LAUNCHED.search(line.split("  #")[0].strip())
            if match:
                found.append((where, match.group(1)))
    return found


@pytest.mark.parametrize(
    ("where", "args"), _launcher_lines(), ids=[f"{w}-{i}" for i, (w, _) in enumerate(_launcher_lines())]
)
def test_launcher_examples_are_valid_command_lines(where: str, args: str):
    words = shlex.split(args)
    key = next((k for k in cli.COMMANDS if tuple(words[: len(k)]) == k), None)
    assert key is not None, f"{where}: a launcher runs an unknown command: {args}"
    parser = argparse.ArgumentParser(exit_on_error=False)
    cli.add_signature_arguments(parser, cli._resolve(cli.COMMANDS[key]))
    try:
        ns = parser.parse_args(words[len(key) :])
    except (argparse.ArgumentError, SystemExit) as exc:
        pytest.fail(f"{where}: `dist-forget {args}` does not parse ({exc})")
    if "..." not in words:  # a whole example: its config and overrides load (keys and types checked)
        from dist_forget.engine.config import RunConfig

        load_config(RunConfig, ROOT / ns.config, ns.overrides)


def test_every_launcher_is_shown_with_a_command():
    shown = {where for where, _ in _launcher_lines()}
    assert shown == {"README.md", "launchers/deepspeed.sh", "launchers/torchrun.sh", "launchers/slurm.sbatch"}


def test_the_readme_is_scannable_in_the_documented_order():
    """What it is, the two commands, a quickstart, then each topic under its own heading."""
    headings = re.findall(r"^## (.+)$", README.read_text(), flags=re.M)
    want = ["Two commands", "Quickstart", "Pipeline, one command per step", "Launching", "Reports", "Library use",
            "Reliability", "Security"]  # fmt: skip
    assert [h for h in headings if h in want] == want, headings
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert [ln.split("#")[0].split() for ln in blocks[0].splitlines()] == [["make", "demo"], ["make", "test"]]
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.S)
    longest = max(len(p) for p in prose.split("\n\n"))
    assert longest < 1800, (
        f"a README paragraph of {longest} characters: split it or move it to a report's NOTES"
    )


def test_the_readme_links_point_at_files():
    for target in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if target.startswith("http"):
            continue
        assert (ROOT / target).exists(), target


def test_every_test_the_fault_table_names_exists():
    """RELIABILITY.md's fault table names the test that shows each row: each must exist as written."""
    text = (ROOT / "RELIABILITY.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(named) >= 10, named
    for path, name in named:
        assert f"def {name}(" in (ROOT / path).read_text(), f"RELIABILITY.md names {path}::{name}"


def _readme_bullet(report: str) -> str:
    match = re.search(rf"^- `reports/{report}/`.*?(?=\n\n|\Z)", README.read_text(), flags=re.M | re.S)
    assert match, f"README.md has no bullet for reports/{report}/"
    return " ".join(match.group(0).split())


def test_the_readme_states_the_smollm2_reports_figures():
    """The README's SmolLM2 figures are the committed report's (findings.json, runs.csv, the sweep's grid):
    a run landing or a regenerated report without the README following fails here."""
    import csv
    import json

    from dist_forget.sweep.config import SweepConfig
    from dist_forget.sweep.grid import expand

    folder = ROOT / "reports" / "smollm2"
    bullet = _readme_bullet("smollm2")
    done, total = map(int, re.search(r"(\d+) of (?:its )?(\d+) runs", bullet).groups())
    with open(folder / "runs.csv") as fh:
        assert done == len(list(csv.DictReader(fh)))
    assert total == len(expand(load_config(SweepConfig, ROOT / "configs" / "sweep" / "smollm2.yaml")))
    # "p = 1 % removes 45 % ... and 11 % ... (27.87 % on average ...)": per p, each pair's share of the
    # forgetting removed on the held-out slice in the report's pair order, then their mean when several
    sliced = json.loads((folder / "findings.json").read_text())["held_out_slice"]
    injection = sliced["injection"]
    assert injection
    for block in injection.values():
        p = f"{100 * block['p']:g} %"
        said = re.search(rf"p = {p} removes (.*?)(?=p = |$)", bullet)
        assert said, f"the README's smollm2 bullet says nothing about p = {p}"
        stated = re.findall(r"(\d+(?:\.(\d+))?) %", said.group(1))
        shares = [pair["forgetting_removed"] for pair in block["pairs"]]
        shares += [block["forgetting_removed_mean"]] if len(shares) > 1 else []
        assert len(stated) == len(shares), (said.group(0), shares)
        for (number, decimals), share in zip(stated, shares):
            assert number == f"{100 * share:.{len(decimals)}f}", (said.group(0), shares)
    # "Legal's implied B is 25": the B the slice's p = 1 % and 5 % pair implies, per domain where identified
    for domain, b in re.findall(r"(\w+)'s implied B is (\d+)", bullet):
        records = sliced["implied_injection_strength"]["records"]
        (record,) = [r for r in records if r["domain"] == domain.lower() and r["identified"]]
        assert b == f"{record['B']:.0f}", (domain, record)
