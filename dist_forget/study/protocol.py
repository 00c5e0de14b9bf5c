"""The paper's protocol, checked in a sweep's own run data before any finding is read from it.

A finding answers the paper's question only when the runs follow the paper's protocol:
- the ladder is trained well for its size: >= `min_tokens_per_param` pretraining tokens per *total*
  parameter, each read once (a rung that passes over its unique tokens more often than the others is
  another model: repeated tokens raise forgetting), and the pretraining validation loss falls with N at
  every rung by more than eval noise;
- every finetune reaches the bottom of its U-curve: its best target evaluation comes before its last,
  and the target loss then rose by more than eval noise (a run whose best is its last evaluation was
  still improving, and one stopped on a wobble of a slow descent would have gone lower: either way its
  "best" losses are not the paper's measurement point);
- injection has room to act: by its best step every p = 1 % run has seen >= `min_injected` pretraining
  sequences (1 % of a 240-sequence finetune is 2 sequences: nothing can be concluded from that);
- evaluations average over >= `min_eval_sequences` held-out sequences per side.

`check` reads the sweep folder (pretrain/*/ and finetune/*/ with summary.json, report.json,
run_config.json) and returns the `protocol` block of findings.json; `UNDERMINES` says which findings a
failed check leaves without a verdict. The block also says where the runs ran (`machines`): a run repeats
bit for bit on one machine, not across CPUs, so a table of runs is only one measurement if it names one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dist_forget.machine import describe
from dist_forget.schema import METRICS_FILE, read_metrics


@dataclass(frozen=True)
class ProtocolSpec:
    min_tokens_per_param: float = 20.0  # pretraining tokens per total (embedding included) parameter
    # passes over the unique pretraining tokens: cpu-0.3m pretrained on 1.18 passes forgot 4-31 % more at
    # D = 45k, p = 0 than on fresh tokens (reports/micro/pilots), and the paper's ladder reads each once
    max_pretrain_epochs: float = 1.0
    min_ladder_gap: float = 0.02  # nats/token between rungs; an eval mean over >= 128 x 128 tokens is ~0.01
    min_share_best_before_last: float = 0.95  # share of finetunes past the bottom of their U-curve
    min_rise: float = 0.01  # nats/token the target loss must rise after its best (eval noise is ~0.01)
    min_injected: int = 20  # pretraining sequences by the best step, at p = 1 %
    min_eval_sequences: int = 128


# Every finding the report checks: a run that did not reach its U-curve bottom, or an eval too small to
# resolve the effects, leaves none of them with a verdict.
ALL_FINDINGS = ("forgetting_vs_size", "forgetting_vs_data", "injection", "ft_not_hurt", "anchor", "laws")

# Which findings (numbered as in the report) each failed check undermines.
UNDERMINES = {
    "ladder_trained": ("forgetting_vs_size", "laws"),
    "ladder_fresh": ("forgetting_vs_size", "laws"),
    "ladder_ordered": ("forgetting_vs_size", "laws"),
    "u_curve_bottom": ALL_FINDINGS,
    "injection_acts": ("injection", "ft_not_hurt"),
    "eval_sequences": ALL_FINDINGS,
}


def read_json(path: Path) -> dict[str, Any]:
    """A run file's JSON, or {} when it is missing or unreadable (a run still in progress)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_files(sweep: Path, stage: str) -> list[tuple[Path, dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(folder, summary.json, report.json, run_config.json) of every finished run of a stage."""
    dirs = sorted(p.parent for p in (sweep / stage).glob("*/summary.json"))
    return [
        (d, read_json(d / "summary.json"), read_json(d / "report.json"), read_json(d / "run_config.json"))
        for d in dirs
    ]


def ladder(sweep: Path) -> list[dict[str, Any]]:
    """One row per pretrained size, smallest N first: its data (shard folder's domain), N, total params,
    tokens, tokens/param, passes over the unique tokens, val loss."""
    rows = []
    for run, summary, rep, cfg in run_files(sweep, "pretrain"):
        manifest = read_json(Path(cfg.get("data", {}).get("target", "")) / "manifest.json")
        tokens = int(rep.get("sequences", 0)) * int(manifest.get("seq_len", 0))
        total = int(rep.get("total_params", 0))
        unique = int(summary.get("target_tokens") or 0)  # the unique tokens the run's stream draws from
        rows.append({
            "size": run.name, "data": manifest.get("domain", "?"), "unique_tokens": unique,
            "model_params": float(summary.get("model_params", 0)), "total_params": total,
            "tokens": tokens, "tokens_per_param": tokens / total if total else math.nan,
            "epochs": tokens / unique if unique else math.nan,
            "steps": rep.get("step"), "pt_loss": float(summary.get("pt_loss", math.nan)), **_where(rep),
        })  # fmt: skip
    return sorted(rows, key=lambda r: r["model_params"])


def rise_after_best(run: Path) -> float:
    """How far the target validation loss rose above its best at any later evaluation (nats/token),
    from the run's metrics.jsonl; nan without evaluations."""
    try:
        evals = read_metrics(run / METRICS_FILE, kind="eval")
    except (OSError, ValueError):
        return math.nan
    if not evals:
        return math.nan
    losses = [e["ft_loss"] for e in evals]
    best = min(range(len(losses)), key=losses.__getitem__)
    return max(losses[best + 1 :], default=losses[best]) - losses[best]


