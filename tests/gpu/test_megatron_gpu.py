"""GPU-only checks of the Megatron path (NCCL, and megatron-core's stock GPTModel).

Skipped — visibly, with the reason, under `pytest -ra` — where no CUDA device exists. Where one does:

    .venv/bin/pytest tests/gpu -q -ra          # or run this file directly on each rank (see rank_main)

1. MegatronLlama on NCCL (tp = number of GPUs, at most 2): gathered logits equal the HF model's (fp32,
   TF32 off, atol 1e-4), and a bf16-autocast training step of engine=megatron runs and lowers the loss.
2. The stock `megatron.core.models.gpt.GPTModel` (local spec, RMSNorm, SwiGLU, RoPE, tied embeddings)
   loaded through `hf_to_stock_shard`: its logits equal the HF model's (atol 1e-4).
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


from tests.distributed.conftest import run_ranks  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs CUDA: NCCL and megatron-core's stock GPTModel (its attention allocates on the GPU)")]


def test_megatron_on_nccl_and_stock_gptmodel_match_hf(tmp_path: Path) -> None:
    world = min(2, torch.cuda.device_count())
    run_ranks(__file__, [str(tmp_path)], world=world, env={"DS_ACCELERATOR": "cuda"})
    result = json.loads((tmp_path / "gpu.json").read_text())
    print(result)
    assert result["local_max_abs_diff"] < ATOL
    if world == 1:
        assert result["stock_max_abs_diff"] < ATOL
    assert result["bf16_last_loss"] < result["bf16_first_loss"]
