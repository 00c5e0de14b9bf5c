"""GPU-only: megatron-core's own save and load of a stock GPTModel with our torch_dist folders.

Skipped — visibly, with the reason, under `pytest -ra` — where no CUDA device exists. Where one does, one
rank per GPU (at most 2, TP = that number) on NCCL:

1. `convert hf-to-megatron --format dist` output loads into megatron-core's stock GPTModel through
   `dist_checkpointing.load` (`megatron_dist.load_gpt`): every rank's tensors equal the stock mapping of
   the HF weights exactly;
2. megatron-core's own `dist_checkpointing.save` (its CUDA writer; `megatron_dist.save_gpt`) of that model
   converts back (`megatron-to-hf`) to the same HF weights bit for bit.
The CPU run of the same checks at TP = 2 on gloo is tests/distributed/test_megatron_dist.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

VOCAB, SEQ = 256, 64


def rank_main(folder: Path, out: Path) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed
    from transformers import LlamaConfig

    from dist_forget.checkpoint import megatron_dist
    from dist_forget.checkpoint.hf import read_hf_config
    from dist_forget.models import megatron as M

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl")
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    model_parallel_cuda_manual_seed(0)
    cfg = read_hf_config(folder / "hf")
    gpt = M.build_stock_gpt(LlamaConfig.from_dict(cfg)).cuda()
    with torch.no_grad():
        for p in gpt.parameters():
            p.zero_()
    megatron_dist.load_gpt(gpt, folder / "dist")
    torch.save(
        {k: v.cpu() for k, v in gpt.state_dict().items() if torch.is_tensor(v)}, out / f"rank{rank}.pt"
    )
    megatron_dist.save_gpt(gpt, out / "saved", cfg)
    dist.barrier()
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(0)


from tests.distributed.conftest import run_ranks  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: megatron-core's dist_checkpointing.save writes through torch.cuda",
    ),
]


def test_stock_gptmodel_loads_and_saves_torch_dist_folders(tmp_path: Path) -> None:
    from dist_forget.convert import megatron_hf as C
    from dist_forget.models import hf
    from dist_forget.models import megatron as M

    world = min(2, torch.cuda.device_count())
    size = "cpu-0.3m" if world == 1 else "cpu-1m"  # cpu-1m's heads, hidden, ffn all divide by 2
    model = hf.build(size, VOCAB, SEQ, seed=0)
    hf.save_folder(model.state_dict(), model.config, tmp_path / "hf")
    C.hf_to_megatron(tmp_path / "hf", tmp_path / "dist", format="dist")
    out = tmp_path / "out"
    out.mkdir()
    run_ranks(__file__, [str(tmp_path), str(out)], world=world, env={"DS_ACCELERATOR": "cuda"})

    full, cfg = C.read_hf_weights(tmp_path / "hf"), C.read_hf_config(tmp_path / "hf")
    for rank in range(world):
        loaded = torch.load(out / f"rank{rank}.pt", weights_only=True)
        want = M.hf_to_stock_shard(full, cfg, world, rank)
        assert all(torch.equal(loaded[k], want[k]) for k in want), rank
    assert json.loads((out / "saved" / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    back = C.megatron_to_hf(out / "saved", tmp_path / "back")
    got = C.read_hf_weights(back)
    assert got.keys() == full.keys() and all(torch.equal(got[k], full[k]) for k in full)
