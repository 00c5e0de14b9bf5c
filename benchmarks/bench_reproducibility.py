"""Which math-library code paths change a run's bits, and what pinning them would cost.

Runs the demo's first pretraining (cpu-0.015m on the English shards, 1 thread; shortened with --steps)
once per setting, each a fresh process, in alternating rounds so a loaded machine slows every setting
alike, and prints per setting the final English validation loss (all 17 digits: equal means the same
bits), its difference from the default, and the training tokens/s as a ratio against the default
measured in the same rounds. The settings are the environment variables that pick kernels:
ATEN_CPU_CAPABILITY (torch's own vectorised kernels), MKL_CBWR (MKL's code branch) and
ONEDNN_MAX_CPU_ISA. A setting that leaves the bits as they are on this machine and selects the same
kernels on every CPU would make runs repeat across machines; one that changes them would also change
every committed figure.

    .venv/bin/python -m benchmarks.bench_reproducibility [--steps 451 --rounds 2 --data work/data/shards/english]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "MKL_CBWR=AVX2": {"MKL_CBWR": "AVX2"},
    "MKL_CBWR=AVX2,STRICT": {"MKL_CBWR": "AVX2,STRICT"},
    "MKL_CBWR=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def run_once(env_extra: dict[str, str], steps: int, data: str, out: Path) -> tuple[float, float]:
    """(final pt_loss, median training tokens/s) of one short pretraining in a fresh process."""
    cmd = [sys.executable, "-m", "dist_forget.cli", "pretrain", "--config", "configs/pretrain/tiny.yaml",
           "optim.lr=5.0e-3", "schedule.warmup=50", "train.eval_every=0", "train.eval_sequences=128",
           "checkpoint.every=0", "model.size=cpu-0.015m", f"schedule.steps={steps}", "train.seed=0",
           "tracking.enabled=false", f"data.target={data}", f"out_dir={out}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **env_extra}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    loss = json.loads((out / "summary.json").read_text())["pt_loss"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if r.get("kind") == "train" and r.get("tokens_per_s")]
    return float(loss), statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=451)  # the demo's cpu-0.015m pretraining
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", default="work/data/shards/english")
    args = ap.parse_args()
    losses: dict[str, set[float]] = {name: set() for name in SETTINGS}
    ratios: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            base_rate = None
            for i, (name, extra) in enumerate(SETTINGS.items()):
                loss, rate = run_once(extra, args.steps, args.data, Path(tmp) / f"r{r}-{i}")
                losses[name].add(loss)
                base_rate = rate if name == "default" else base_rate
                ratios[name].append(rate / base_rate if base_rate else float("nan"))
    (base,) = losses["default"] or {float("nan")}
    print(f"{'setting':<26} {'final pt_loss':>20} {'vs default':>12} {'tokens/s ratio':>15}")
    for name in SETTINGS:
        seen = sorted(losses[name])
        loss = seen[0] if len(seen) == 1 else float("nan")  # nan: not repeatable within this machine
        print(f"{name:<26} {loss:>20.17g} {loss - base:>+12.2e} {statistics.median(ratios[name]):>15.3f}")


if __name__ == "__main__":
    main()
