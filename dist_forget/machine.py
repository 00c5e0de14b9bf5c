"""What a run's numbers depend on besides its config: the CPU and the math-library code paths.

A run here is bit-for-bit repeatable on one machine (same CPU model, same thread count), not across
machines. Measured on an AMD EPYC (Zen 4, AVX-512 BF16, no AMX) with the demo's first pretraining
(cpu-0.015m, 451 steps, 1 thread; `benchmarks/bench_reproducibility.py`): ATen's vectorised kernels
(`ATEN_CPU_CAPABILITY=avx2` against the AVX-512 this CPU selects) end at English loss 4.51660 instead of
4.48660, and MKL's SSE2 branch (`MKL_CBWR=COMPATIBLE`) at 4.49088; `MKL_CBWR=AVX2` leaves the bits as they
are (MKL runs its non-Intel branch on AMD either way). An Intel CPU selects other MKL kernels (AVX-512,
AMX), so the same command gives other bits there: each report.json records this fingerprint so a table
of runs says which machine it holds.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from typing import Any

# Environment variables that select math-library code paths (and so change the bits of a run).
_NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def fingerprint() -> dict[str, Any]:
    """The CPU, the kernels torch dispatches to and the settings that pick them (JSON-ready)."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env": {k: os.environ[k] for k in _NUMERIC_ENV if k in os.environ},
    }


def describe(fp: dict[str, Any]) -> str:
    """One line for people: 'AMD EPYC, AVX512 kernels, 1 thread, torch 2.13.0+cpu'."""
    threads = fp.get("threads")
    where = fp.get("cuda") or fp.get("cpu_model", "?")
    return (
        f"{where}, {fp.get('aten_cpu_capability', '?')} kernels, {threads} thread{'s' if threads != 1 else ''}, "
        f"torch {fp.get('torch', '?')}"
    )
