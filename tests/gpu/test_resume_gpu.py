"""A DeepSpeed ZeRO-2 fp32 finetune, and the same run resumed from its mid checkpoint: bit-exact losses after
the resume step and bit-exact final weights.

Under CUDA: paper-41m at the engines' sequence length, 6 steps resumed at 3, with deterministic kernels (no
TF32, deterministic algorithms, math attention). In the CPU setting it resumes the engines' DeepSpeed run
(test_engines_gpu.py checkpoints it halfway) when that ran first, else a run of its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.gpu import support

pytestmark = [pytest.mark.gpu, support.runs_here()]


def _weights_diff(a: Path, b: Path) -> dict[str, Any]:
    """Compare two HF exports tensor by tensor (max |delta| over all, and how many tensors differ)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        return {"tensors": len(wa), "tensors_differing": len(wa), "max_abs_weight_diff": math.inf}
    diffs = [float((wa[k].float() - wb[k].float()).abs().max()) for k in wa]
    return {
        "tensors": len(diffs),
        "tensors_differing": sum(d != 0.0 for d in diffs),
        "max_abs_weight_diff": max(diffs, default=0.0),
    }


def test_deepspeed_resume_is_bit_exact(gpu: support.GpuCheck, record) -> None:
    gpu.need(40)
    s = gpu.settings
    zero2 = ("parallel.zero_stage=2",)
    full = gpu.runs.get("deepspeed")
    half = max(1, s.resume_steps // 2)
    if full is None or full["precision"] != "fp32":
        full = gpu.finetune(
            "deepspeed-fp32-full", "deepspeed", s.resume_size, "fp32", s.resume_steps, half, 180, extra=zero2
        )
    else:
        half = max(1, full["steps"] // 2)
    ckpt = Path(full["out"]) / "checkpoints" / f"step-{half:08d}"
    resumed = gpu.finetune(
        "deepspeed-fp32-resumed",
        "deepspeed",
        full["size"],
        "fp32",
        full["steps"],
        half,
        180,
        resume=str(ckpt),
        extra=zero2,
    )
    a, b = full["losses"][half:], resumed["losses"]
    loss_diff = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) and a else math.inf
    weights = _weights_diff(Path(full["out"]) / "model", Path(resumed["out"]) / "model")
    record.figures(
        size=full["size"],
        resumed_from_step=half,
        steps=full["steps"],
        losses_full=a,
        losses_resumed=b,
        max_abs_loss_diff=loss_diff,
        **weights,
    )
    exact = record.check("losses after the resume step, bit-exact", loss_diff, 0.0, loss_diff == 0.0)
    w = weights["max_abs_weight_diff"]
    exact &= record.check("final weights, bit-exact", w, 0.0, w == 0.0)
    record.summary(
        f"DeepSpeed ZeRO-2 fp32 {full['size']}, resumed at step {half} of {full['steps']}: "
        f"{'bit-exact' if exact else 'NOT bit-exact'} (max |delta loss| {loss_diff:.1e}, "
        f"{weights['tensors_differing']} of {weights['tensors']} weight tensors differ, max {w:.1e})"
    )
    record.assert_checks()
