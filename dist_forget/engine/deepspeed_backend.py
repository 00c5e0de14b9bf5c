"""`deepspeed`: data parallel over N ranks with ZeRO stage 0-3 (`parallel.zero_stage`), gloo on CPU, NCCL on GPU.

We hand DeepSpeed our own optimizer object (a config optimizer would compile cpu_adam for minutes on
CPU) and allow it as "untested" (ZeRO checks the exact class). Checkpoints are DeepSpeed's own files
in `root/tag/` (dist_forget/checkpoint/formats.py `DEEPSPEED`), written with `save_latest=False`: the
`latest` pointer is ours (engine/run_folder.py).
They are read through our weights-only checkpoint engine (dist_forget/safeload.py), never DeepSpeed's
`weights_only=False` one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dist_forget.checkpoint.formats import DEEPSPEED
from dist_forget.engine.backend import Backend, StepResult, causal_lm_loss_sum, collective_timeout
from dist_forget.errors import UserError
from dist_forget.safeload import make_safe_checkpoint_engine


class DeepSpeedBackend(Backend):
    name = "deepspeed"

    def init_distributed(self) -> None:
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        backend = self._join_world()
        import deepspeed
        import deepspeed.ops

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.utils.logger.setLevel(logging.WARNING)
        if backend == "gloo":
            # DeepSpeed compiles its shared-memory comm op for ~75 s on first use; every ZeRO stage works
            # without it (start-up then takes ~2 s)
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            verbose=False,
            timeout=collective_timeout(self.cfg.parallel.timeout_s),
        )

    def _place(self, model: nn.Module) -> nn.Module:
        return model  # on the CPU as built: deepspeed.initialize moves it (and ZeRO-3 partitions it)

    def _wrap(self, micro_batch: int, grad_accum: int) -> None:
        import deepspeed

        ds_config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": grad_accum,
            "train_batch_size": micro_batch * grad_accum * self.world_size,
            "zero_optimization": {"stage": self.cfg.parallel.zero_stage},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": self.cfg.grad_clip,
            "bf16": {"enabled": self.cfg.precision == "bf16"},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, config=ds_config
        )
        # DeepSpeed's TorchCheckpointEngine unpickles with weights_only=False: load through ours instead
        self.engine.checkpoint_engine = make_safe_checkpoint_engine(self.engine.checkpoint_engine)
        self.engine.train()

    def _step(self, micro_batches: Sequence[Tensor]) -> StepResult:
        local = 0.0
        for ids in micro_batches:
            loss_sum, n = causal_lm_loss_sum(self.engine, ids.to(self.device))
            loss = loss_sum / n
            self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps itself
            self.engine.step()  # applies the update only at the accumulation boundary
            local += loss.item()
        (total,) = self.all_reduce_sum([local])
        norm = self.engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else math.nan
        return StepResult(loss=total / (len(micro_batches) * self.world_size), grad_norm=grad_norm)

    @torch.no_grad()
    def eval_loss(self, batches: Iterable[Tensor]) -> float:
        mine = [b for b in batches]
        # ZeRO-3 gathers weights inside forward, a collective: every rank must run as many forwards
        (most,) = self.all_reduce_sum([len(mine)])
        self.engine.eval()
        loss_sum, count = 0.0, 0
        try:
            for i in range(int(most)):
                if i < len(mine):
                    s, n = causal_lm_loss_sum(self.engine, mine[i].to(self.device))
                    loss_sum, count = loss_sum + float(s), count + n
                elif self.cfg.parallel.zero_stage == 3:
                    dummy = mine[0] if mine else torch.zeros(1, 2, dtype=torch.long)
                    causal_lm_loss_sum(self.engine, dummy.to(self.device))
        finally:
            self.engine.train()
        total, n_total = self.all_reduce_sum([loss_sum, count])
        return total / n_total if n_total else math.nan

    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None:
        self.engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)

    def load(self, root: Path, tag: str) -> dict[str, Any]:
        # every rank checks every file first, so a bad file stops all ranks with the same error
        DEEPSPEED.check_files(Path(root) / tag)
        path, client_state = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise UserError(
                f"checkpoint {Path(root) / tag} could not be loaded by DeepSpeed; "
                "check that it was written by engine=deepspeed with the same parallel.zero_stage"
            )
        return dict(client_state or {})

    def close(self) -> None:
        super().close()
        # DeepSpeed caches a clone of the world group; once that group is destroyed the next engine built in
        # this process (a resume, a test) would broadcast over the dead one
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None

    def full_state_dict(self) -> dict[str, Tensor]:
        import deepspeed

        module = self.engine.module
        params = list(module.parameters())
        gather = (
            deepspeed.zero.GatheredParameters(params, modifier_rank=None)
            if self.cfg.parallel.zero_stage == 3
            else _Null()
        )
        with gather:
            if self.rank != 0:
                return {}
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
