"""Sweep expansion: deterministic points with stable names, pretraining length, and clear config errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from dist_forget.cli import main as cli_main
from dist_forget.config import load_config, read_yaml
from dist_forget.errors import UserError
from dist_forget.models.ladder import shape_of
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import expand


def write_sweep(tmp: Path, **changes: object) -> Path:
    (tmp / "pre.yaml").write_text("train:\n  batch_size: 4\n")
    (tmp / "ft.yaml").write_text("train:\n  batch_size: 4\n")
    doc = {
        "name": "t",
        "out_dir": str(tmp / "sweep"),
        "command": ["fake"],
        "pretrain": {"config": str(tmp / "pre.yaml"), "sizes": ["cpu-0.03m", "cpu-0.1m"], "tokens_per_param": 10,
                     "seq_len": 32},
        "finetune": {"config": str(tmp / "ft.yaml"), "domains": {"code": "shards/code", "law": "shards/law"},
                     "overrides": ["schedule.steps=5"]},
        "grid": {"target_tokens": [1000, 10000], "inject_fraction": [0.0, 0.01]},
        "extra_grids": [{"inject_fraction": [0.0], "anchor_decay": [0.0, 0.1]}],
        **changes,
    }  # fmt: skip
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_points_are_deterministic_named_and_deduplicated(tmp_path: Path) -> None:
    cfg = load_config(SweepConfig, write_sweep(tmp_path))
    points = expand(cfg)
    assert [p.name for p in points] == [p.name for p in expand(cfg)]
    pre, ft = points[:2], points[2:]
    assert [p.name for p in pre] == ["pretrain-cpu-0.03m", "pretrain-cpu-0.1m"]
    # 2 sizes x 2 domains x 2 D x (2 p + 1 extra anchor value; a=0,p=0 appears once)
    assert len(ft) == 2 * 2 * 2 * 3 and len({p.name for p in ft}) == len(ft)
    assert "cpu-0.1m_law_D10000_p0.01_a0_s0" in {p.name for p in ft}
    point = next(p for p in ft if p.name == "cpu-0.1m_law_D10000_p0_a0.1_s0")
    assert point.needs == "pretrain-cpu-0.1m"
    assert point.argv[:6] == ["fake", "finetune", "--config", str(tmp_path / "ft.yaml"), "--resume", "auto"]
    assert "schedule.steps=5" in point.argv and "optim.anchor_decay=0.1" in point.argv
    assert f"model.init_from={tmp_path / 'sweep' / 'pretrain' / 'cpu-0.1m'}" in point.argv
    assert "data.target=shards/law" in point.argv and point.argv[-1] == f"name={point.name}"
    assert point.out_dir == str(tmp_path / "sweep" / "finetune" / point.name)


def test_pretraining_length_follows_tokens_per_parameter(tmp_path: Path) -> None:
    pre = expand(load_config(SweepConfig, write_sweep(tmp_path)))[1]
    n = shape_of("cpu-0.1m").non_embedding_params()
    assert pre.values["steps"] == math.ceil(10 * n / (4 * 32))
    assert f"schedule.steps={pre.values['steps']}" in pre.argv and "model.size=cpu-0.1m" in pre.argv


def test_pretraining_tokens_can_count_the_embedding_read_from_the_manifest(tmp_path: Path) -> None:
    shards = tmp_path / "english"
    shards.mkdir()
    (shards / "manifest.json").write_text('{"seq_len": 128, "vocab_size": 1024}')
    path = write_sweep(tmp_path)
    (tmp_path / "pre.yaml").write_text(f"data:\n  target: {shards}\ntrain:\n  batch_size: 16\n")
    doc = yaml.safe_load(path.read_text())
    doc["pretrain"] = {"config": str(tmp_path / "pre.yaml"), "sizes": ["cpu-0.015m"], "tokens_per_param": 20,
                       "count": "total"}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    pre = expand(load_config(SweepConfig, path))[0]
    total = shape_of("cpu-0.015m").total_params(1024)
    assert total == 46_176 and pre.values["steps"] == math.ceil(20 * total / (16 * 128)) == 451
    assert pre.values["tokens"] >= 20 * total and "model.size=cpu-0.015m" in pre.argv


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"grid": {"domains": ["medical"], "target_tokens": [1]}}, "'medical' is not in finetune.domains"),
        ({"name": "a b"}, "sweep name"),
        ({"extra_grids": [{"lr": [1]}]}, "extra_grids\\[0\\]: unknown key 'lr'"),
        ({"grid": {"target_tokens": []}}, "target_tokens"),
        (
            {"pretrain": None, "grid": {"sizes": ["cpu-0.1m"], "target_tokens": [1]}},
            "uses \\{pretrain_dir\\}, unknown here",
        ),
    ],
)
def test_bad_sweep_configs_name_the_field(tmp_path: Path, changes: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        expand(load_config(SweepConfig, write_sweep(tmp_path, **changes)))


def test_dry_run_lists_points(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["sweep", "--config", str(write_sweep(tmp_path)), "--dry-run", "grid.seeds=[0,1]"]) == 0
    out = capsys.readouterr().out
    assert "todo pretrain-cpu-0.03m: fake pretrain --config" in out and "cpu-0.1m_code_D1000_p0_a0_s1" in out
    assert out.strip().endswith(f"50 runs (0 finished) under {tmp_path / 'sweep'}")
    assert not (tmp_path / "sweep").exists()


# adaptive.yaml plans its static arm from the micro study's fit, which a fresh checkout lacks:
# tests/unit/test_study_adaptive.py expands it with a synthetic fit
@pytest.mark.parametrize(
    "path",
    sorted(
        p for p in Path(__file__).resolve().parents[2].glob("configs/sweep/*.yaml") if p.stem != "adaptive"
    ),
)
def test_shipped_sweep_configs_expand(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parents[2])
    has_pretrain = "pretrain" in read_yaml(path)
    # seq_len and vocab_size are normally read from the shards' manifest, which a fresh checkout lacks
    overrides = ["pretrain.seq_len=128", "pretrain.vocab_size=1024"] if has_pretrain else []
    points = expand(load_config(SweepConfig, path, overrides))
    finetunes = [p for p in points if p.stage == "finetune"]
    assert len({p.name for p in points}) == len(points) and finetunes
    assert {p.values["inject_fraction"] for p in finetunes} >= {0.0, 0.01}
    if path.stem == "micro":  # the study also compares Anchored AdamW at p = 0
        assert any(p.values["anchor_decay"] > 0 and p.values["inject_fraction"] == 0 for p in finetunes)


def test_size_overrides_reach_only_that_sizes_finetunes(tmp_path: Path) -> None:
    path = write_sweep(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["finetune"]["size_overrides"] = {"cpu-0.1m": ["optim.lr=5e-4"]}
    path.write_text(yaml.safe_dump(doc))
    for p in expand(load_config(SweepConfig, path)):
        assert ("optim.lr=5e-4" in p.argv) == (p.stage == "finetune" and p.values["size"] == "cpu-0.1m")
    doc["finetune"]["size_overrides"] = {"cpu-9m": ["optim.lr=5e-4"]}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="size_overrides: 'cpu-9m' is not a size of this sweep"):
        expand(load_config(SweepConfig, path))


def test_array_ranges_are_sbatch_syntax():
    from dist_forget.sweep.slurm_jobs import _ranges

    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3" and _ranges([0, 1]) == "0-1"
