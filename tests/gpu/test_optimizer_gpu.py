"""AnchoredAdamW's step time against `torch.optim.AdamW(fused=True)` on the same parameters and gradients, and
which path each step takes (fused / foreach multi-tensor kernels / per-tensor, read off the profiler).

Under CUDA: the engines' size (paper-334m, vocab 32,000), median of 20 alternating steps; the goal, <= 1.15x
fused AdamW, is recorded, not asserted (a goal for the kernels, not a correctness bound). In the CPU setting
(cpu-3m) the goal does not apply: torch's fused CPU AdamW is one kernel, our foreach ops loop per tensor.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.gpu import support

OPTIM_GOAL = 1.15  # AnchoredAdamW's step time over fused AdamW's, on CUDA

pytestmark = [pytest.mark.gpu, support.runs_here()]


def _path(p: dict[str, Any]) -> str:
    kernels = (
        f", {p['cuda_kernels']} CUDA kernels of which {p['multi_tensor_kernels']} multi-tensor"
        if "cuda_kernels" in p
        else ""
    )
    return f"{p['path']} path ({p['foreach_ops']} foreach ops{kernels})"


def test_anchored_adamw_step_time_and_path_vs_fused_adamw(gpu: support.GpuCheck, record) -> None:
    import torch

    from benchmarks.bench_optim import bench_step

    gpu.need(10)
    s = gpu.settings
    r = bench_step(
        s.optim_size, s.vocab, s.optim_steps, device="cuda" if gpu.cuda else "cpu", baseline="fused"
    )
    if gpu.cuda:
        torch.cuda.empty_cache()  # the finetunes after this test get the whole GPU
    r["goal"] = OPTIM_GOAL
    r["goal_met"] = r["ratio"] <= OPTIM_GOAL if gpu.cuda else None  # the goal is about CUDA kernels
    goal = ("met" if r["goal_met"] else "NOT met") if gpu.cuda else "set for CUDA"
    record.figures(**r)
    record.summary(
        f"{s.optim_size}, {r['params'] / 1e6:.1f}M params on {r['device']}: AnchoredAdamW "
        f"{r['ratio']:.2f}x AdamW(fused) per step (goal <= {OPTIM_GOAL}: {goal})"
    )
    record.row("AnchoredAdamW", f"{r['anchored_step_s'] * 1e3:.2f} ms/step, {_path(r['anchored_path'])}")
    record.row("AdamW(fused)", f"{r['adamw_step_s'] * 1e3:.2f} ms/step, {_path(r['adamw_path'])}")

    assert r["ratio"] > 0 and r["baseline"] == "fused"
    # where the profiler could run ("unknown" where it cannot start, e.g. no CUPTI): the paths taken
    assert r["anchored_path"]["path"] in ("foreach", "unknown"), r["anchored_path"]
    assert r["adamw_path"]["path"] in ("fused", "unknown"), r["adamw_path"]
