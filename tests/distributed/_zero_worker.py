"""One rank of a tiny Llama trained under DeepSpeed ZeRO with AnchoredAdamW (driven by test_zero_*.py).

The global batch is fixed (12 sequences) and split evenly over ranks, so every world size that divides
12 trains on exactly the same data per step: losses of a 2-rank and a 3-rank run agree up to fp32
reduction order. Writes `<out>/rank<r>.json` with per-step global losses and what this rank's optimizer
state holds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from pathlib import Path

import torch

GLOBAL_BATCH, SEQ, VOCAB = 12, 16, 128


def batch(step: int, rank: int, world: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(10_000 + step)
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=gen)
    per = GLOBAL_BATCH // world
    return tokens[rank * per : (rank + 1) * per]


def probe_tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(7))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, nargs="+", required=True, help="run each in turn (one start-up)")
    ap.add_argument("--steps", type=int, required=True, help="train until this global step")
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint root; stage s uses <ckpt>/stage<s>")
    ap.add_argument("--save-at", type=int, default=-1)
    ap.add_argument("--resume-tag", default="")
    ap.add_argument("--out", type=Path, required=True, help="results; stage s uses <out>/stage<s>")
    ap.add_argument("--anchor-decay", type=float, default=0.5)
    ap.add_argument(
        "--check-resume", action="store_true", help="then load save-at into a new engine and rerun"
    )
    args = ap.parse_args()

    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    from transformers import LlamaForCausalLM

    from dist_forget.models.ladder import hf_config
    from dist_forget.optim import AnchoredAdamW, param_groups

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skips a 75 s C++ build
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def run_stage(stage: int) -> None:
        ckpt, out = args.ckpt / f"stage{stage}", args.out / f"stage{stage}"

        def build(seed: int):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(hf_config("cpu-0.03m", vocab_size=VOCAB, max_seq_len=SEQ))
            opt = AnchoredAdamW(
                param_groups(model, weight_decay=0.01, anchor_decay=args.anchor_decay), lr=3e-3
            )
            config = {
                "train_batch_size": GLOBAL_BATCH,
                "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": stage},
                "zero_allow_untested_optimizer": True,
                "steps_per_print": 10**9,
            }
            # θ₀ before DeepSpeed sees the model (ZeRO-3 replaces parameters by empty placeholders).
            theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
            engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
            return theta0, engine

        def train(engine, first: int) -> dict[int, float]:
            losses = {}
            for step in range(first, args.steps + 1):
                tokens = batch(step, rank, world)
                loss = engine(input_ids=tokens, labels=tokens).loss
                engine.backward(loss)
                engine.step()
                mean = loss.detach().clone()
                dist.all_reduce(mean)
                losses[step] = float(mean) / world
                if step == args.save_at:
                    data = {
                        "world_size": world,
                        "consumed": step * GLOBAL_BATCH,
                        "fingerprint_parts": {"world_size": world, "seed": 0},
                        "fingerprint": "",
                    }
                    engine.save_checkpoint(
                        str(ckpt),
                        tag=f"step-{step:08d}",
                        client_state={"step": step, "data": data},
                        save_latest=False,
                    )
                    # Every rank joins the probe forward (ZeRO-3 gathers weights collectively).
                    with torch.no_grad():
                        logits = engine(input_ids=probe_tokens()).logits
                    if rank == 0:
                        torch.save(logits, out / f"logits-step-{step:08d}.pt")
            return losses

        def resume(tag: str):
            # A different init seed: everything that matters must come from the checkpoint.
            _, engine = build(seed=123)
            _, client = engine.load_checkpoint(str(ckpt), tag=tag)
            return engine, client

        out.mkdir(parents=True, exist_ok=True)
        data_state, resumed = None, {}
        if args.resume_tag:
            engine, client = resume(args.resume_tag)
            data_state = client.get("data")
            losses = train(engine, int(client["step"]) + 1)
        else:
            theta0, engine = build(seed=0)
            if rank == 0:
                torch.save(theta0, out / "theta0.pt")
            losses = train(engine, 1)
            if args.check_resume:
                engine2, client = resume(f"step-{args.save_at:08d}")
                resumed = train(engine2, int(client["step"]) + 1)

        base = engine.optimizer.optimizer  # our AnchoredAdamW, holding this rank's flat partitions
        state_numel = {
            key: sum(s[key].numel() for s in base.state.values() if key in s)
            for key in ("anchor", "exp_avg", "exp_avg_sq")
        }
        flat = getattr(engine.optimizer, "single_partition_of_fp32_groups", None)
        if flat is None:  # ZeRO-3 names its fp32 partitions differently
            flat = engine.optimizer.fp32_partitioned_groups_flat
        partition_numel = sum(p.numel() for p in flat)
        result = {
            "rank": rank,
            "world": world,
            "losses": losses,
            "resumed_losses": resumed,
            "state_numel": state_numel,
            "anchor_bytes": sum(
                s["anchor"].numel() * s["anchor"].element_size() for s in base.state.values() if "anchor" in s
            ),
            "partition_numel": partition_numel,
            "model_numel": sum(
                p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()
            ),
            "data_state": data_state,
        }
        (out / f"rank{rank}.json").write_text(json.dumps(result))

    for stage in args.stages:
        run_stage(stage)
    # The engines are garbage in reference cycles; collected now, while the interpreter is whole, their
    # gloo work objects go with them. Left to interpreter shutdown, a gloo thread still holding one can
    # abort the rank after its results are written ("terminate called without an active exception": 4 of
    # 11 runs of 3 ranks on 2 busy cores, 0 of 8 with this collection). The CLI collects before it exits
    # too (cli._before_exit).
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
