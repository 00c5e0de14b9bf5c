"""One rank of tests/distributed/test_megatron_dist.py: megatron-core's own API on gloo/CPU, TP = world size.

1. `dist_checkpointing.load_plain_tensors(--ours)` -> OUT/plain.pt (rank 0 writes it);
2. a stock GPTModel at TP = world loads --ours through `megatron_dist.load_gpt` (megatron-core's
   `dist_checkpointing.load`, which reshards) -> OUT/loaded_rank{r}.pt (its state dict);
3. a stock GPTModel holding --hf-b's weights is saved the way Megatron-LM saves a checkpoint: its
   `dist_checkpointing.save` of {"model": sharded_state_dict(), "args", "iteration", "checkpoint_version",
   "rng_state" (a ShardedObject)} into SAVE/iter_0000007 plus SAVE/latest_checkpointed_iteration.txt.
   The only departure: megatron-core's torch_dist writer calls torch.cuda.synchronize(), so the sharded
   part goes through `SyncTorchDist` below: megatron-core's own key translation and save planner over
   PyTorch DCP's synchronous FileSystemWriter — the same files without the asynchronous copy to host.
4. the same model as NeMo 2 lays it out: SAVE/../nemo/weights/, keys under `module.`, no args;
5. megatron-core's own optimizer sharded state dict (`get_param_id_to_sharded_param_map` +
   `optim_state_to_sharding_state`, as its FP32Optimizer builds it) of a torch optimizer over a stock
   GPTModel at TP = world loads the optimizer state of --train (an engine=megatron checkpoint written at
   TP = 1) with `dist_checkpointing.load` -> OUT/optim_rank{r}.pt.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import torch
import torch.distributed as dist


def _sync_strategy():
    import torch.distributed.checkpoint as dcp
    from megatron.core.dist_checkpointing.strategies.base import SaveShardedStrategy
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )

    class SyncTorchDist(SaveShardedStrategy):
        can_handle_sharded_objects = True  # objects go into the .distcp files, as with torch_dist

        def save(self, sharded_state_dict, checkpoint_dir):  # noqa: ANN001, ANN202 - megatron's API
            flat, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
            dcp.save(
                mcore_to_pyt_state_dict(flat, False),
                storage_writer=dcp.FileSystemWriter(str(checkpoint_dir)),
                planner=MCoreSavePlanner(dedup_replicated_tensors=False, flatten_state_dict=False),
            )

    return SyncTorchDist("torch_dist", 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", type=Path, required=True)
    ap.add_argument("--hf-b", type=Path, required=True)
    ap.add_argument("--save", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", type=Path, required=True)
    a = ap.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.transformer.enums import AttnBackend
    from transformers import LlamaConfig

    from dist_forget.checkpoint import megatron_dist
    from dist_forget.checkpoint.hf import read_hf_config, read_hf_weights
    from dist_forget.models import megatron as M
    from dist_forget.models.mcore_map import megatron_lm_args

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
    a.out.mkdir(parents=True, exist_ok=True)

    plain = dist_checkpointing.load_plain_tensors(
        str(megatron_dist.resolve(a.ours))
    )  # a collective: every rank reads
    plain = {k: v for k, v in plain.items() if torch.is_tensor(v)}  # (common.pt entries come too)
    if rank == 0:
        torch.save(plain, a.out / "plain.pt")

    cfg = LlamaConfig.from_dict(read_hf_config(a.hf_b))
    gpt = M.build_stock_gpt(cfg)
    with torch.no_grad():
        for p in gpt.parameters():
            p.zero_()
    megatron_dist.load_gpt(gpt, a.ours)
    own = {k: v for k, v in gpt.state_dict().items() if torch.is_tensor(v)}
    torch.save(own, a.out / f"loaded_rank{rank}.pt")

    # Megatron-LM's checkpoint of a model holding hf-b's weights
    other = M.build_stock_gpt(cfg)
    other.load_state_dict(M.hf_to_stock_shard(read_hf_weights(a.hf_b), cfg, world, rank), strict=False)
    # the architecture arguments Megatron-LM records, an enum among them
    margs = megatron_lm_args(cfg.to_dict(), tp=world)
    margs.group_query_attention = True
    margs.params_dtype = torch.float32
    margs.attention_backend = AttnBackend.auto
    rng = ShardedObject(
        "rng_state",
        [{"random_rng_state": random.getstate(), "torch_rng_state": torch.get_rng_state()}],
        (1, world),
        (0, rank),
        replica_id=0,
    )
    state = {
        "args": margs,
        "checkpoint_version": 3.0,
        "iteration": 7,
        "model": other.sharded_state_dict(),
        "rng_state": rng,
    }
    folder = a.save / "iter_0000007"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(state, str(folder), sharded_strategy=_sync_strategy())
    if rank == 0:
        (a.save / "latest_checkpointed_iteration.txt").write_text("7")
    # NeMo 2's layout of the same model: the folder under weights/, keys under `module.` (its wrapper's
    # prefix), and a common.pt without Megatron-LM's args (NeMo keeps the config in context/)
    nemo = a.save.parent / "nemo" / "weights"
    if rank == 0:
        nemo.mkdir(parents=True)
    dist.barrier()
    dist_checkpointing.save(
        {"state_dict": other.sharded_state_dict(prefix="module.")},
        str(nemo),
        sharded_strategy=_sync_strategy(),
    )
    dist.barrier()
    _load_optimizer_state(M.build_stock_gpt(cfg), a.train, a.out / f"optim_rank{rank}.pt")
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    print(f"rank {rank} done (pid {os.getpid()})")


def _load_optimizer_state(gpt: torch.nn.Module, folder: Path, out: Path) -> None:
    """megatron-core's optimizer sharded state dict of an optimizer over `gpt`, loaded from `folder`."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.optimizer import (
        get_param_id_to_sharded_param_map,
        optim_state_to_sharding_state,
    )

    from dist_forget.checkpoint import megatron_dist

    names, params = zip(*gpt.named_parameters())
    opt = torch.optim.Adam(params)
    for p in params:  # the state Anchored AdamW keeps, empty: what a fresh optimizer of Megatron-LM has
        opt.state[p] = {
            "step": torch.tensor(0.0),
            **{k: torch.zeros_like(p) for k in ("exp_avg", "exp_avg_sq", "anchor")},
        }
    sd = opt.state_dict()
    id_map = get_param_id_to_sharded_param_map(gpt.sharded_state_dict(), params)
    optim_state_to_sharding_state(sd, id_map, exclude_keys=("step",))
    megatron_dist.verify_folder(folder)  # dist_checkpointing.load unpickles with weights_only=False
    loaded = dist_checkpointing.load({"optimizer": sd}, str(folder))["optimizer"]
    state = {names[i]: st for i, st in loaded["state"].items() if isinstance(i, int)}
    torch.save({"state": state, "common_step": loaded["state"]["common_step"]}, out)


if __name__ == "__main__":
    main()
