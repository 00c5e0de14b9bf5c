"""`dist-forget config show` prints the config a run would use; `config reference` is docs/config.md."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dist_forget import cli
from dist_forget.config import load_config, to_dict
from dist_forget.config_commands import REGENERATE, _rows, field_comments, reference_markdown
from dist_forget.engine.config import RunConfig
from dist_forget.sweep.config import SweepConfig

ROOT = Path(__file__).resolve().parents[2]


def test_docs_config_md_is_the_generated_reference():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == reference_markdown(), f"docs/config.md is out of date; regenerate it: {REGENERATE}"


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every leaf key of a config dataclass (a section's keys, also of an optional section)."""
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        inner = [a for a in (*typing.get_args(tp), tp) if dataclasses.is_dataclass(a)]
        out += _keys(inner[0], f"{prefix}{f.name}.") if inner else [prefix + f.name]
    return out


@pytest.mark.parametrize("cls", [RunConfig, SweepConfig])
def test_the_reference_has_every_key(cls):
    text = reference_markdown()
    keys = _keys(cls)
    assert len(keys) > 30 and "data.inject_fraction" in _keys(RunConfig)
    for key in keys:
        assert f"| `{key}` |" in text, key


def test_a_field_without_a_comment_is_refused():
    @dataclass
    class Undocumented:
        fine: int = 0  # what it is
        bare: int = 1

    missing: list[str] = []
    rows = _rows(Undocumented, "x.", missing)
    assert missing and missing[0].endswith("Undocumented.bare")
    assert rows[0] == "| `x.fine` | int | `0` | what it is |"


def test_field_comments_above_beside_and_inside():
    comments = field_comments(RunConfig.__dataclass_fields__["train"].default_factory)
    assert comments["stop_rise"].startswith("with patience: stop only once")
    from dist_forget.engine.backend import ParallelConfig

    assert "megatron-core's GPTModel" in field_comments(ParallelConfig)["impl"]  # inside a wrapped default


def _show(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dist_forget.cli", "config", "show", *args], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def test_config_show_prints_the_resolved_config_that_loads_back(tmp_path):
    res = _show("--config", "configs/finetune/tiny.yaml", "data.inject_fraction=5%", "optim.lr=2e-3")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    assert shown["data"]["inject_fraction"] == 0.05 and shown["optim"]["lr"] == 2e-3
    assert shown["optim"]["betas"] == [0.9, 0.95] and shown["train"]["stop_rise"] == 0.0  # defaults filled
    again = tmp_path / "shown.yaml"
    again.write_text(res.stdout)
    assert to_dict(load_config(RunConfig, again)) == to_dict(
        load_config(
            RunConfig, ROOT / "configs/finetune/tiny.yaml", ["data.inject_fraction=0.05", "optim.lr=2e-3"]
        )
    )


def test_config_show_reads_a_sweep_and_refuses_what_a_run_refuses():
    res = _show("--config", "configs/sweep/demo.yaml")
    assert res.returncode == 0 and yaml.safe_load(res.stdout)["grid"]["inject_fraction"] == [0.0, 0.01, 0.05]
    res = _show("--config", "configs/finetune/tiny.yaml", "optim.lrr=1")
    assert res.returncode == 2
    assert res.stderr.strip().startswith(
        "error: command line override 'optim.lrr=1': unknown key 'optim.lrr'"
    )


def test_config_reference_command_prints_docs_config_md(capsys):
    assert cli.main(["config", "reference"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "config.md").read_text()
