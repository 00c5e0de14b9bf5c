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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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
    args = ap.parse_args()
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
