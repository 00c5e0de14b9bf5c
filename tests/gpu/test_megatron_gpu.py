"""GPU-only checks of the Megatron path (NCCL, and megatron-core's stock GPTModel).

Skipped — visibly, with the reason, under `pytest -ra` — where no CUDA device exists. Where one does:

    .venv/bin/pytest tests/gpu -q -ra          # or run this file directly on each rank (see rank_main)

1. MegatronLlama on NCCL (tp = number of GPUs, at most 2): gathered logits equal the HF model's (fp32,
   TF32 off, atol 1e-4), and a bf16-autocast training step of engine=megatron runs and lowers the loss.
2. The stock `megatron.core.models.gpt.GPTModel` (local spec, RMSNorm, SwiGLU, RoPE, tied embeddings)
   loaded through `hf_to_stock_shard`: its logits equal the HF model's (atol 1e-4).
3. `dist-forget finetune engine=megatron parallel.impl=stock` under torchrun on NCCL (tp = number of GPUs,
   at most 2): in fp32 its per-step losses equal parallel.impl=local's (atol 1e-4); in bf16 it trains
   (finite losses within 0.05 nats/token of fp32); its step-3 checkpoint resumes to the same losses (1e-4:
   CUDA's embedding backward sums with atomics, so GPU runs are not bit-reproducible).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

VOCAB, SEQ, SIZE, ATOL = 256, 64, "cpu-0.3m", 1e-4  # cpu-0.3m: 5 heads -> tp=1; see _size_for


def _size_for(tp: int) -> str:
    return SIZE if tp == 1 else "cpu-1m"  # cpu-1m: 4 heads, hidden 128, ffn 352 all divide by 2


def rank_main(out: Path) -> None:
    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.models import hf
    from dist_forget.models import megatron as M

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import os

    tp = int(os.environ["WORLD_SIZE"])
    size = _size_for(tp)
    backend = MegatronBackend(BackendConfig(ParallelConfig(tp=tp), "bf16", 1.0, 0))
    backend.init_distributed()
    assert backend.device.type == "cuda"
    ref = hf.build(size, VOCAB, SEQ, seed=0).cuda()
    ids = torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(0)).cuda()
    result: dict[str, float] = {}
    with torch.no_grad():
        want = ref(input_ids=ids).logits.float()

        model = M.MegatronLlama(ref.config, device="cuda")
        model.load_full(ref.state_dict())
        result["local_max_abs_diff"] = float((model.full_logits(ids) - want).abs().max())

        if tp == 1:
            M.require_cuda_for_stock()
            stock = M.build_stock_gpt(ref.config, dtype=torch.float32)
            shard = M.hf_to_stock_shard({k: v.cpu() for k, v in ref.state_dict().items()}, ref.config, tp, 0)
            missing, unexpected = stock.load_state_dict(shard, strict=False)
            assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
            stock = stock.cuda().eval()
            pos = torch.arange(SEQ, device="cuda").unsqueeze(0).expand_as(ids)
            got = stock(input_ids=ids, position_ids=pos, attention_mask=None)
            result["stock_max_abs_diff"] = float((got.float() - want).abs().max())

    backend.build(lambda: hf.build(size, VOCAB, SEQ, seed=0), _optimizer, 4, 1)
    batch = [torch.randint(0, VOCAB, (4, SEQ), generator=torch.Generator().manual_seed(1))]
    losses = [backend.train_step(batch, 3e-3).loss for _ in range(5)]
    result["bf16_first_loss"], result["bf16_last_loss"] = losses[0], losses[-1]
    if backend.rank == 0:
        (out / "gpu.json").write_text(json.dumps(result))
    backend.close()


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    from dist_forget.optim import AnchoredAdamW, param_groups

    return AnchoredAdamW(param_groups(model, 0.0, 0.1), lr=3e-3, anchor_decay=0.1)


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
    sys.exit(0)


from dist_forget.net import free_port  # noqa: E402
from tests.distributed.conftest import run_ranks  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: NCCL and megatron-core's stock GPTModel (its attention allocates on the GPU)",
    ),
]


def test_megatron_on_nccl_and_stock_gptmodel_match_hf(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())
    run_ranks(__file__, [str(tmp_path)], world=world, env={"DS_ACCELERATOR": "cuda"})
    result = json.loads((tmp_path / "gpu.json").read_text())
    print(result)
    assert result["local_max_abs_diff"] < ATOL
    if world == 1:
        assert result["stock_max_abs_diff"] < ATOL
    assert result["bf16_last_loss"] < result["bf16_first_loss"]


def _finetune(tiny_data, base: Path, out: Path, world: int, *extra: str, resume: str | None = None) -> str:
    import os
    import subprocess

    from tests.distributed.test_megatron_finetune import CONFIG, REPO, _overrides

    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        str(world),
        "--master_port",
        str(free_port()),
        "-m",
        "dist_forget.cli",
        "finetune",
        "--config",
        str(CONFIG),
        *(["--resume", resume] if resume else []),
        *_overrides(
            tiny_data,
            base,
            out,
            "engine=megatron",
            f"parallel.tp={world}",
            "checkpoint.every=3",
            "checkpoint.keep=4",
            *extra,
        ),
    ]
    # keep an inherited PYTHONPATH: on a GPU machine megatron-core may be there rather than installed
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
    }
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def test_stock_gptmodel_finetune_on_nccl_fp32_bf16_and_resume(tiny_data, tmp_path: Path) -> None:
    import math

    from dist_forget.models import hf
    from tests.distributed.test_megatron_finetune import _losses

    world = min(2, torch.cuda.device_count())
    base = tmp_path / "base"
    hf.build("cpu-0.03m", tiny_data.vocab_size, tiny_data.seq_len, seed=0).save_pretrained(base)
    losses, stdout = {}, {}
    for name, extra in (
        ("local-fp32", ("parallel.impl=local", "train.precision=fp32")),
        ("stock-fp32", ("parallel.impl=stock", "train.precision=fp32")),
        ("stock-bf16", ("parallel.impl=stock", "train.precision=bf16")),
    ):
        stdout[name] = _finetune(tiny_data, base, tmp_path / name, world, *extra)
        losses[name] = _losses(tmp_path / name)
    print({k: list(v.values()) for k, v in losses.items()})
    assert f"megatron x{world} (bf16)" in stdout["stock-bf16"]
    local, stock, bf16 = losses["local-fp32"], losses["stock-fp32"], losses["stock-bf16"]
    assert local.keys() == stock.keys() == bf16.keys() == set(range(1, 7))
    assert max(abs(stock[k] - local[k]) for k in stock) < 1e-4
    assert all(math.isfinite(v) for v in bf16.values())
    assert max(abs(bf16[k] - stock[k]) for k in stock) < 0.05
    assert (tmp_path / "stock-bf16" / "summary.json").is_file()

    ckpt = tmp_path / "stock-fp32" / "checkpoints" / "step-00000003"
    _finetune(
        tiny_data,
        base,
        tmp_path / "resumed",
        world,
        "parallel.impl=stock",
        "train.precision=fp32",
        resume=str(ckpt),
    )
    resumed = _losses(tmp_path / "resumed")
    assert resumed.keys() == {4, 5, 6}
    assert max(abs(resumed[k] - stock[k]) for k in resumed) < 1e-4