def finetunes(sweep: Path) -> list[dict[str, Any]]:
    """One row per finetune: its best and last step, the target loss's rise after the best, injected
    sequences by the best step, eval size."""
    rows = []
    for run, summary, rep, cfg in run_files(sweep, "finetune"):
        p = float(summary.get("inject_fraction", 0.0))
        batch = int(cfg.get("train", {}).get("batch_size", 0))
        best = int(rep.get("best_step", summary.get("steps", 0)))
        # recorded by the trainer; older runs: the exact stream's count, floor(sequences * p)
        injected = rep.get("pretrain_sequences_at_best", math.floor(best * batch * p + 1e-9))
        rows.append({
            "run": run.name, "inject_fraction": p, "best_step": best, "last_step": int(rep.get("step", best)),
            "rise_after_best": rise_after_best(run), "injected_at_best": int(injected),
            "eval_sequences": int(cfg.get("train", {}).get("eval_sequences", 0)), **_where(rep),
        })  # fmt: skip
    return rows


def _where(rep: dict[str, Any]) -> dict[str, Any]:
    """Where a run ran (report.json's fingerprint, as `machine.describe` words it) and its wall time (s)."""
    machine = describe(rep["machine"]) if rep.get("machine") else "not recorded"
    return {"machine": machine, "wall_s": float(rep.get("wall_s", 0.0))}


def machines(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per machine the runs (rows of `ladder` and `finetunes`) ran on: how many, and their wall time
    summed in seconds (a run paused by a signal counts its pause). Most runs first, then by name."""
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        row = rows.setdefault(run["machine"], {"machine": run["machine"], "runs": 0, "wall_s": 0.0})
        row["runs"] += 1
        row["wall_s"] += run["wall_s"]
    return sorted(rows.values(), key=lambda r: (-r["runs"], r["machine"]))


def check(sweep: Path, spec: ProtocolSpec = ProtocolSpec()) -> dict[str, Any]:
    """The `protocol` block of findings.json: the measured quantities, each check's result, and `met`."""
    rungs, runs = ladder(sweep), finetunes(sweep)
    losses = [r["pt_loss"] for r in rungs]
    gaps = [a - b for a, b in zip(losses, losses[1:])]
    before_last = [r["best_step"] < r["last_step"] for r in runs]
    past_bottom = [ok and r["rise_after_best"] >= spec.min_rise for r, ok in zip(runs, before_last)]
    injected: dict[str, dict[str, float]] = {}
    for p in sorted({r["inject_fraction"] for r in runs if r["inject_fraction"] > 0}):
        counts = [r["injected_at_best"] for r in runs if r["inject_fraction"] == p]
        injected[f"{p:g}"] = {"min": min(counts), "mean": sum(counts) / len(counts), "runs": len(counts)}
    one_pct = injected.get("0.01")
    # a sweep without a pretrain stage finetunes a model pretrained elsewhere (model.init_from): the ladder
    # checks do not apply (None), and neither do the findings that need sizes of our own ladder
    ladder_ok = None if not rungs else all(r["tokens_per_param"] >= spec.min_tokens_per_param for r in rungs)
    checks = {
        "ladder_trained": ladder_ok,
        # nan (a run that did not record its unique tokens) is not counted against the ladder
        "ladder_fresh": None if not rungs else not any(r["epochs"] > spec.max_pretrain_epochs for r in rungs),
        "ladder_ordered": None
        if not rungs
        else len(rungs) >= 2 and all(g > spec.min_ladder_gap for g in gaps),
        "u_curve_bottom": bool(runs) and sum(past_bottom) / len(runs) >= spec.min_share_best_before_last,
        "injection_acts": one_pct is not None and one_pct["min"] >= spec.min_injected,
        "eval_sequences": bool(runs) and min(r["eval_sequences"] for r in runs) >= spec.min_eval_sequences,
    }
    failed = [name for name, ok in checks.items() if ok is False]
    return {
        "pretrain_loss_by_size": {f"{r['model_params']:.0f}": r["pt_loss"] for r in rungs},
        "pretrain_tokens_per_param": {f"{r['model_params']:.0f}": r["tokens_per_param"] for r in rungs},
        "pretrain_epochs": {f"{r['model_params']:.0f}": r["epochs"] for r in rungs},
        "pretrain_loss_gaps": gaps,
        "share_best_before_last": sum(before_last) / len(runs) if runs else math.nan,
        "share_past_bottom": sum(past_bottom) / len(runs) if runs else math.nan,
        "runs_not_past_bottom": [r["run"] for r, ok in zip(runs, past_bottom) if not ok],
        "injected_at_best": injected,
        "eval_sequences": min((r["eval_sequences"] for r in runs), default=0),
        "machines": machines(rungs + runs),
        "thresholds": asdict(spec),
        "checks": checks,
        "met": not failed,
        "failed": failed,
        "undermined": sorted({f for name in failed for f in UNDERMINES[name]}),
        "not_applicable": sorted({f for name, ok in checks.items() if ok is None for f in UNDERMINES[name]}),
    }
