"""The shipped study and demo sweeps at toy scale: every point's run config loads, and the smallest
pretraining plus one injected finetune of each run for real (2 steps on the tiny data), so neither
config can rot between studies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
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
    # the smallest size (fewest steps): a sweep may list its ladder largest first
    pretrain = min((p for p in points if p.stage == "pretrain"), key=lambda p: p.values["steps"])
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


def test_adaptive_sweep_runs_at_toy_scale(tiny_data, tmp_path):
    """configs/sweep/adaptive.yaml on a toy model, with a synthetic forgetting law standing in for the micro
    study's fit: the adaptive run and its static-planner twin run for real (p = 0 is an ordinary point), the
    adaptive run starts at the static arm's p and moves it, and `study adaptive` reports both."""
    from dist_forget.laws.fit import FitConfig
    from dist_forget.laws.pipeline import fit_runs
    from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
    from dist_forget.study.adaptive import adaptive as study_adaptive

    law = {"A": 6.0, "alpha": 0.4, "beta": 0.3, "B": 1000.0}  # forgets 1.3 nats/token here at p = 0
    syn = SyntheticConfig(domains=("code",), fractions=(0.0, 0.01, 0.05), sizes=(1e4, 3e4, 1e5),
                          tokens=(1e3, 1e4), forgetting=law)  # fmt: skip
    fits = fit_runs(synthetic_runs(syn), ["forgetting"], FitConfig(bootstrap=0), progress=False)
    # the bottom of the U-curve at step 1 for every (N, D): the trainer hands the controller the step, and
    # from the bottom on it reads forgetting as measured (before it, toy forgetting <= 0 would keep p)
    fits.append({"domain": "code", "law": "bottom", "form": "bottom-step", "warnings": [],
                 "params": {"A": 1.0, "alpha": 0.0, "beta": 0.0}})  # fmt: skip
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"fits": fits}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    base = tmp_path / "pretrained"
    pre = [sys.executable, "-m", "dist_forget.cli", "pretrain", "--config", "configs/pretrain/tiny.yaml",
           "model.size=cpu-0.015m", f"data.target={tiny_data.english}", f"out_dir={base}", *TOY]  # fmt: skip
    res = subprocess.run(pre, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = read_yaml(ROOT / "configs/sweep/adaptive.yaml")
    doc.update(out_dir=str(tmp_path / "sweep"), tracking={"enabled": False}, adaptive={**doc["adaptive"],
               "prior_fit": str(fit)})  # fmt: skip
    doc["finetune"]["overrides"] += [f"data.pretrain={tiny_data.english}"]
    doc["finetune"]["domains"] = {"code": str(tiny_data.code)}
    doc["finetune"]["set"]["model.init_from"] = str(base)
    doc["finetune"]["size_overrides"] = {}  # one size here
    doc["grid"].update(
        sizes=["cpu-0.015m"],
        domains=["code"],
        target_tokens=[2048],
        inject_fraction=["auto"],
        max_forgetting=[0.5],
        max_forgetting_share=[],
    )
    doc["extra_grids"] = []
    config = tmp_path / "adaptive.yaml"
    config.write_text(yaml.safe_dump(doc))
    points = expand(load_config(SweepConfig, config))
    assert [p.name.split("_", 3)[3] for p in points] == ["pauto_a0_s0-eps0.5", "pplan_a0_s0-eps0.5"]
    logs = []
    for point in points:
        argv = [sys.executable, *point.argv[1:], *TOY]
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        logs.append(res.stdout)
    assert "bottom expected at step 1" in logs[0]
    schedule = json.loads((Path(points[0].out_dir) / "report.json").read_text())["inject_schedule"]
    static = json.loads(points[1].summary.read_text())["inject_fraction"]
    # the adaptive run starts at the planner's p (the stream holds p as a fraction, denominator <= 1e6)
    assert float(Fraction(schedule[0][1])) == pytest.approx(static, abs=2e-6)
    assert len(schedule) > 1  # ... and the controller moved it
    out = tmp_path / "report"
    assert study_adaptive(tmp_path / "sweep", out) == 0
    data = json.loads((out / "adaptive.json").read_text())
    assert [r["arm"] for r in data["rows"]] == ["auto", "plan"] and data["goal"]["pairs"] == 1
    assert data["rows"][1]["inject_fraction_mean"] == pytest.approx(static)
