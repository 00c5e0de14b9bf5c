"""The GPU check's pieces that need no process: the datasheet peak table, the table's skip lines, the parts
made from the tests' records, bad arguments (the whole CPU-mode run is
tests/integration/test_gpu_check_cpu_mode.py)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from benchmarks import gpu_check as G
from benchmarks import gpu_table as T
from dist_forget.engine.flops import datasheet_peak
from dist_forget.errors import UserError


def test_datasheet_peak_is_keyed_by_device_name() -> None:
    assert datasheet_peak("NVIDIA H200") == datasheet_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_peak("NVIDIA H100 PCIe") == 756e12  # the PCIe card is slower: matched before "H100"
    assert datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("Tesla T4") is None  # then the check measures a bf16 matmul and says so


def _result(parts: dict) -> dict:
    return {
        "mode": "cuda",
        "ok": False,
        "failed": ["engines"],
        "budget_s": 480,
        "wall_s": 12.0,
        "device": {"name": "NVIDIA H200", "peak_flops": 989e12, "peak_source": "datasheet bf16 dense"},
        "versions": {"torch": "2.11"},
        "parts": parts,
    }


def test_table_has_a_row_per_part_and_a_line_per_skipped_item() -> None:
    engines = T.Part(
        "engines",
        status="error",
        summary="paper-334m bf16",
        rows=[("single", "400,000 tok/s"), ("megatron", "error: out of memory")],
    )
    engines.skip("deepspeed", "out of time: 20 s left")
    parts = {"engines": engines, "tests_gpu": T.Part("tests_gpu", status="skipped", reason="not in --only")}
    text = T.table(_result({n: asdict(p) for n, p in parts.items()}))
    lines = text.splitlines()
    assert lines[0].startswith(
        "GPU check (cuda mode) on NVIDIA H200: peak 989 TFLOP/s (datasheet bf16 dense)"
    )
    assert any(ln.split()[:2] == ["engines", "error"] and ln.endswith("paper-334m bf16") for ln in lines)
    assert any(ln.split()[:1] == ["single"] and ln.endswith("400,000 tok/s") for ln in lines)
    assert [ln.split(None, 1)[1] for ln in lines if ln.lstrip().startswith("skipped")] == [
        "deepspeed: out of time: 20 s left"
    ]
    assert any(ln.split()[:2] == ["tests_gpu", "skipped"] and ln.endswith("not in --only") for ln in lines)
    assert lines[-1] == "FAILED: engines"


def test_part_check_turns_a_missed_bound_into_fail() -> None:
    part = T.Part("resume")
    assert part.check("losses bit-exact", 0.0, 0.0, True) and part.status == "ok"
    assert not part.check("weights bit-exact", 1e-7, 0.0, False) and part.status == "fail"


def _outcome(test: str, outcome: str, reason: str = "", error: bool = False, when: str = "call") -> dict:
    return {
        "kind": "outcome",
        "test": test,
        "when": when,
        "outcome": outcome,
        "error": error,
        "duration": 1.5,
        "reason": reason,
    }


def test_parts_are_made_from_the_tests_records() -> None:
    eng, gpu = "tests/gpu/test_engines_gpu.py::", "tests/gpu/test_megatron_gpu.py::"
    agree, resume = eng + "test_engines_agree_and_mfu_goal", "tests/gpu/test_resume_gpu.py::test_resume"
    engines = [eng + f"test_engine_finetune[{e}]" for e in ("single", "deepspeed", "megatron")]
    records = [
        {"kind": "collected", "tests": [*engines, agree, resume, gpu + "test_a", gpu + "test_b"]},
        {"kind": "summary", "test": engines[0], "text": "cpu-0.03m fp32"},
        {"kind": "figures", "test": engines[0], "values": {"runs": {"single": {"mfu": 0.1}}, "steps": 4}},
        {"kind": "row", "test": engines[0], "label": "single", "text": "100 tok/s"},
        _outcome(engines[0], "passed"),
        {"kind": "figures", "test": engines[1], "values": {"runs": {"deepspeed": {"status": "error"}}}},
        _outcome(engines[1], "failed", "RuntimeError: deepspeed-fp32 exited 1: boom", error=True),
        _outcome(engines[2], "skipped", "out of time: 20 s left of the 480 s budget", when="setup"),
        {
            "kind": "check",
            "test": agree,
            "name": "fp32 per-step loss",
            "value": 0.5,
            "bound": 1e-4,
            "ok": False,
        },
        _outcome(agree, "failed", "AssertionError: fp32 per-step loss: 0.5 misses the bound 0.0001"),
        _outcome(gpu + "test_a", "skipped", "needs CUDA: NCCL", when="setup"),
        _outcome(gpu + "test_b", "skipped", "needs CUDA: NCCL", when="setup"),
    ]
    parts = {n: T.Part(n) for n in T.PARTS}
    parts["optimizer"].status, parts["optimizer"].reason = "skipped", "not in --only"
    run = ["logits", "engines", "resume", "tests_gpu"]
    outcomes = T.tabulate(parts, run, records, 124, "[killed after 400 s: out of time]")

    assert (
        outcomes[engines[0]] == "passed"
        and outcomes[engines[2]] == "skipped"
        and outcomes[resume] == "cut off"
    )
    e = parts["engines"]
    assert e.status == "error" and e.reason == "RuntimeError: deepspeed-fp32 exited 1: boom"
    assert e.summary == "cpu-0.03m fp32" and e.rows == [("single", "100 tok/s")] and e.wall_s == 6.0
    assert e.figures == {"runs": {"single": {"mfu": 0.1}, "deepspeed": {"status": "error"}}, "steps": 4}
    assert e.skipped == [{"what": "megatron", "reason": "out of time: 20 s left of the 480 s budget"}]
    assert [c["ok"] for c in e.checks] == [False]
    assert (parts["resume"].status, parts["resume"].reason) == (
        "error",
        "cut off: pytest exited 124 before it ended (out of time)",
    )
    assert (parts["tests_gpu"].status, parts["tests_gpu"].reason) == ("skipped", "needs CUDA: NCCL")
    assert parts["logits"].status == "error" and parts["logits"].reason == (
        "pytest ran none of its tests (exit 124): [killed after 400 s: out of time]"
    )
    assert (parts["optimizer"].status, parts["optimizer"].reason) == ("skipped", "not in --only")


def test_a_missed_bound_alone_fails_its_part_and_untold_parts_get_a_row_per_test() -> None:
    gpu, agree = "tests/gpu/test_megatron_gpu.py::test_x", "tests/gpu/test_engines_gpu.py::test_agree"
    records = [
        {"kind": "check", "test": agree, "name": "bf16 loss", "value": 0.2, "bound": 0.05, "ok": False},
        _outcome(agree, "failed", "AssertionError: bf16 loss: 0.2 misses the bound 0.05"),
        _outcome(gpu, "passed"),
    ]
    parts = {n: T.Part(n) for n in T.PARTS}
    T.tabulate(parts, ["engines", "tests_gpu"], records, 1, "")
    assert parts["engines"].status == "fail" and parts["engines"].reason.startswith("AssertionError: bf16")
    tests_gpu = parts["tests_gpu"]
    assert tests_gpu.status == "ok" and tests_gpu.summary == "pytest: 1 passed"
    assert tests_gpu.rows == [("test_x", "passed in 1.5 s")]


def test_finite_makes_strict_json() -> None:
    assert T.finite({"a": float("inf"), "b": [float("nan"), 1.5], "c": Path("/x")}) == {
        "a": None,
        "b": [None, 1.5],
        "c": "/x",
    }


def test_pytest_summary_and_last_error_lines() -> None:
    out = "....\nE   RuntimeError: CUDA out of memory\n=== 1 failed, 1 passed in 81.20s (0:01:21) ===\n"
    assert G._pytest_summary(out) == "1 failed, 1 passed in 81.20s (0:01:21)"
    assert G._last_error(out) == "E   RuntimeError: CUDA out of memory"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--only", "engines,bogus"],
            "--only engines,bogus: unknown part(s) bogus; choose from optimizer, logits",
        ),
        (["--budget-s", "0"], "--budget-s 0 must be > 0 seconds"),
    ],
)
def test_bad_arguments_are_one_line_user_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        G.main(argv)
    assert message in str(err.value) and "\n" not in str(err.value)
