"""The end of a run: summary.json (exactly the runs-table columns, at the best step: the bottom of the
U-curve), report.json (everything else), MLflow `best/*`, the registered model, the loss plot and the
"done:" line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_forget.data.mixture import Schedule
from dist_forget.data.remote import location_name
from dist_forget.engine.config import RunConfig
from dist_forget.engine.metrics_log import plot
from dist_forget.engine.run_state import RunState
from dist_forget.io import write_json_atomic
from dist_forget.machine import fingerprint
from dist_forget.schema import METRICS_FILE, SUMMARY_FILE, summary_row
from dist_forget.tracking.config import relative, run_root


def summary_of(
    cfg: RunConfig, state: RunState, model_params: int, target_tokens: int, out: Path, schedule: Schedule
) -> dict[str, Any]:
    """The runs-table row of this run (dist_forget/schema.py), at the best step. Under
    data.inject_fraction=auto, `inject_fraction` is the sequence- (= token-) weighted mean p of the schedule
    over the sequences trained up to that step (what produced the row's forgetting) and
    `inject_fraction_final` the p of the last step trained; a constant p is both."""
    if cfg.data.adaptive:
        p_mean = schedule.mean(state.best_step * cfg.train.batch_size)
        p_final = float(schedule.fraction_at(max(state.sequences - 1, 0)))
    else:
        p_mean = p_final = cfg.data.inject_fraction
    return summary_row(
        {
            "domain": cfg.domain or location_name(cfg.data.target),
            "model_params": model_params,
            "target_tokens": target_tokens,
            "inject_fraction": p_mean,
            "inject_fraction_final": p_final,
            "forgetting": state.best_pt - state.pt_loss_base,
            "anchor_decay": cfg.optim.anchor_decay,
            "ft_loss": state.best_ft,
            "pt_loss": state.best_pt,
            "pt_loss_base": state.pt_loss_base,
            "ft_loss_base": state.ft_loss_base,
            "steps": state.best_step,
            # without MLflow: the run folder, relative to the sweep's (or its parent): no machine path
            "run_id": state.mlflow_run_id or f"local:{relative(out, run_root(out))}",
        }
    )


def write_outputs(
    cfg: RunConfig,
    mode: str,
    state: RunState,
    record: dict[str, Any],
    summary: dict[str, Any],
    report: dict[str, Any],
    tracker: Any,
    say: Callable[..., Any],
) -> None:
    """Rank 0: summary.json, report.json (`record`: the run state as checkpoints hold it, then `report`:
    what the loop measured), the best step's MLflow metrics and registered model, loss_curves.png, and the
    closing line."""
    out = Path(cfg.out_dir)
    write_json_atomic(out / SUMMARY_FILE, summary)
    # the machine beside the numbers: runs repeat bit for bit on one machine, not across CPU models
    machine = {"machine": fingerprint()}
    write_json_atomic(out / "report.json", {**record, "mode": mode, **report, **machine})
    best = {"best/ft_loss": state.best_ft, "best/step": float(state.best_step)}
    if mode == "finetune":
        best.update(
            {
                "best/pt_loss": state.best_pt,
                "best/forgetting": state.best_pt - state.pt_loss_base,
                "best/injected_sequences": float(state.pretrain_sequences_at_best),
            }
        )
    tracker.log_metrics(best, state.best_step)
    if cfg.tracking.register_model and (out / "best").is_dir():
        tracker.register_model(
            out / "best",
            cfg.tracking.register_model,
            {"best_step": state.best_step, "ft_loss": state.best_ft, "pt_loss": state.best_pt},
        )
    base = state.pt_loss_base if mode == "finetune" else None
    curves = plot(out / METRICS_FILE, out / "loss_curves.png", base, state.best_step)
    for path in (out / SUMMARY_FILE, out / "report.json", curves):
        tracker.log_artifact(path)
    say(
        f"done: {state.step} steps; best target loss {state.best_ft:.4f} at step {state.best_step} "
        f"(pretraining loss there {state.best_pt:.4f}, base {state.pt_loss_base:.4f}, forgetting "
        f"{state.best_pt - state.pt_loss_base:+.4f} nats/token); summary {out / SUMMARY_FILE}",
        flush=True,
    )
