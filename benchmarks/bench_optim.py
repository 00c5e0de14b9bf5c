"""AnchoredAdamW: step time against torch.optim.AdamW(foreach=True), and anchor memory per rank.

    .venv/bin/python -m benchmarks.bench_optim [--size cpu-10m --vocab 32000 --steps 20 --no-zero]

1. Step time on a ~19M-parameter Llama (cpu-10m, vocab 32000): both optimizers get the same gradients;
   steps alternate A/B so machine load hits both alike; the ratio of medians is the claim (target ≤ 1.15).
2. Anchor bytes per rank, counted from the optimizer's state tensors: world 1 (plain PyTorch) and
   world 2 (DeepSpeed ZeRO 1/2/3 on 2 gloo ranks); the target is exactly 1/world of 4·numel (plus
   DeepSpeed's alignment padding, reported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _model(size: str, vocab: int, device: str = "cpu") -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    from dist_forget.models.ladder import hf_config

    torch.manual_seed(0)
    with torch.device(device):  # built in place: initializing a large model on the CPU takes seconds
        return LlamaForCausalLM(hf_config(size, vocab_size=vocab, max_seq_len=256))


def bench_step(size: str, vocab: int, steps: int, device: str = "cpu", baseline: str = "foreach"
               ) -> dict[str, Any]:
    """Median step time of AnchoredAdamW and of torch AdamW (`baseline`: its "foreach" or "fused"
    implementation) on identical models and gradients on `device`, and which code path each step takes."""
    from dist_forget.optim import AnchoredAdamW, param_groups

    models = {name: _model(size, vocab, device) for name in ("adamw", "anchored")}
    numel = sum(p.numel() for p in models["adamw"].parameters())
    gen = torch.Generator().manual_seed(0)
    for m in models.values():
        for p in m.parameters():
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device)
    opts = {
        # Baseline: the same two groups, plain decoupled weight decay.
        "adamw": torch.optim.AdamW(param_groups(models["adamw"], 0.1, 0.0), lr=1e-4,
                                   **{baseline: True}),
        "anchored": AnchoredAdamW(param_groups(models["anchored"], 0.1, 0.1), lr=1e-4),
    }
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in opts}
    for step in range(steps + 2):
        for name, opt in opts.items():
            sync()
            t0 = time.perf_counter()
            opt.step()
            sync()
            if step >= 2:  # the first steps allocate state (and capture the anchor)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"params": numel, "device": str(device), "baseline": baseline, "adamw_step_s": med["adamw"],
            "anchored_step_s": med["anchored"], "ratio": med["anchored"] / med["adamw"],
            "adamw_path": step_path(opts["adamw"]), "anchored_path": step_path(opts["anchored"])}


def step_path(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Which implementation one `opt.step()` runs, read off the profiler: `fused` (aten::_fused_adam*),
    `foreach` (aten::_foreach_* multi-tensor ops) or `per-tensor`; on CUDA also how many kernels it
    launches and how many of them are multi-tensor-apply kernels (one launch for many tensors)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = any(p.is_cuda for g in opt.param_groups for p in g["params"])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    try:
        with profile(activities=activities) as prof:
            opt.step()
            if cuda:
                torch.cuda.synchronize()
        events = list(prof.events())
    except Exception as exc:  # a profiler that cannot start (no CUPTI) must not cost the timing figures
        return {"path": "unknown", "foreach_ops": 0, "error": f"{type(exc).__name__}: {exc}"[:300]}
    kernels = [e.name for e in events if e.device_type == DeviceType.CUDA]
    ops = [e.name for e in events if e.device_type == DeviceType.CPU]
    path = ("fused" if any(n.startswith("aten::_fused_adam") for n in ops)
            else "foreach" if any(n.startswith("aten::_foreach_") for n in ops) else "per-tensor")
    out: dict[str, Any] = {"path": path, "foreach_ops": sum(n.startswith("aten::_foreach_") for n in ops)}
    if cuda:
        out["cuda_kernels"] = len(kernels)
        out["multi_tensor_kernels"] = sum("multi_tensor_apply" in n for n in kernels)
    return out


def anchor_bytes_world1(size: str, vocab: int) -> dict[str, int]:
    from dist_forget.optim import AnchoredAdamW, param_groups

    model = _model(size, vocab)
    opt = AnchoredAdamW(param_groups(model, 0.1, 0.1), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    numel = sum(p.numel() for p in model.parameters())
    return {"numel": numel, "anchor_bytes": sum(s["anchor"].numel() * 4 for s in opt.state.values())}


def _rank_worker(size: str, vocab: int, stage: int, out: Path) -> None:
    """One rank: ZeRO-`stage` engine with AnchoredAdamW, one step, count this rank's anchor bytes."""
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    from dist_forget.optim import AnchoredAdamW, param_groups

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    model = _model(size, vocab)
    numel = sum(p.numel() for p in model.parameters())
    opt = AnchoredAdamW(param_groups(model, 0.1, 0.1), lr=1e-4)
    config = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1, "zero_allow_untested_optimizer": True,
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    tokens = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(dist.get_rank()))
    engine.backward(engine(input_ids=tokens, labels=tokens).loss)
    engine.step()
    state = engine.optimizer.optimizer.state
    result = {"rank": dist.get_rank(), "numel": numel,
              "anchor_bytes": sum(s["anchor"].numel() * s["anchor"].element_size() for s in state.values())}
    (out / f"stage{stage}-rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def anchor_bytes_world2(size: str, vocab: int, stage: int) -> list[dict[str, int]]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.bench_optim", "--rank-worker", str(stage),
                                   "--size", size, "--vocab", str(vocab), "--out", tmp],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for r in range(2)]
        for p in procs:
            _, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"rank worker failed:\n{err[-2000:]}")
        return [json.loads((Path(tmp) / f"stage{stage}-rank{r}.json").read_text()) for r in range(2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu-10m")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-zero", action="store_true", help="skip the 2-rank DeepSpeed memory runs")
    ap.add_argument("--rank-worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_worker:
        _rank_worker(args.size, args.vocab, args.rank_worker, args.out)
        return
    torch.set_num_threads(args.threads)
    step = bench_step(args.size, args.vocab, args.steps)
    print(f"optimizer step, {step['params'] / 1e6:.1f}M params, {args.threads} thread(s), median of "
          f"{args.steps}: AdamW(foreach) {step['adamw_step_s'] * 1e3:.1f} ms, AnchoredAdamW "
          f"{step['anchored_step_s'] * 1e3:.1f} ms -> ratio {step['ratio']:.3f} (target <= 1.15)")
    w1 = anchor_bytes_world1(args.size, args.vocab)
    print(f"anchor per rank, world 1: {w1['anchor_bytes']:,} B = {w1['anchor_bytes'] / (4 * w1['numel']):.4f} "
          "of 4*numel")
    summary = {"step": step, "world1": w1}
    if not args.no_zero:
        for stage in (1, 2, 3):
            ranks = anchor_bytes_world2(args.size, args.vocab, stage)
            numel = ranks[0]["numel"]
            fractions = [r["anchor_bytes"] / (4 * numel) for r in ranks]
            pad = sum(r["anchor_bytes"] for r in ranks) // 4 - numel
            print(f"anchor per rank, world 2, ZeRO-{stage}: {[r['anchor_bytes'] for r in ranks]} B = "
                  f"{[round(f, 6) for f in fractions]} of 4*numel (padding {pad} elements in total)")
            summary[f"world2_zero{stage}"] = {"anchor_bytes": [r["anchor_bytes"] for r in ranks],
                                              "fraction": fractions, "padding_elements": pad}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
