"""The micro ladder's training throughput on this machine: what sizes a study can afford.

For each ladder size, tokens/s of the engine's training step (SingleBackend + AnchoredAdamW, vocab 1024,
seq 128, fp32) in the layouts a sweep can choose between on 2 cores, each measured in this run:
- baseline: 1 process, 1 thread, micro-batch 16 (what `max_parallel: 0, threads_per_run: 1` gives each run);
- 1 process with 2 threads (one run at a time, all cores to it);
- 2 processes with 1 thread each, run at once (two runs side by side), as their summed tokens/s;
- micro-batch 32 on 1 thread (fewer, larger steps).
Ratios are against the baseline. Pretraining to 20 tokens per total parameter then costs
20 * total / tokens_per_s seconds, printed per size.

    .venv/bin/python -m benchmarks.bench_ladder [--sizes cpu-0.015m cpu-0.03m cpu-0.1m cpu-0.3m --steps 20]

`--precision`: fp32 against bf16 autocast (what `train.precision` chooses between) instead, per size, in ONE
process on `--threads` threads: both models are built side by side and timed in alternating blocks of
`--steps` steps (order flipped each repetition), so a load that comes and goes on a shared machine falls on
both; the ratio is bf16 / fp32 tokens/s per repetition (by wall clock and by CPU time), median [range]. `smollm2` is
SmolLM2-135M from work/models/smollm2-135m (vocab 49,152, batch 8 x 128, the study's step).

    .venv/bin/python -m benchmarks.bench_ladder --precision --threads 2 --steps 3 --reps 3 \
        --sizes cpu-0.1m cpu-0.3m cpu-1m cpu-3m cpu-10m smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

from dist_forget.engine.backend import BackendConfig, ParallelConfig, make_backend
from dist_forget.models import hf
from dist_forget.models.ladder import shape_of

VOCAB, SEQ = 1024, 128


def step_rate(size: str, micro: int, steps: int, threads: int) -> float:
    """tokens/s of the median training step of a `size` model at micro-batch `micro` on `threads` threads."""
    from dist_forget.optim import AnchoredAdamW, param_groups

    torch.set_num_threads(threads)
    backend = make_backend("single", BackendConfig(ParallelConfig(), "fp32", 1.0, 0))
    backend.init_distributed()
    model = hf.build(size, VOCAB, SEQ, seed=0)
    ids = torch.randint(0, VOCAB, (micro, SEQ), generator=torch.Generator().manual_seed(0))
    backend.build(lambda: model, lambda m: AnchoredAdamW(param_groups(m, 0.0, 0.0), lr=1e-4), micro, 1)
    times = []
    for _ in range(steps + 2):  # the first two warm the allocator and the optimizer state
        t0 = time.perf_counter()
        backend.train_step([ids], 1e-4)
        times.append(time.perf_counter() - t0)
    backend.close()
    return micro * SEQ / sorted(times[2:])[len(times[2:]) // 2]


def _backend(precision: str, model: torch.nn.Module, micro: int) -> Any:
    from dist_forget.optim import AnchoredAdamW, param_groups

    backend = make_backend("single", BackendConfig(ParallelConfig(), precision, 1.0, 0))
    backend.init_distributed()
    backend.build(lambda: model, lambda m: AnchoredAdamW(param_groups(m, 0.0, 0.0), lr=1e-4), micro, 1)
    return backend


def precision_ratios(size: str, steps: int, reps: int, warmup: int) -> dict[str, Any]:
    """Per repetition, bf16/fp32 of tokens/s by wall clock and by the process's CPU time (both threads'):
    on a loaded machine the wall clock also counts the time the scheduler gave to others, CPU time does not
    (but counts OpenMP's spin-waiting), so the two bracket the ratio an idle machine would show."""
    if size == "smollm2":
        models = {p: hf.load_folder("work/models/smollm2-135m") for p in ("fp32", "bf16")}
        vocab, micro = models["fp32"].config.vocab_size, 8
    else:
        vocab, micro = VOCAB, 16
        models = {p: hf.build(size, VOCAB, SEQ, seed=0) for p in ("fp32", "bf16")}
    ids = torch.randint(0, vocab, (micro, SEQ), generator=torch.Generator().manual_seed(0))
    sig = hf.signature(models["fp32"])
    backends = {p: _backend(p, m, micro) for p, m in models.items()}
    for b in backends.values():  # warm the allocator, the optimizer state and oneDNN's kernels
        for _ in range(warmup):
            b.train_step([ids], 1e-4)
    wall: dict[str, list[float]] = {"fp32": [], "bf16": []}
    cpu: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for rep in range(reps):
        for p in ("fp32", "bf16") if rep % 2 == 0 else ("bf16", "fp32"):
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps):
                backends[p].train_step([ids], 1e-4)
            wall[p].append(steps * micro * SEQ / (time.perf_counter() - w0))
            cpu[p].append(steps * micro * SEQ / (time.process_time() - c0))
    for b in backends.values():
        b.close()

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    wall_r = [b / f for f, b in zip(wall["fp32"], wall["bf16"], strict=True)]
    cpu_r = [b / f for f, b in zip(cpu["fp32"], cpu["bf16"], strict=True)]
    return {
        "hidden": sig["hidden"],
        "n": sig["non_embedding_params"],
        "fp32": med(wall["fp32"]),
        "bf16": med(wall["bf16"]),
        "wall": (med(wall_r), min(wall_r), max(wall_r)),
        "cpu": (med(cpu_r), min(cpu_r), max(cpu_r)),
    }


