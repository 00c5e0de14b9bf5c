"""Engine throughput: tokens/s and MFU of a finetune step on a CPU-ladder model.

Baselines measured in the same run: a hand-written PyTorch loop (torch AdamW, HF loss) on the same
model and batch, and the machine's fp32 matmul peak (for MFU). Compared: engine `single`
(SingleBackend + AnchoredAdamW, what `dist-forget finetune` runs) and 2-rank DeepSpeed ZeRO-1/2/3 (1
thread per rank, same global batch).

    .venv/bin/python -m benchmarks.bench_engine [--size cpu-30m --seq 256 --batch 8 --steps 6]
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

from dist_forget.engine.backend import BackendConfig, ParallelConfig, make_backend
from dist_forget.engine.flops import flops_per_token, measure_peak
from dist_forget.models import hf

VOCAB = 8192


def _model_and_data(size: str, seq: int, batch: int):
    model = hf.build(size, VOCAB, seq, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (batch, seq), generator=g)
    return model, ids


def _fpt(model, seq: int) -> float:
    c = model.config
    return flops_per_token(hf.non_embedding_params(model), c.vocab_size, c.hidden_size, c.num_hidden_layers, seq)


def plain_loop(size: str, seq: int, batch: int, steps: int) -> float:
    """tokens/s of the textbook loop: forward with labels, backward, clip, AdamW step."""
    model, ids = _model_and_data(size, seq, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return batch * seq / min(times[1:])


def engine_step(engine: str, zero: int, size: str, seq: int, batch: int, steps: int) -> float:
    """tokens/s (global) of Backend.train_step with the engine's optimizer (AnchoredAdamW)."""
    from dist_forget.optim import AnchoredAdamW, param_groups

    backend = make_backend(engine, BackendConfig(ParallelConfig(zero_stage=zero), "fp32", 1.0, 0))
    backend.init_distributed()
    model, ids = _model_and_data(size, seq, batch)
    micro = batch // backend.world_size
    mine = ids[backend.rank * micro:(backend.rank + 1) * micro]
    backend.build(lambda: model, lambda m: AnchoredAdamW(param_groups(m, 0.0, 0.0), lr=1e-4), micro, 1)
    times = []
    for _ in range(steps + 1):
        backend.barrier()
        t0 = time.perf_counter()
        backend.train_step([mine], 1e-4)
        times.append(time.perf_counter() - t0)
    (slowest,) = backend.all_reduce_sum([min(times[1:])])  # sum/world ~ mean of per-rank best
    backend.close()
    return batch * seq / (slowest / backend.world_size)


def _two_ranks(zero: int, args: argparse.Namespace) -> float:
    out = Path("/tmp") / f"bench_engine_zero{zero}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", "29611",
           "-m", "benchmarks.bench_engine", "--worker", str(zero), "--worker-out", str(out),
           "--size", args.size, "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu-30m")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--worker", type=int, default=-1)
    ap.add_argument("--worker-out", default="")
    args = ap.parse_args()
    if args.worker >= 0:
        tps = engine_step("deepspeed", args.worker, args.size, args.seq, args.batch, args.steps)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.worker_out).write_text(json.dumps({"tokens_per_s": tps}))
        return

    model, _ = _model_and_data(args.size, args.seq, args.batch)
    fpt = _fpt(model, args.seq)
    peak = measure_peak(torch.device("cpu"))
    rows = {"plain loop": plain_loop(args.size, args.seq, args.batch, args.steps),
            "engine single": engine_step("single", 0, args.size, args.seq, args.batch, args.steps)}
    for zero in (1, 2, 3):
        rows[f"deepspeed 2 ranks ZeRO-{zero}"] = _two_ranks(zero, args)
    print(f"{args.size} (N = {hf.non_embedding_params(model):,} non-embedding), seq {args.seq}, batch {args.batch}, "
          f"fp32, {torch.get_num_threads()} threads; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<28} {'tokens/s':>10} {'MFU':>7} {'vs plain':>9} {'vs single':>10}")
    for name, tps in rows.items():
        print(f"{name:<28} {tps:>10,.0f} {fpt * tps / peak:>7.1%} {tps / rows['plain loop']:>9.2f} "
              f"{tps / rows['engine single']:>10.2f}")


if __name__ == "__main__":
    main()
