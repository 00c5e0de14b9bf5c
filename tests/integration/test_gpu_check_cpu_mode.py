"""`make gpu-check` in its CPU mode: `python -m benchmarks.gpu_check --cpu`, a real run of the tests in
tests/gpu in their CPU setting (data from tests/data, real finetunes on all three engines in their own
processes), so the GPU check cannot rot where CI has no GPU (elsewhere in `make test` those tests skip). It
must exit 0, print one `skipped` line per part or item that needs CUDA with the reason, and write
gpu_check.json in the structure a GPU run fills (strict JSON: no NaN/Infinity), gpu_check.txt and
gpu_check.log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PART_KEYS = {"name", "status", "summary", "reason", "wall_s", "rows", "figures", "checks", "skipped"}


def _strict(text: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"gpu_check.json holds {token}: not strict JSON")

    return json.loads(text, parse_constant=refuse)


def test_gpu_check_cpu_mode_runs_the_cpu_parts_and_lists_the_skipped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(
        PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    # Its time budget is this test's own limit: on a busy machine (make test runs 2 workers) a part must not
    # be skipped "out of time" under the default 480 s; the behaviour, not the speed, is under test here.
    limit_s = 600
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--cpu", "--out", str(tmp_path)]
        + ["--budget-s", str(limit_s)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=limit_s,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    result = _strict((tmp_path / "gpu_check.json").read_text())
    assert (
        result["schema"] == 1 and result["mode"] == "cpu" and result["ok"] is True and result["failed"] == []
    )
    assert result["device"]["type"] == "cpu" and result["device"]["peak_flops"] > 0
    assert (
        result["versions"]["torch"]
        and result["versions"]["deepspeed"]
        and result["versions"]["megatron-core"]
    )
    parts = result["parts"]
    assert list(parts) == ["optimizer", "logits", "engines", "resume", "tests_gpu"]
    assert all(set(p) == PART_KEYS for p in parts.values())
    assert {n: p["status"] for n, p in parts.items()} == {
        "optimizer": "ok",
        "logits": "ok",
        "engines": "ok",
        "resume": "ok",
        "tests_gpu": "skipped",
    }

    # every skipped part or item: one line of the table with its reason
    skipped = [("tests_gpu", parts["tests_gpu"]["reason"])]
    skipped += [(n, s["what"] + ": " + s["reason"]) for n, p in parts.items() for s in p["skipped"]]
    assert len(skipped) == 4  # tests/gpu, the stock GPTModel's logits, bf16 finetunes + MFU, megatron stock
    table = (tmp_path / "gpu_check.txt").read_text().strip()
    assert table in proc.stdout
    lines = [
        ln for ln in table.splitlines() if ln.split()[1:2] == ["skipped"] or ln.split()[:1] == ["skipped"]
    ]
    assert len(lines) == len(skipped), lines
    for _, reason in skipped:
        assert "needs CUDA" in reason
        assert sum(ln.endswith(reason) for ln in lines) == 1, (reason, lines)
    log = (tmp_path / "gpu_check.log").read_text()
    assert "===== pytest: exit 0" in log and "===== single-fp32: exit 0" in log
    # the parts are the outcomes of the marked tests in tests/gpu, run once by pytest under the runner
    outcomes = result["pytest"]["tests"]
    assert result["pytest"]["exit_code"] == 0 and all(t.startswith("tests/gpu/test_") for t in outcomes)
    assert sorted(outcomes.values()).count("passed") == 7 and len(outcomes) == 10

    opt = parts["optimizer"]["figures"]
    assert opt["ratio"] > 0 and opt["baseline"] == "fused" and opt["goal_met"] is None
    assert opt["anchored_path"]["path"] == "foreach" and opt["adamw_path"]["path"] == "fused"

    logits = parts["logits"]["figures"]
    assert logits["fp32"]["local_vs_hf"] < 1e-4 and "stock_vs_hf" not in logits["fp32"] and "bf16" in logits

    engines = parts["engines"]["figures"]
    assert engines["precision"] == "fp32" and set(engines["runs"]) == {"single", "deepspeed", "megatron"}
    for run in engines["runs"].values():
        assert run["status"] == "ok" and len(run["losses"]) == engines["steps"] == run["steps"]
        assert run["tokens_per_s"] > 0 and 0 < run["mfu"] < 1 and run["peak_memory_bytes"] > 0
    assert engines["mfu_goal"]["applies"] is False and engines["mfu_goal"]["met"] is None
    (agree,) = parts["engines"]["checks"]
    assert agree["ok"] and agree["value"] < 1e-4

    resume = parts["resume"]["figures"]
    assert resume["max_abs_loss_diff"] == 0.0 and resume["tensors_differing"] == 0 and resume["tensors"] > 0
    assert len(resume["losses_resumed"]) == engines["steps"] - resume["resumed_from_step"]
