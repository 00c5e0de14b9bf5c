"""The GPU proof's subprocesses: `python -m tests.gpu.workers {finetune,logits} SPEC.json`.

Each runs in its own process (support.GpuCheck.worker starts it): a finetune's crash stays in its test and its
peak memory is its own; the logits compare opens a world of one that must not outlive it. Each writes its
result as JSON to the spec's "result" path.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def finetune_worker(spec: dict[str, Any]) -> None:
    """One real finetune (trainer.train) in this process; writes losses, tokens/s and peak memory."""
    import resource

    import torch

    from dist_forget.config import load_config
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.trainer import train
    from dist_forget.schema import read_metrics

    cuda = torch.cuda.is_available()
    attention: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec["deterministic"]:  # the fp32 resume check on a GPU: no TF32, no atomics, math attention
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.MATH)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = load_config(RunConfig, None, spec["overrides"])
    t0 = time.perf_counter()
    with attention:
        train(cfg, "finetune", resume=spec["resume"])
    wall = time.perf_counter() - t0
    out = Path(cfg.out_dir)
    train_records = read_metrics(out / "metrics.jsonl", "train")
    report = json.loads((out / "report.json").read_text())
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    result = {
        "engine": cfg.engine,
        "device": "cuda" if cuda else "cpu",
        "wall_s": wall,
        "steps": train_records[-1]["step"] if train_records else 0,
        "losses": [r["loss"] for r in train_records],
        "tokens_per_s": report["tokens_per_s"],
        "peak_memory_bytes": peak,
        "peak_memory_kind": "cuda max_memory_allocated" if cuda else "host max RSS",
        "final_eval": read_metrics(out / "metrics.jsonl", "eval")[-1],
    }
    Path(spec["result"]).write_text(json.dumps(result))


def logits_worker(spec: dict[str, Any]) -> None:
    """Stock GPTModel (CUDA only), our TP Llama and HF's Llama on the same weights: max |delta logits|."""
    import torch

    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.models import hf
    from dist_forget.models import megatron as M

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = MegatronBackend(BackendConfig(ParallelConfig(tp=1), "fp32", 1.0, 0))
    backend.init_distributed()  # a world of one: megatron-core's groups over gloo (CPU) or NCCL (GPU)
    device = backend.device
    ref = hf.build(spec["size"], spec["vocab"], spec["seq"], seed=0).to(device).eval()
    full = ref.state_dict()
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"hf": lambda ids: ref(input_ids=ids).logits}
    local = M.MegatronLlama(ref.config, device=str(device)).eval()
    local.load_full(full)
    models["local"] = local.full_logits
    if spec["stock"]:
        stock = M.StockLlama(ref.config, dtype=torch.float32, device=str(device)).eval()
        stock.load_full(full)
        models["stock"] = stock
    ids = torch.randint(0, spec["vocab"], (2, spec["seq"]), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    result: dict[str, Any] = {"size": spec["size"], "seq": spec["seq"], "vocab": spec["vocab"], "batch": 2}
    for precision in ("fp32", "bf16"):
        ctx = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with torch.no_grad(), ctx:
            got = {name: fn(ids).float() for name, fn in models.items()}
        r = {"max_abs_logit": float(got["hf"].abs().max())}
        for a, b in (("local", "hf"), ("stock", "hf"), ("stock", "local")):
            if a in got:
                r[f"{a}_vs_{b}"] = float((got[a] - got[b]).abs().max())
        result[precision] = r
    backend.close()
    Path(spec["result"]).write_text(json.dumps(result))


WORKERS: dict[str, Callable[[dict[str, Any]], None]] = {"finetune": finetune_worker, "logits": logits_worker}

if __name__ == "__main__":
    kind, spec_file = sys.argv[1:3]
    WORKERS[kind](json.loads(Path(spec_file).read_text()))
