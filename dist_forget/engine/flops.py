"""Model FLOPs per token and the machine's measured peak, for MFU.

MFU = achieved model FLOPs ÷ peak FLOPs over the same clock. The trainer's peak is not a datasheet number:
it is a large matmul timed on this process in the run's precision (bf16 on a GPU and for a CPU run in bf16
autocast, fp32 otherwise), so the ratio says how close the loop gets to what this machine can really do in
that precision: a CPU with native bf16 matmul is several times faster in bf16 than in fp32, and an fp32 peak
under a bf16 run would read as MFU near or above 100 %.

The clock differs by device:
- GPU: wall clock. Achieved = model FLOPs of the logging window ÷ its wall seconds; peak = the matmul's
  FLOP/s (best of the repeats).
- CPU: this process's CPU seconds (`time.process_time`, the sum over all its threads). Achieved = model
  FLOPs of the logging window ÷ the process CPU seconds its steps took; peak = the matmul's FLOP per CPU-second
  (best of the repeats). Cores are often shared (a cluster node, a study beside the run): by the wall clock,
  a neighbour that holds the cores while the peak is timed makes every later step look efficient, and one
  that arrives after makes them look slow. Per CPU-second, a neighbour changes neither side. On idle cores
  with every thread busy the two definitions agree; per CPU-second is lower where threads idle or spin (the
  loop's own waste). Tokens/s and the ETA stay on the wall clock: they are what the user waits on.
- A peak the user gives (`train.peak_flops`) is wall-clock FLOP/s of the whole job (a datasheet figure), on
  either device: MFU is then the wall-clock ratio.

`datasheet_peak` is the other convention (the vendor's dense bf16 figure, what published MFU numbers divide
by), used by the GPU check (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import time

import torch

# Dense (no sparsity) bf16 tensor-core FLOP/s from the vendors' datasheets, matched in order against
# torch.cuda.get_device_name() (first substring that occurs wins: "H100 PCIe" before "H100").
BF16_DENSE_PEAK: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM (nvidia-smi: "NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
)


def flops_per_token(non_embedding: int, vocab: int, hidden: int, layers: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward): 6 per matmul weight (the output head
    included) plus attention scores and values, 12·L·h·T (PaLM appendix B)."""
    return 6.0 * (non_embedding + vocab * hidden) + 12.0 * layers * hidden * seq_len


def measure_peak(
    device: torch.device, precision: str = "fp32", size: int = 1024, repeats: int = 10, cpu_time: bool = False
) -> float:
    """FLOP/s of a square matmul on `device` with this process's threads, in bf16 on a GPU or when the run's
    `precision` is bf16, else fp32; with `cpu_time` (a CPU device), FLOP per CPU-second of this process
    (`time.process_time`: all its threads) instead of per wall second."""
    dtype = torch.bfloat16 if device.type == "cuda" or precision == "bf16" else torch.float32
    if device.type == "cuda":
        size = 8192
    clock = time.process_time if cpu_time and device.type == "cpu" else time.perf_counter
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return 2.0 * size**3 / best


def datasheet_peak(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU named `device_name` (BF16_DENSE_PEAK), None if not listed."""
    for key, peak in BF16_DENSE_PEAK:
        if key.lower() in device_name.lower():
            return peak
    return None
