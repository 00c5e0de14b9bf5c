"""`train.precision: auto` made concrete: fp32 or bf16 autocast, and the reason, for this machine and model.

On a GPU auto is bf16. On a CPU, bf16 autocast pays only where the CPU multiplies bf16 natively (AVX-512 BF16
or AMX; elsewhere oneDNN emulates it, slower than fp32) AND the matrices are wide enough that the matmuls,
not the per-op casts and the fp32 optimizer, dominate the step. Measured (benchmarks/RESULTS.md, "fp32 vs
bf16 autocast"; training step, 2 threads, fp32 and bf16 alternating in one process), bf16/fp32 tokens/s by
hidden width on an AVX-512 BF16 CPU without AMX, idle: 0.83 at 48, 0.81 at 80, 1.10 at 128, 1.26 at 192,
1.29 at 288, 1.68 at 576 (SmolLM2-135M: 280 against 166 tokens/s); an AMX CPU gave 0.95 at 128, 1.14 at
192, 1.86 at 288. Weights, gradients and optimizer state stay fp32 either way (autocast casts per op), so
checkpoints and resume are the same in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Smallest hidden width at which auto picks bf16 on a CPU with native bf16 matmul: between 128 (1.10x on
# AVX-512 BF16, 0.95x on AMX: no clear gain) and 192 (1.14-1.26x), and above 128 so that the micro and demo
# ladders (hidden <= 128) stay fp32 on every CPU and their committed figures are reproduced bit for bit.
BF16_MIN_HIDDEN_CPU = 160
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of a native bf16 dot product
# engines whose bf16 is autocast over fp32 weights (what was measured); DeepSpeed's bf16 switches to its
# bf16 optimizer and another checkpoint layout, so auto leaves it in fp32 on a CPU
AUTOCAST_ENGINES = ("single", "megatron")


@dataclass(frozen=True)
class Choice:
    precision: Literal["fp32", "bf16"]
    reason: str


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent, e.g. macOS)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def choose(requested: str, cuda: bool, engine: str, flags: Iterable[str], hidden: int | None) -> Choice:
    """The precision a run trains and evaluates in; `hidden` is the model's width (None: unknown)."""
    if requested in ("fp32", "bf16"):
        return Choice(requested, f"train.precision = {requested}")  # type: ignore[arg-type]
    if cuda:
        return Choice("bf16", "auto: GPU")
    native = sorted(set(flags) & set(NATIVE_BF16_FLAGS))
    if not native:
        return Choice("fp32", "auto: this CPU has no native bf16 matmul (no avx512_bf16 / amx_bf16 flag)")
    if engine not in AUTOCAST_ENGINES:
        return Choice("fp32", f"auto: engine {engine} on CPU stays fp32 (bf16 measured for autocast engines)")
    if hidden is None or hidden < BF16_MIN_HIDDEN_CPU:
        return Choice(
            "fp32",
            f"auto: CPU has {'/'.join(native)} but hidden {hidden} < {BF16_MIN_HIDDEN_CPU}, "
            "below which bf16 autocast measured no clear gain over fp32",
        )
    return Choice("bf16", f"auto: CPU has {'/'.join(native)} and hidden {hidden} >= {BF16_MIN_HIDDEN_CPU}")
