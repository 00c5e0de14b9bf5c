"""The GPU check's pieces that need no process: the datasheet peak table, the table's skip lines, bad
arguments (the whole CPU-mode run is tests/integration/test_gpu_check_cpu_mode.py)."""

from __future__ import annotations

import pytest

from benchmarks import gpu_check as G
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
    engines = G.Part(
        "engines",
        status="error",
        summary="paper-334m bf16",
        rows=[("single", "400,000 tok/s"), ("megatron", "error: out of memory")],
    )
    engines.skip("deepspeed", "out of time: 20 s left")
    parts = {"engines": engines, "tests_gpu": G.Part("tests_gpu", status="skipped", reason="not in --only")}
    text = G.table(_result({n: G.asdict(p) for n, p in parts.items()}))
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
    part = G.Part("resume")
    assert part.check("losses bit-exact", 0.0, 0.0, True) and part.status == "ok"
    assert not part.check("weights bit-exact", 1e-7, 0.0, False) and part.status == "fail"


def test_finite_makes_strict_json() -> None:
    assert G._finite({"a": float("inf"), "b": [float("nan"), 1.5], "c": G.Path("/x")}) == {
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
