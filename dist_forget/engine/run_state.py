"""The loop's progress: everything beyond weights, optimizer and data position that a resume restores.

`RunState.state_dict()` is plain data (ints, floats incl. inf/nan, str, None), saved under the client
state's train key (dist_forget/checkpoint/meta.py) and loadable weights-only; `report.json` starts from
that entry. The evaluator's early-stop state is here; the inject controller saves its own state (the
saver holds each part by name: engine/saving.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from dist_forget.errors import UserError


@dataclass
class RunState:
    step: int = 0
    best_ft: float = math.inf  # the best target validation loss so far: the bottom of the U-curve
    best_pt: float = math.nan  # the pretraining validation loss at that step
    best_step: int = 0
    pt_loss_base: float = math.nan  # the starting model's losses: forgetting is measured from them
    ft_loss_base: float = math.nan
    bad_evals: int = 0  # evaluations since the best one (early stop)
    rise_after_best: float = 0.0  # highest target loss since the best evaluation, minus the best
    since_best: list[float] = field(default_factory=list)  # target losses of the evaluations after the best
    sequences: int = 0
    pretrain_sequences: int = 0
    pretrain_sequences_at_best: int = 0  # injected by the best step: does injection have room to act?
    mlflow_run_id: str | None = None
    # result-neutral settings resumes changed ({step, key, old, new}; checkpoint/meta.py config_changes)
    config_changes: list[dict[str, Any]] = field(default_factory=list)

    def advance(self, sequences: int, pretrain_sequences: int) -> None:
        """One optimizer step that consumed `sequences` (all ranks), `pretrain_sequences` of them injected."""
        self.step += 1
        self.sequences += sequences
        self.pretrain_sequences += pretrain_sequences

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(state) - known)
        if unknown:  # a newer dist-forget wrote it: guessing would resume from the wrong progress
            raise UserError(
                f"checkpoint train state has unknown fields {unknown}; resume with the dist-forget that wrote it"
            )
        for name, value in state.items():
            setattr(self, name, value)
