"""The protocol checks read a sweep folder's run files: each check passes on a protocol run and fails alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_forget.study import protocol

SEQ_LEN = 128


def _write(folder: Path, summary: dict, report: dict, config: dict) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "run_config.json").write_text(json.dumps(config))


def _eval_curve(folder: Path, best: int, last: int, rise: float) -> None:
    """A target-validation U-curve evaluated every 50 steps: down to 3.0 at `best`, then up by `rise`."""
    steps = list(range(50, last + 1, 50))
    lines = [{"kind": "eval", "step": s, "pt_loss": 4.0,
              "ft_loss": 3.0 + (best - s) / 1000 if s <= best else 3.0 + rise * (s - best) / (last - best)}
             for s in steps]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def make_sweep(root: Path, losses=(4.5, 4.3, 4.0), tokens_per_param=20.0, best=(100, 200), last=300,
               injected=25, eval_sequences=128, rise=0.05, unique_tokens=10**8) -> Path:  # fmt: skip
    shards = root / "shards"
    shards.mkdir(parents=True)
    (shards / "manifest.json").write_text(json.dumps({"seq_len": SEQ_LEN, "domain": "english-xl"}))
    for i, loss in enumerate(losses):
        n, total = 10_000 * 3**i, 40_000 * 3**i
        sequences = int(tokens_per_param * total / SEQ_LEN) + 1
        _write(root / "pretrain" / f"size{i}", {"model_params": n, "pt_loss": loss, "target_tokens": unique_tokens},
               {"sequences": sequences, "total_params": total, "step": sequences // 16},
               {"data": {"target": str(shards)}})  # fmt: skip
    for i, b in enumerate(best):
        for p, inj in ((0.0, 0), (0.01, injected), (0.05, 5 * injected)):
            _write(root / "finetune" / f"run{i}_p{p:g}",
                   {"inject_fraction": p, "model_params": 10_000 * 3**i, "steps": b},
                   {"best_step": b, "step": last, "pretrain_sequences_at_best": inj},
                   {"train": {"batch_size": 16, "eval_sequences": eval_sequences}})  # fmt: skip
            _eval_curve(root / "finetune" / f"run{i}_p{p:g}", b, last, rise)
    return root


def test_a_sweep_on_the_protocol_meets_it(tmp_path):
    out = protocol.check(make_sweep(tmp_path))
    assert out["met"] is True and out["failed"] == [] and out["undermined"] == []
    assert out["pretrain_loss_by_size"] == {"10000": 4.5, "30000": 4.3, "90000": 4.0}
    assert all(x >= 20 for x in out["pretrain_tokens_per_param"].values())
    assert out["pretrain_epochs"] == pytest.approx({"10000": 0.008, "30000": 0.024, "90000": 0.072}, rel=0.01)
    assert out["share_best_before_last"] == 1.0 and out["share_past_bottom"] == 1.0
    assert out["injected_at_best"]["0.01"] == {"min": 25, "mean": 25.0, "runs": 2}
    assert out["eval_sequences"] == 128


@pytest.mark.parametrize(
    "change, failed",
    [
        ({"tokens_per_param": 3.8}, "ladder_trained"),
        ({"unique_tokens": 5_000_000}, "ladder_fresh"),  # the largest rung reads its 7.2M tokens 1.44 times
        ({"losses": (5.95, 5.67, 5.50, 5.54)}, "ladder_ordered"),  # the old micro ladder: not ordered
        ({"losses": (4.5, 4.49, 4.0)}, "ladder_ordered"),  # a gap inside eval noise
        ({"best": (100, 300)}, "u_curve_bottom"),  # one run's best is its last evaluation
        ({"rise": 0.005}, "u_curve_bottom"),  # stopped on a wobble of a slow descent, not a rise
        ({"injected": 2}, "injection_acts"),
        ({"eval_sequences": 32}, "eval_sequences"),
    ],
)
def test_each_check_fails_alone_and_names_what_it_undermines(tmp_path, change, failed):
    out = protocol.check(make_sweep(tmp_path, **change))
    assert out["met"] is False and out["failed"] == [failed]
    assert set(protocol.UNDERMINES[failed]) == set(out["undermined"])


def test_runs_written_before_the_trainer_recorded_injection_count_from_the_exact_stream(tmp_path):
    root = make_sweep(tmp_path)
    for rep in (root / "finetune").glob("*/report.json"):
        data = json.loads(rep.read_text())
        del data["pretrain_sequences_at_best"]
        rep.write_text(json.dumps(data))
    out = protocol.check(root)
    # best steps 100 and 200 of 16 sequences at p = 1 %: floor(16) and floor(32) pretraining sequences
    assert out["injected_at_best"]["0.01"] == {"min": 16, "mean": 24.0, "runs": 2}
    assert out["failed"] == ["injection_acts"]


def test_a_sweep_of_a_pretrained_model_has_no_ladder_to_check(tmp_path):
    """No pretrain stage (model.init_from, one size): the ladder checks do not apply, the others still do."""
    out = protocol.check(make_sweep(tmp_path, losses=()))
    assert out["checks"]["ladder_trained"] is None and out["checks"]["ladder_ordered"] is None
    assert out["met"] is True and out["failed"] == []
    assert out["not_applicable"] == ["forgetting_vs_size", "laws"]
    assert protocol.check(make_sweep(tmp_path / "b", losses=(), injected=2))["failed"] == ["injection_acts"]


def test_the_block_says_where_the_runs_ran_and_how_long_they_took(tmp_path):
    """Runs repeat bit for bit on one machine, not across CPUs: the block groups runs by their report.json
    fingerprint and sums their wall time; a run without one is counted as not recorded."""
    root = make_sweep(tmp_path)
    epyc = {"cpu_model": "AMD EPYC", "aten_cpu_capability": "AVX512", "threads": 1, "torch": "2.13.0+cpu"}
    intel = epyc | {"cpu_model": "Intel Xeon", "aten_cpu_capability": "AVX2"}
    reports = sorted(root.glob("*/*/report.json"))
    for i, rep in enumerate(reports[:-1]):
        data = json.loads(rep.read_text())
        data |= {"machine": intel if i == 0 else epyc, "wall_s": 10.0 * (i + 1)}
        rep.write_text(json.dumps(data))
    rows = protocol.check(root)["machines"]
    n = len(reports)
    assert rows == [
        {"machine": "AMD EPYC, AVX512 kernels, 1 thread, torch 2.13.0+cpu", "runs": n - 2,
         "wall_s": sum(10.0 * (i + 1) for i in range(1, n - 1))},
        {"machine": "Intel Xeon, AVX2 kernels, 1 thread, torch 2.13.0+cpu", "runs": 1, "wall_s": 10.0},
        {"machine": "not recorded", "runs": 1, "wall_s": 0.0},
    ]  # fmt: skip
