"""Evaluation with early stop: both validation splits, the best target loss (bottom of the U-curve) and
the rule that ends a run once it is past that bottom.

An early stop needs `train.patience` evaluations without a better target loss AND the target loss risen
`train.stop_rise` above its best: a noisy flat stretch is not the bottom of the U-curve, a rise is. With
`train.stop_sustained` the rise must hold at each of the last `patience` evaluations, not at one of them.

Evaluations run in the run's precision: under bf16, in bf16 autocast over fp32 weights. Measured on
SmolLM2-135M, the same 32 held-out sequences per domain (German, English, legal, medical), bf16 autocast
minus fp32: +0.0006, +0.0006, +0.0003, +0.0009 nats/token: a bias of one sign, so it cancels to first order
in forgetting (both terms of pt_loss - pt_loss_base are measured in the same precision), and it is 10x under
the rise the protocol resolves (0.01 nats, study/protocol.py) and under the eval noise that threshold stands for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from dist_forget.data.manifest import Manifest
from dist_forget.data.mixture import validation_batches
from dist_forget.engine.backend import Backend
from dist_forget.engine.config import TrainConfig
from dist_forget.engine.metrics_log import MetricsLog
from dist_forget.engine.run_state import RunState
from dist_forget.schema import eval_record


class Evaluator:
    def __init__(
        self,
        backend: Backend,
        train: TrainConfig,
        state: RunState,
        target: Manifest,
        pretrain: Manifest,
        log: MetricsLog,
        tracker: Any,
        finetune: bool,
        say: Callable[..., Any],
    ):
        self.backend, self.train, self.state, self.log = backend, train, state, log
        self.target, self.pretrain = target, pretrain
        self.tracker, self.finetune, self.say = tracker, finetune, say
        self.last: tuple[float, float] | None = None  # (target, pretraining) loss of the latest evaluation

    def losses(self) -> tuple[float, float]:
        """(target, pretraining) validation loss; equal manifests are the same shards, evaluated once."""
        t, b = self.train, self.backend
        kw = dict(
            micro_batch_size=t.micro_batch,
            max_sequences=t.eval_sequences,
            rank=b.dp_rank,
            world_size=b.dp_size,
        )
        ft = b.eval_loss(validation_batches(self.target, **kw))
        pt = ft if self.pretrain == self.target else b.eval_loss(validation_batches(self.pretrain, **kw))
        return ft, pt

    def baseline(self) -> tuple[float, float]:
        """The starting model's losses (step 0): forgetting is measured from them."""
        s = self.state
        s.ft_loss_base, s.pt_loss_base = self.losses()
        return s.ft_loss_base, s.pt_loss_base

    def due(self, step: int, final: bool) -> bool:
        return final or bool(self.train.eval_every and step % self.train.eval_every == 0)

    def __call__(self, step: int, losses: tuple[float, float] | None = None) -> bool:
        """Evaluate (unless `losses` were just measured), log, keep the best; returns whether it is a new best."""
        s = self.state
        ft, pt = losses or self.losses()
        self.last = (ft, pt)
        best = ft < s.best_ft
        if best:
            s.best_ft, s.best_pt, s.best_step, s.bad_evals = ft, pt, step, 0
            s.rise_after_best, s.since_best = 0.0, []
            s.pretrain_sequences_at_best = s.pretrain_sequences
        else:
            s.bad_evals += 1
            s.rise_after_best = max(s.rise_after_best, ft - s.best_ft)
            s.since_best.append(ft)
        self.log.write(eval_record(step, ft, pt))
        values = {"val/ft_loss": ft, "val/pt_loss": pt, "val/best_ft_loss": s.best_ft}
        if self.finetune:  # how far the pretraining loss rose above the starting model's
            values["val/forgetting"] = pt - s.pt_loss_base
        self.tracker.log_metrics(values, step)
        self.say(
            f"eval step {step}: ft_loss {ft:.4f}  pt_loss {pt:.4f}  (best ft {s.best_ft:.4f} at step "
            f"{s.best_step}{', new best' if best else ''})",
            flush=True,
        )
        return best

    def should_stop(self) -> bool:
        """The early-stop rule (module docstring); says why when it fires."""
        t, s = self.train, self.state
        if not (t.patience and s.bad_evals >= t.patience):
            return False
        if t.stop_sustained:
            rise, how = (
                min(s.since_best[-t.patience :], default=-math.inf) - s.best_ft,
                f"at each of the last {t.patience}",
            )
        else:
            rise, how = s.rise_after_best, "at most"
        if rise < t.stop_rise:
            return False
        self.say(f"early stop: {s.bad_evals} evaluations without a better target loss, which rose {rise:.4f} "
                 f"above its best ({how})", flush=True)  # fmt: skip
        return True
