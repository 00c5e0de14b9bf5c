"""The run's record of itself: metrics.jsonl (rank 0; records: dist_forget/schema.py), the per-step
MLflow metrics and progress line, and loss_curves.png drawn from metrics.jsonl at the end."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dist_forget.engine.run_state import RunState
from dist_forget.io import write_text_atomic
from dist_forget.schema import read_metrics, train_record


@dataclass
class StepCost:
    """What turns a step time into tokens/s, MFU and an ETA."""

    steps: int  # the run's total, for the ETA
    tokens_per_step: int
    flops_per_token: float
    peak_flops: float
    # peak_flops is FLOP per CPU-second of this process (a CPU run's measured peak): MFU's achieved side is
    # then the steps' FLOPs per process CPU-second too, else per wall second (engine/flops.py)
    per_cpu_second: bool = False


class MetricsLog:
    def __init__(
        self,
        path: Path,
        rank: int,
        keep_until: int | None,
        tracker: Any,
        cost: StepCost,
        say: Callable[..., Any],
    ):
        self.path, self.rank, self.tracker, self.cost, self.say = path, rank, tracker, cost, say
        self.times: list[float] = []  # recent step times: tokens/s and ETA ignore evaluation and save pauses
        self.cpu_times: list[float] = []  # the same steps' process CPU seconds (all threads): a CPU run's MFU
        if rank != 0:
            return
        kept: list[dict[str, Any]] = []
        if keep_until is not None and path.is_file():
            # a resumed run drops what the interrupted run logged after its checkpoint
            kept = read_metrics(path, until_step=keep_until)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.fh = open(path, "a")  # noqa: SIM115 - open for the whole run

    def write(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            try:
                self.fh.write(json.dumps(record) + "\n")
                self.fh.flush()
            except OSError as exc:  # a write() error names no file: name it (a full disk: one line, cli.py)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def tokens_per_s(self) -> float | None:
        return self.cost.tokens_per_step / (sum(self.times) / len(self.times)) if self.times else None

    def mfu(self) -> float | None:
        """Model FLOPs per second of the recent steps ÷ the peak, both on the peak's clock: per process
        CPU-second when `cost.per_cpu_second`, else per wall second (tokens/s × FLOPs per token)."""
        if not self.times:
            return None
        if self.cost.per_cpu_second:
            cpu_s = sum(self.cpu_times) / len(self.cpu_times)
            per_s = self.cost.tokens_per_step / cpu_s if cpu_s > 0.0 else math.nan  # 0: a clock too coarse
        else:
            per_s = self.tokens_per_s() or math.nan
        return self.cost.flops_per_token * per_s / self.cost.peak_flops

    def train_step(
        self,
        state: RunState,
        loss: float,
        lr: float,
        grad_norm: float,
        dt: float,
        cpu_dt: float,
        n_pre: float,
        n_seq: float,
        p_set: float,
    ) -> None:
        """Log the step `state` just finished: metrics.jsonl, MLflow `train/*` and `inject_fraction` (the p the
        schedule set for this step: constant, or the controller's under data.inject_fraction=auto) and the
        progress line. `dt` is the step's wall seconds, `cpu_dt` its process CPU seconds."""
        self.times = (self.times + [dt])[-20:]
        self.cpu_times = (self.cpu_times + [cpu_dt])[-20:]
        tok_s = self.tokens_per_s() or math.nan
        metrics = {
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_s": tok_s,
            "mfu": self.mfu() or math.nan,
            "inject_fraction": n_pre / n_seq,
            "inject_fraction_cum": state.pretrain_sequences / state.sequences,
            "injected_sequences": float(state.pretrain_sequences),
        }
        self.write(train_record(state.step, {**metrics, "inject_fraction_set": p_set}))
        # p goes to MLflow once, as `inject_fraction` (the p set; the observed share of this step is
        # metrics.jsonl's, its running mean `train/inject_fraction_cum`)
        mlflow = {f"train/{k}": v for k, v in metrics.items() if k != "inject_fraction"}
        self.tracker.log_metrics({**mlflow, "inject_fraction": p_set}, state.step)
        eta = sum(self.times) / len(self.times) * (self.cost.steps - state.step)
        self.say(
            f"step {state.step}/{self.cost.steps} | loss {loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | "
            f"MFU {metrics['mfu']:.1%} | inject {metrics['inject_fraction_cum']:.4f} | ETA {_fmt_time(eta)}",
            flush=True,
        )

    def close(self) -> None:
        if self.rank == 0 and not self.fh.closed:
            try:
                self.fh.close()
            except OSError:
                pass  # the line it still held failed to write already, and that error is the one reported


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def plot(metrics: Path, path: Path, pt_loss_base: float | None = None, best_step: int | None = None) -> Path:
    """loss_curves.png: train loss per step, target and pretraining validation loss per evaluation and, for
    a finetune (`pt_loss_base` given), forgetting = pretraining validation loss − the starting model's
    below it, on its own scale (a few hundredths of a nat beside losses of several), the best step marked."""
    # a Figure on the Agg canvas, not pyplot: the same PNG without pyplot's import and backend machinery
    # (a run draws one file and shows nothing)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train_pts = [(r["step"], r["loss"]) for r in read_metrics(metrics, "train")]
    evals = read_metrics(metrics, "eval")
    forgetting = pt_loss_base is not None and bool(evals)
    fig = Figure(figsize=(7, 6.5 if forgetting else 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if forgetting else 1, 1, sharex=True, squeeze=False)
    ax = axes[0][0]
    if train_pts:
        ax.plot(*zip(*train_pts), lw=0.8, alpha=0.6, label="train loss")
    steps = [r["step"] for r in evals]
    if evals:
        ax.plot(steps, [r["ft_loss"] for r in evals], "o-", label="target validation")
        ax.plot(steps, [r["pt_loss"] for r in evals], "s-", label="pretraining validation")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    if forgetting:
        ax = axes[1][0]
        ax.plot(steps, [r["pt_loss"] - pt_loss_base for r in evals], "s-", color="C2", label="forgetting")
        ax.axhline(0.0, color="k", lw=0.6)
        if best_step is not None:
            ax.axvline(best_step, color="C1", ls="--", lw=0.8, label=f"best target loss (step {best_step})")
        ax.set_ylabel("forgetting: pt val − base (nats/token)")
        ax.legend()
    ax.set_xlabel("step")
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    tmp.replace(path)
    return path
