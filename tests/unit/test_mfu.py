"""MFU's clock: on a CPU both sides are per CPU-second of the process (a neighbour on the cores moves
neither), on a GPU or against a given peak the wall-clock ratio as before; tokens/s stays wall-clock."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.metrics_log import MetricsLog, StepCost
from dist_forget.engine.run_state import RunState
from dist_forget.engine.trainer import train
from dist_forget.tracking import Tracker
from tests.conftest import tiny_finetune_overrides

CONFIG = Path(__file__).parents[2] / "configs" / "finetune" / "tiny.yaml"
# 1e6 FLOPs a token x 1,000 tokens a step = 1e9 FLOPs a step
FPT, TOKENS, STEPS = 1e6, 1000, 100


def _log(tmp_path: Path, name: str, peak: float, per_cpu_second: bool, lines: list[str]) -> MetricsLog:
    cost = StepCost(STEPS, TOKENS, FPT, peak, per_cpu_second=per_cpu_second)
    return MetricsLog(tmp_path / name, 0, None, Tracker.inactive(), cost, lambda m, **_: lines.append(m))


def _steps(log: MetricsLog, seconds: list[tuple[float, float]]) -> list[dict]:
    """Log one step per (wall seconds, process CPU seconds); the train records metrics.jsonl got."""
    state = RunState()
    for dt, cpu_dt in seconds:
        state.advance(4, 0)
        log.train_step(state, 6.0, 1e-3, 1.0, dt, cpu_dt, 0.0, 4.0, 0.0)
    log.close()
    return [json.loads(ln) for ln in log.path.read_text().splitlines()]


def test_cpu_mfu_is_per_process_cpu_second_and_a_neighbour_does_not_move_it(tmp_path):
    """The same steps (0.4 CPU-seconds each) with the cores to themselves (1 s wall) and shared with a
    neighbour (4 s wall): MFU = 1e9 FLOPs / 0.4 CPU-s / 1e10 FLOP per CPU-s = 25 % both times; tokens/s
    is the wall clock's (what the user waits on) and drops 4x."""
    idle_lines: list[str] = []
    shared_lines: list[str] = []
    idle = _steps(_log(tmp_path, "idle.jsonl", 1e10, True, idle_lines), [(1.0, 0.4)] * 3)
    shared = _steps(_log(tmp_path, "shared.jsonl", 1e10, True, shared_lines), [(4.0, 0.4)] * 3)
    assert [r["mfu"] for r in idle] == pytest.approx([0.25] * 3)
    assert [r["mfu"] for r in shared] == [r["mfu"] for r in idle]
    assert [r["tokens_per_s"] for r in idle] == pytest.approx([1000.0] * 3)
    assert [r["tokens_per_s"] for r in shared] == pytest.approx([250.0] * 3)
    assert "1,000 tok/s | MFU 25.0% |" in idle_lines[-1] and "250 tok/s | MFU 25.0% |" in shared_lines[-1]
    # the ETA is wall-clock too: 97 steps left at 4 s
    assert shared_lines[-1].endswith("ETA 6m28s")


def test_cpu_mfu_averages_the_same_window_as_tokens_per_s(tmp_path):
    """The last 20 steps, on both clocks: 5 slow steps (10 CPU-s) drop out of the window after 20 more."""
    records = _steps(_log(tmp_path, "m.jsonl", 1e10, True, []), [(20.0, 10.0)] * 5 + [(1.0, 0.5)] * 20)
    assert records[4]["mfu"] == pytest.approx(1e9 / 10.0 / 1e10)
    assert records[5]["mfu"] == pytest.approx(6e9 / 50.5 / 1e10)  # step 6: all 6 steps in the window
    assert records[20]["mfu"] == pytest.approx(2e10 / 48.0 / 1e10)  # step 21: the first slow one left
    assert records[-1]["mfu"] == pytest.approx(0.2) and records[-1]["tokens_per_s"] == pytest.approx(1000.0)


def test_wall_mfu_is_the_old_formula_whatever_the_cpu_time(tmp_path):
    """A GPU run or a given peak (per_cpu_second false): MFU = FLOPs per token x wall tokens/s / peak,
    the formula it always had, bit for bit; the CPU seconds play no part."""
    one = _steps(_log(tmp_path, "a.jsonl", 1e11, False, []), [(0.7, 0.1), (0.9, 0.2), (1.3, 3.0)])
    other = _steps(_log(tmp_path, "b.jsonl", 1e11, False, []), [(0.7, 5.0), (0.9, 0.0), (1.3, 0.01)])
    assert [r["mfu"] for r in one] == [FPT * r["tokens_per_s"] / 1e11 for r in one]
    assert [r["mfu"] for r in one] == [r["mfu"] for r in other]
    assert one[-1]["mfu"] == pytest.approx(1e9 / ((0.7 + 0.9 + 1.3) / 3) / 1e11)


def test_a_cpu_run_measures_its_peak_per_cpu_second(tiny_data, base_model, tmp_path, one_thread):
    """A real tiny finetune without train.peak_flops times the matmul per process CPU-second and says so
    in report.json; its last record's MFU is the report's. (A given peak stays wall-clock: the trainer's
    full run, tests/unit/test_engine_trainer.py.)"""
    out = tmp_path / "run"
    extra = ("train.peak_flops=0", "schedule.steps=2", "train.eval_every=2", "checkpoint.every=0")
    train(
        load_config(RunConfig, CONFIG, tiny_finetune_overrides(tiny_data, base_model, out, *extra)),
        "finetune",
    )
    report = json.loads((out / "report.json").read_text())
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r["kind"] == "train"][-1]
    assert report["mfu_clock"] == "cpu" and math.isfinite(report["peak_flops"]) and report["peak_flops"] > 0
    assert last["step"] == 2 and 0 < last["mfu"] == report["mfu"]
