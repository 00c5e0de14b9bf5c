"""Tensor parallel (engine=megatron, tp=2) vs DeepSpeed ZeRO-2 (engine=deepspeed, dp=2): training tokens/s.

    .venv/bin/python -m benchmarks.bench_megatron [--size cpu-1m] [--vocab 4096] [--seq 256] [--batch 8]
                                                  [--steps 5] [--rounds 3]

Both engines run on the same 2 gloo processes (1 thread each), the same ladder model (same init), the
same global batch of `batch` x `seq` tokens per optimizer step and AnchoredAdamW; only the split
differs: TP=2 gives each rank half of every matrix and all sequences, ZeRO-2 gives each rank the whole
model and half of the sequences (gradients and optimizer state sharded). The two are timed in turn,
`rounds` times, inside one launch, so a load change on this shared machine hits both; the best round of
each is reported (the least disturbed), with the ratio TP / ZeRO-2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    from dist_forget.optim import AnchoredAdamW, param_groups

    return AnchoredAdamW(param_groups(model, 0.0, 0.01), lr=1e-4, anchor_decay=0.01)


def worker(args: argparse.Namespace) -> None:
    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.deepspeed_backend import DeepSpeedBackend
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.models import hf

    def model() -> torch.nn.Module:
        return hf.build(args.size, args.vocab, args.seq, seed=0)

    ds = DeepSpeedBackend(BackendConfig(ParallelConfig(zero_stage=2), "fp32", 1.0, 0))
    ds.init_distributed()  # joins the gloo group; megatron reuses it below
    ds.build(model, _optimizer, args.batch // ds.dp_size, 1)
    tp = MegatronBackend(BackendConfig(ParallelConfig(tp=2), "fp32", 1.0, 0))
    tp.init_distributed()
    tp.build(model, _optimizer, args.batch // tp.dp_size, 1)

    gen = torch.Generator().manual_seed(0)
    global_batch = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)

    def my_batch(backend) -> list[torch.Tensor]:
        per = args.batch // backend.dp_size
        return [global_batch[backend.dp_rank * per:(backend.dp_rank + 1) * per]]

    def timed(backend) -> float:
        backend.train_step(my_batch(backend), 1e-4)  # warm-up: allocations, first-call paths
        backend.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            backend.train_step(my_batch(backend), 1e-4)
        backend.barrier()
        return args.steps * args.batch * args.seq / (time.perf_counter() - start)

    rates: dict[str, list[float]] = {"megatron_tp2": [], "deepspeed_zero2": []}
    for _ in range(args.rounds):
        rates["megatron_tp2"].append(timed(tp))
        rates["deepspeed_zero2"].append(timed(ds))
    if ds.rank == 0:
        print("RESULT " + json.dumps(rates), flush=True)
    tp.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="cpu-1m")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.bench_megatron", "--worker", *(argv if argv is not None else sys.argv[1:])]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        print(outs[0][-3000:], outs[1][-3000:], sep="\n---\n")
        return 1
    line = next(ln for ln in outs[0].splitlines() if ln.startswith("RESULT "))
    rates = json.loads(line[len("RESULT "):])
    best = {k: max(v) for k, v in rates.items()}
    ratio = best["megatron_tp2"] / best["deepspeed_zero2"]
    print(f"model {args.size}, vocab {args.vocab}, {args.batch} x {args.seq} tokens per step, 2 ranks x 1 thread")
    for name, values in rates.items():
        print(f"  {name:16s} best {best[name]:9,.0f} tokens/s   rounds: "
              + ", ".join(f"{v:,.0f}" for v in values))
    print(f"  ratio TP=2 / ZeRO-2 = {ratio:.2f}")
    print(json.dumps({"size": args.size, "tokens_per_s": best, "ratio_tp2_over_zero2": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
