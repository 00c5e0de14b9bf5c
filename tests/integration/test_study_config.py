"""The shipped study and demo sweeps at toy scale: every point's run config loads, and the smallest
pretraining plus one injected finetune of each run for real (2 steps on the tiny data), so neither
config can rot between studies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dist_forget.config import load_config, read_yaml
from dist_forget.engine.config import RunConfig
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import expand

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOY = ["schedule.steps=2", "schedule.warmup=1", "train.eval_sequences=8", "train.eval_every=1",
       "tracking.enabled=false", "checkpoint.every=0"]  # fmt: skip


def _on_tiny_data(doc: dict, tiny_data, out: Path) -> dict:
    doc["out_dir"] = str(out)
    doc["pretrain"]["overrides"] += [f"data.target={tiny_data.english}"]
    doc["finetune"]["overrides"] += [f"data.pretrain={tiny_data.english}"]
    doc["finetune"]["domains"] = {name: str(tiny_data.code) for name in doc["finetune"]["domains"]}
    doc["tracking"] = {"enabled": False}
    return doc


def _run_config(argv: list[str]) -> RunConfig:
    """The RunConfig a point's command line builds (what `dist-forget pretrain|finetune` would load)."""
    i = argv.index("--config")
    overrides = [a for a in argv[i + 2 :] if "=" in a and not a.startswith("--")]
    return load_config(RunConfig, ROOT / argv[i + 1], overrides)


@pytest.mark.parametrize("name", ["micro", "demo"])
def test_sweep_config_runs_at_toy_scale(name, tiny_data, tmp_path):
    doc = _on_tiny_data(read_yaml(ROOT / "configs/sweep" / f"{name}.yaml"), tiny_data, tmp_path / "sweep")
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(doc))
    points = expand(load_config(SweepConfig, config))
    for point in points:  # every run's config is valid: keys, types and cross-checks
        cfg = _run_config(point.argv)
        assert cfg.train.eval_sequences >= 128  # the protocol's eval size survives the overrides
        if point.stage == "finetune":
            assert cfg.train.patience > 0 and cfg.train.stop_rise > 0 and cfg.train.batch_size >= 16
    pretrain = next(p for p in points if p.stage == "pretrain")
    finetune = next(p for p in points if p.stage == "finetune" and p.needs == pretrain.name
                    and p.values["inject_fraction"] == 0.01)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for point in (pretrain, finetune):
        argv = (
            [sys.executable, *point.argv[1:], *TOY] if point.argv[0] == sys.executable else point.argv + TOY
        )
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert json.loads(point.summary.read_text())["model_params"] > 0