def precision_main(sizes: list[str], steps: int, reps: int, threads: int, warmup: int) -> None:
    torch.set_num_threads(threads)
    load = os.getloadavg()
    print(
        f"fp32 vs bf16 autocast, engine single + AnchoredAdamW, seq {SEQ}, {threads} threads, {steps} steps "
        f"x {reps} alternating blocks per precision; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"{'size':<11} {'hidden':>6} {'N':>11} {'fp32 tok/s':>10} {'bf16 tok/s':>10} {'wall bf16/fp32':>20} "
        f"{'cpu-time bf16/fp32':>20} {'load':>5}"
    )
    for size in sizes:
        r = precision_ratios(size, steps, reps, warmup)
        w, c = r["wall"], r["cpu"]
        print(
            f"{size:<11} {r['hidden']:>6} {r['n']:>11,} {r['fp32']:>10,.0f} {r['bf16']:>10,.0f} "
            f"{w[0]:>6.2f} [{w[1]:.2f}-{w[2]:.2f}] {c[0]:>8.2f} [{c[1]:.2f}-{c[2]:.2f}] "
            f"{os.getloadavg()[0]:>5.2f}",
            flush=True,
        )


def _in_process(size: str, micro: int, steps: int, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.bench_ladder", "--worker", size, str(micro), str(steps), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": "cpu"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def measure(size: str, micro: int, steps: int, threads: int, copies: int = 1) -> float:
    """Summed tokens/s of `copies` processes run at once (each a fresh interpreter, like a sweep's runs)."""
    procs = [_in_process(size, micro, steps, threads) for _ in range(copies)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["tokens_per_s"] for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="+", default=["cpu-0.015m", "cpu-0.03m", "cpu-0.1m", "cpu-0.3m"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--worker", nargs=4, default=None)
    ap.add_argument("--precision", action="store_true", help="fp32 vs bf16 autocast, alternating, one process")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2, help="--precision: untimed steps per model first")
    args = ap.parse_args()
    if args.precision:
        precision_main(args.sizes, args.steps, args.reps, args.threads, args.warmup)
        return
    if args.worker:
        size, micro, steps, threads = args.worker
        print(json.dumps({"tokens_per_s": step_rate(size, int(micro), int(steps), int(threads))}))
        return
    print(f"vocab {VOCAB}, seq {SEQ}, fp32, engine single + AnchoredAdamW; median step; {os.cpu_count()} cores")
    print(f"{'size':<11} {'N':>8} {'total':>8} {'1x1t m16':>10} {'1x2t':>6} {'2x1t sum':>9} {'1t m32':>7} "
          f"{'pretrain 20 tok/param':>22}")
    for size in args.sizes:
        shape = shape_of(size)
        base = measure(size, 16, args.steps, 1)
        two_threads = measure(size, 16, args.steps, 2)
        side_by_side = measure(size, 16, args.steps, 1, copies=2)
        bigger = measure(size, 32, args.steps, 1)
        total = shape.total_params(VOCAB)
        best = max(base, two_threads, bigger)
        print(f"{size:<11} {shape.non_embedding_params():>8,} {total:>8,} {base:>10,.0f} {two_threads / base:>6.2f} "
              f"{side_by_side / base:>9.2f} {bigger / base:>7.2f} {20 * total / best:>20.0f} s", flush=True)


if __name__ == "__main__":
    main()
