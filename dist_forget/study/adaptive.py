"""`dist-forget study adaptive`: a forgetting budget held online against the static planner.

A sweep with `inject_fraction: [0.0, auto]`, `max_forgetting: [ε...]` and `adaptive.static_arm`
(configs/sweep/adaptive.yaml) leaves three arms per (domain, N, D) in its finetune/ folder, told apart
by the run name (sweep/grid.py: arm_of):
- auto: p adapted at every evaluation to hold forgetting under ε (engine/inject_control.py);
- plan: the planner's constant p for the same ε (laws/plan.py on the sweep's prior fit);
- p = 0: no injection; one run serves every ε of its (domain, N, D).
Each run is read at its best target checkpoint (summary.json): forgetting F = pt_loss - pt_loss_base,
the best target loss, and the pretraining sequences injected by that step (report.json, as the
protocol check reads it). "Held" means F <= ε.

The goal, checked on the auto runs and their plan twins (same domain, N, D, ε, seed):
the budget held in >= 90 % of auto runs; fewer injected tokens than the plan on average; a best target
loss on average at most 0.5 % above the plan's. Only plain AdamW runs (anchor_decay 0) are compared.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dist_forget.errors import UserError
from dist_forget.io import atomic_path, write_json_atomic, write_text_atomic
from dist_forget.numfmt import json_finite, num, pct
from dist_forget.study import protocol
from dist_forget.study.findings import BUDGET_HELD_GOAL, FT_TOLERANCE
from dist_forget.sweep.grid import AUTO, PLAN, arm_of

P0 = "p0"
ARMS = (AUTO, PLAN, P0)
LABELS = {AUTO: "adaptive", PLAN: "static plan", P0: "p = 0"}


@dataclass(frozen=True)
class ArmRun:
    name: str
    arm: str  # AUTO, PLAN or P0
    domain: str
    model_params: float  # N, non-embedding
    target_tokens: float  # D
    max_forgetting: float | None  # ε; None for p = 0 (judged against every ε of its group)
    seed: int
    ft_loss: float  # best target validation loss, nats/token
    forgetting: float  # pt_loss - pt_loss_base at that step, nats/token
    inject_fraction: float  # mean p up to the best step (tokens-weighted)
    inject_fraction_final: float  # the p of the last step
    injected_sequences: int  # pretraining sequences in the stream by the best step
    injected_tokens: float  # those sequences x seq_len; nan when the run's manifest is unreadable


def read_runs(sweep: Path) -> list[ArmRun]:
    """The finished finetunes of the three arms (anchor_decay 0), read from their run folders."""
    injected = {r["run"]: r["injected_at_best"] for r in protocol.finetunes(sweep)}
    runs = []
    for folder, summary, _, cfg in protocol.run_files(sweep, "finetune"):
        parsed = arm_of(folder.name)
        if parsed is None or parsed[2] != 0:
            continue
        p, eps, _, seed = parsed
        arm = p if p in (AUTO, PLAN) else P0 if p == "0" else None
        if arm is None or (arm != P0 and eps is None):
            continue
        try:
            f = summary.get("forgetting")  # absent in runs older than the column
            forgetting = float(f if f is not None else summary["pt_loss"] - summary["pt_loss_base"])
            values = (str(summary["domain"]), float(summary["model_params"]), float(summary["target_tokens"]),
                      float(summary["ft_loss"]), float(summary["inject_fraction"]))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"{folder / 'summary.json'}: lacks domain, model_params, target_tokens, ft_loss, pt_loss, "
                "pt_loss_base or inject_fraction; rerun that finetune (delete its folder) or remove it"
            ) from None
        domain, n, d, ft, p_mean = values
        target = str(cfg.get("data", {}).get("target") or "")  # a URL's manifest is not read: tokens unknown
        seq_len = protocol.read_json(Path(target) / "manifest.json").get("seq_len") if target else None
        seqs = int(injected[folder.name])
        runs.append(ArmRun(folder.name, arm, domain, n, d, eps if arm != P0 else None, seed, ft, forgetting,
                           p_mean, float(summary.get("inject_fraction_final") or p_mean), seqs,
                           seqs * float(seq_len) if seq_len else math.nan))  # fmt: skip
    return runs


def baseline_runs(baseline: Path, runs: list[ArmRun]) -> list[ArmRun]:
    """The p = 0 runs of another sweep (the one the budgets were taken from) at the compared points."""
    if not (baseline / "finetune").is_dir():
        raise UserError(f"--baseline {baseline}: no finetune/ folder; give the sweep of the p = 0 runs")
    points = {(r.domain, r.model_params, r.target_tokens, r.seed) for r in runs if r.arm != P0}
    have = {r.name for r in runs}
    return [
        r
        for r in read_runs(baseline)
        if r.arm == P0
        and r.name not in have
        and (r.domain, r.model_params, r.target_tokens, r.seed) in points
    ]


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else math.nan


def compare(runs: list[ArmRun]) -> dict[str, Any]:
    """The table (one row per (domain, N, D, ε) and arm), the auto-vs-plan pairs, and the goal check."""
    budgets: dict[tuple[str, float, float], set[float]] = defaultdict(set)
    for r in runs:
        if r.max_forgetting is not None:
            budgets[(r.domain, r.model_params, r.target_tokens)].add(r.max_forgetting)
    groups: dict[tuple[str, float, float, float, str], list[ArmRun]] = defaultdict(list)
    for r in runs:
        key = (r.domain, r.model_params, r.target_tokens)
        for eps in [r.max_forgetting] if r.max_forgetting is not None else sorted(budgets[key]):
            groups[(*key, eps, r.arm)].append(r)
    rows = []
    for (domain, n, d, eps, arm), rs in sorted(
        groups.items(), key=lambda kv: (*kv[0][:4], ARMS.index(kv[0][4]))
    ):
        rows.append({
            "domain": domain, "model_params": n, "target_tokens": d, "max_forgetting": eps, "arm": arm,
            "runs": len(rs), "run_names": [r.name for r in rs],
            "share_held": _mean([float(r.forgetting <= eps) for r in rs]),
            "injected_tokens_mean": _mean([r.injected_tokens for r in rs]),
            "injected_sequences_mean": _mean([float(r.injected_sequences) for r in rs]),
            "ft_loss_mean": _mean([r.ft_loss for r in rs]),
            "forgetting_mean": _mean([r.forgetting for r in rs]),
            "inject_fraction_mean": _mean([r.inject_fraction for r in rs]),
            "inject_fraction_final_mean": _mean([r.inject_fraction_final for r in rs]),
        })  # fmt: skip
    return {"rows": rows, **goal_check(runs)}


def goal_check(runs: list[ArmRun]) -> dict[str, Any]:
    """The goal on the auto runs and their plan twins (module docstring); each part None when nothing
    measures it."""
    auto = [r for r in runs if r.arm == AUTO]
    plans = {
        (r.domain, r.model_params, r.target_tokens, r.max_forgetting, r.seed): r
        for r in runs
        if r.arm == PLAN
    }
    pairs = []
    for r in auto:
        twin = plans.get((r.domain, r.model_params, r.target_tokens, r.max_forgetting, r.seed))
        if twin is not None:
            pairs.append({"run": r.name, "plan_run": twin.name, "max_forgetting": r.max_forgetting,
                          "injected_sequences": r.injected_sequences,
                          "plan_injected_sequences": twin.injected_sequences,
                          "injected_tokens": r.injected_tokens, "plan_injected_tokens": twin.injected_tokens,
                          "ft_change": r.ft_loss / twin.ft_loss - 1})  # fmt: skip
    held = _mean([float(r.forgetting <= (r.max_forgetting or 0)) for r in auto])
    plan_held = _mean([float(r.forgetting <= (r.max_forgetting or 0)) for r in plans.values()])
    # the same stream length per sequence on both sides of a pair: sequences compare as tokens do
    inj_auto = _mean([float(x["injected_sequences"]) for x in pairs])
    inj_plan = _mean([float(x["plan_injected_sequences"]) for x in pairs])
    tok_auto = _mean([x["injected_tokens"] for x in pairs])
    tok_plan = _mean([x["plan_injected_tokens"] for x in pairs])
    ft_change = _mean([x["ft_change"] for x in pairs])
    checks = {
        "budget_held": None if not auto else held >= BUDGET_HELD_GOAL,
        "fewer_injected": None if not pairs else inj_auto < inj_plan,
        "target_loss_kept": None if not pairs else ft_change <= FT_TOLERANCE,
    }
    return {
        "pairs": pairs,
        "goal": {
            "share_held": held, "share_held_plan": plan_held, "share_held_goal": BUDGET_HELD_GOAL,
            "auto_runs": len(auto), "pairs": len(pairs),
            "injected_sequences_mean": inj_auto, "plan_injected_sequences_mean": inj_plan,
            "injected_tokens_mean": tok_auto, "plan_injected_tokens_mean": tok_plan,
            "injected_ratio": inj_auto / inj_plan if inj_plan > 0 else math.nan,
            "ft_change_mean": ft_change, "ft_tolerance": FT_TOLERANCE, "checks": checks,
            "met": None if None in checks.values() else all(checks.values()),
        },
    }  # fmt: skip


def _yes(x: bool | None) -> str:
    return "not measured" if x is None else "yes" if x else "**no**"


def markdown(result: dict[str, Any], sweep: Path, png: str | None) -> str:
    g = result["goal"]
    c = g["checks"]
    lines = [
        "# Forgetting budget: adaptive p against the static planner and p = 0",
        "",
        f"Sweep: `{sweep}`; {g['auto_runs']} adaptive runs, {g['pairs']} of them with a static-plan twin "
        "(same domain, N, D, ε, seed). Each run at its best target checkpoint; held = forgetting ≤ ε.",
        "",
        "## Goal",
        "",
        f"- budget held in ≥ {100 * g['share_held_goal']:.0f} % of adaptive runs: {pct(g['share_held'])} "
        f"(static plan: {pct(g['share_held_plan'])}) → {_yes(c['budget_held'])}",
        f"- fewer injected tokens than the static plan on average: {num(g['injected_tokens_mean'], ',.0f')} vs "
        f"{num(g['plan_injected_tokens_mean'], ',.0f')} tokens ({num(g['injected_sequences_mean'], '.1f')} vs "
        f"{num(g['plan_injected_sequences_mean'], '.1f')} sequences, ratio {num(g['injected_ratio'], '.3f')}) "
        f"→ {_yes(c['fewer_injected'])}",
        f"- best target loss no worse than +{100 * g['ft_tolerance']:.1f} % of the plan's: mean change "
        f"{pct(g['ft_change_mean'])} → {_yes(c['target_loss_kept'])}",
        f"- **goal met: {_yes(g['met']).strip('*')}**",
        "",
        "## Per (domain, N, D, ε) and arm",
        "",
        "| domain | N | D | ε (nats/token) | arm | runs | held | injected tokens | best target loss | "
        "forgetting | p mean | p final |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['domain']} | {r['model_params']:,.0f} | {r['target_tokens']:,.0f} | "
            f"{r['max_forgetting']:g} | {LABELS[r['arm']]} | {r['runs']} | {pct(r['share_held'])} | "
            f"{num(r['injected_tokens_mean'], ',.0f')} | "
            f"{num(r['ft_loss_mean'], '.4f')} | {num(r['forgetting_mean'], '.4f')} | {pct(r['inject_fraction_mean'])} | "
            f"{pct(r['inject_fraction_final_mean'])} |"
        )
    if png:
        lines += ["", f"![forgetting against budget and injected tokens]({png})"]
    lines += ["", "Machine-readable: adaptive.json (tokens, nats/token, fractions).", ""]
    return "\n".join(lines)


def plot(path: Path, runs: list[ArmRun], result: dict[str, Any]) -> None:
    """Left: each run's forgetting / ε against the tokens it injected (p = 0 once per ε). Right: the share
    of runs held per ε and arm, over every (domain, N, D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {AUTO: "tab:blue", PLAN: "tab:orange", P0: "tab:gray"}
    styles = {AUTO: "o-", PLAN: "s--", P0: "^:"}  # arms that coincide stay visible
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    by_name = {r.name: r for r in runs}
    for arm in ARMS:
        rows = [row for row in result["rows"] if row["arm"] == arm]
        pts = [(by_name[name].injected_sequences, by_name[name].forgetting / row["max_forgetting"])
               for row in rows for name in row["run_names"]]  # fmt: skip
        if pts:
            left.scatter(*zip(*pts), s=14, color=colors[arm], label=LABELS[arm])
        eps = sorted({row["max_forgetting"] for row in rows})
        held = [_mean([row["share_held"] for row in rows if row["max_forgetting"] == e]) for e in eps]
        if eps:
            right.plot(eps, held, styles[arm], color=colors[arm], label=LABELS[arm], alpha=0.8)
    left.axhline(1.0, color="k", lw=0.8, ls="--")
    left.set_xscale("symlog", linthresh=1)
    # p = 0 injects nothing: at 0, near the left edge; symlog leaves no margin on the right by itself
    left.set_xlim(-0.5, 1.5 * max([1] + [r.injected_sequences for r in runs]))
    left.set_xlabel("pretraining sequences injected by the best step")
    left.set_ylabel("forgetting / ε")
    left.legend(fontsize=7)
    right.axhline(result["goal"]["share_held_goal"], color="k", lw=0.8, ls="--")
    right.set_xscale("log")
    budgets = sorted({row["max_forgetting"] for row in result["rows"]})
    right.set_xticks(budgets, [f"{e:g}" for e in budgets])
    right.minorticks_off()
    right.legend(fontsize=7)
    right.set_ylim(-0.05, 1.05)
    right.set_xlabel("budget ε (nats/token)")
    right.set_ylabel("share of runs with forgetting ≤ ε")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def adaptive(sweep: Path, out: Path, baseline: Path | None = None) -> int:
    """Compare adaptive injection, the static planner's p and p = 0 on a sweep's finetunes.

    Writes ADAPTIVE.md (the goal check and a table per (domain, N, D, ε) and arm), adaptive.json (SI units:
    tokens, nats/token, fractions) and adaptive.png into --out; other files there are left alone.

    Args:
        sweep: the sweep's out_dir (its finetune/ folder holds the runs), e.g. work/sweeps/adaptive
        out: folder for ADAPTIVE.md, adaptive.json and adaptive.png
        baseline: a sweep whose p = 0 runs are the p = 0 arm (the sweep's adaptive.baseline, e.g.
            work/sweeps/micro); only those of the compared (domain, N, D, seed) are read
    """
    if not (sweep / "finetune").is_dir():
        raise UserError(
            f"{sweep / 'finetune'}: no finetune runs; run the sweep first (configs/sweep/adaptive.yaml)"
        )
    runs = read_runs(sweep)
    if baseline is not None:
        runs += baseline_runs(baseline, runs)
    if not any(r.arm == AUTO for r in runs):
        raise UserError(
            f"{sweep}: no finished run at inject_fraction auto (named ..._pauto_..-eps<ε>); run a sweep with "
            "grid.inject_fraction [0.0, auto] and grid.max_forgetting (configs/sweep/adaptive.yaml)"
        )
    result = compare(runs)
    out.mkdir(parents=True, exist_ok=True)
    plot(out / "adaptive.png", runs, result)
    write_json_atomic(out / "adaptive.json", json_finite({"sweep": str(sweep), **result,
                                                       "runs": [asdict(r) for r in runs]}))  # fmt: skip
    write_text_atomic(out / "ADAPTIVE.md", markdown(result, sweep, "adaptive.png"))
    g = result["goal"]
    print(f"{len(runs)} runs; held {pct(g['share_held'])} of {g['auto_runs']} adaptive runs; injected "
          f"{num(g['injected_ratio'], '.3f')} x the plan's; target loss {pct(g['ft_change_mean'])} vs the plan; "
          f"goal met: {_yes(g['met']).strip('*')}; wrote {out / 'ADAPTIVE.md'}")  # fmt: skip
    return 0
