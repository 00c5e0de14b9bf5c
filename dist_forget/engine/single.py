"""`single`: one process, plain PyTorch (the laptop path and the speed baseline for the others).

Checkpoint layout mirrors a DeepSpeed stage-0 checkpoint (dist_forget/checkpoint/formats.py `SINGLE`, over
zero.py's `write_single` / `read_single`), so converters read both the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dist_forget.checkpoint.formats import SINGLE
from dist_forget.engine.backend import Backend, StepResult, causal_lm_loss_sum, env_world
from dist_forget.errors import UserError


class SingleBackend(Backend):
    name = "single"

    def init_distributed(self) -> None:
        _, world, _, _ = env_world()
        if world > 1:
            raise UserError(
                f"engine = single runs one process but WORLD_SIZE = {world}; "
                "set engine=deepspeed to train on several ranks"
            )
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _step(self, micro_batches: Sequence[Tensor]) -> StepResult:
        total = 0.0
        for ids in micro_batches:
            with self._autocast():
                loss_sum, n = causal_lm_loss_sum(self.model, ids.to(self.device))
            loss = loss_sum / n
            # equal-length micro-batches: the mean of the micro means is the global token mean
            (loss / len(micro_batches)).backward()
            total += loss.item()
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=total / len(micro_batches), grad_norm=grad_norm)

    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None:
        SINGLE.save(Path(root) / tag, self.model.state_dict(), self.optimizer.state_dict(), client_state)

    def load(self, root: Path, tag: str) -> dict[str, Any]:
        module, optimizer, client = SINGLE.load(Path(root) / tag, device=self.device)
        self.model.load_state_dict(module)
        self.optimizer.load_state_dict(optimizer)
        return client

    def full_state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.model.state_dict().items()}
