"""A tiny sweep on the real engine: pretrain, two finetunes; killed midway, rerun, nothing redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def attempts(run_dir: Path) -> int:
    log = run_dir / "sweep.log"
    return sum(line.startswith("=== ") for line in log.read_text().splitlines()) if log.exists() else 0


def test_real_sweep_killed_and_resumed(tiny_data, tmp_path: Path) -> None:  # noqa: ANN001
    quick = ["train.eval_sequences=8", "tracking.enabled=false", "schedule.warmup=2"]
    doc = {
        "name": "engine-it",
        "out_dir": str(tmp_path / "sweep"),
        "max_parallel": 1,
        "pretrain": {"config": str(ROOT / "configs/pretrain/tiny.yaml"), "sizes": ["cpu-0.03m"],
                     "tokens_per_param": 1, "overrides": [f"data.target={tiny_data.english}",
                                                          "train.eval_every=0", "checkpoint.every=0", *quick]},
        "finetune": {"config": str(ROOT / "configs/finetune/tiny.yaml"), "domains": {"code": str(tiny_data.code)},
                     "overrides": [f"data.pretrain={tiny_data.english}", "schedule.steps=8", "train.eval_every=4",
                                   "checkpoint.every=2", *quick]},
        "grid": {"target_tokens": [2048], "inject_fraction": [0.0, 0.01]},
        "fit": {"enabled": False},
        "tracking": {"enabled": False},
    }  # fmt: skip
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "dist_forget.cli", "sweep", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = tmp_path / "sweep"
    first_ft = sweep / "finetune" / "cpu-0.03m_code_D2048_p0_a0_s0"
    second_ft = sweep / "finetune" / "cpu-0.03m_code_D2048_p0.01_a0_s0"

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 400
    while not (first_ft / "summary.json").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running finetune die together
    proc.wait()
    assert not (second_ft / "summary.json").exists()

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 already finished, 1 to run" in res.stdout
    assert attempts(sweep / "pretrain" / "cpu-0.03m") == 1 and attempts(first_ft) == 1
    assert attempts(second_ft) in (1, 2)  # started before the kill or not
    summary = json.loads((second_ft / "summary.json").read_text())
    assert summary["inject_fraction"] == 0.01 and summary["model_params"] == 26784
    with open(sweep / "runs.csv") as fh:
        assert len(fh.read().splitlines()) == 3  # header + both finetunes
