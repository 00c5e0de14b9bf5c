"""`dist-forget study closed-loop`: a forgetting-budget controller checked in closed loop, in seconds.

A sweep of the adaptive grid takes ~45 min on 2 cores; this replays it on a plant fitted to the micro
study's runs, so that a controller rule is compared with the last measured sweep before one is spent.

The plant is first order in the forgetting F (nats/token) over the optimizer step t:

    dF/dt = c·κ·t^(κ−1) − r·p_t·F

- drift: without injection forgetting grows as c·t^κ; within the micro runs at p = 0 the exponent
  (ln(F_t/F_T) / ln(t/T) up to the best step T) is 0.4–1.2, median 0.7;
- recovery: injected pretraining data pulls F back at a rate proportional to p and to F, so at a constant
  p forgetting grows more slowly and levels off (at p = 5 % the same exponent has median 0.4).
κ = 0.5 by default: with it the replay of the measured sweep under the rule that sweep ran comes closest
to what it measured (`--kappa` 0.6 and 0.7 are the checks of a choice made on this plant).
Per (domain, N, D), c comes from the micro study's p = 0 run (F_T = c·T^κ at its best step) and r from
its p = 5 % run; its p = 1 % run, not used to fit, checks the plant (`check` in the output).

The points, budgets ε and the plan's p are those of a measured `study adaptive` (adaptive.json); every
run lasts until the best step of the point's p = 1 % run, evaluated every 25 steps, 16 sequences per step
(configs/sweep/adaptive.yaml). Arms: the static plan; the smallest constant p that holds ε (known only in
hindsight); the measured-forgetting rule (the controller without a predicted bottom); the shipped rule
(engine/inject_control.py, with the bottom-step law fitted on the same runs); and a bound, the constant p
re-chosen at each evaluation by a controller that knows c and r. The measured sweep's own outcome is shown
beside them: the plant is only as good as its match there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.optimize import brentq

from dist_forget.engine.inject_control import InjectController
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.laws.fit import FitConfig, fit_form
from dist_forget.laws.forms import get_form
from dist_forget.laws.plan import predict_bottom_step
from dist_forget.laws.table import Runs, read_runs
from dist_forget.numfmt import json_finite
from dist_forget.schema import METRICS_FILE, read_metrics
from dist_forget.study import protocol

KAPPA = 0.5  # drift exponent of the plant (default)
EVAL_EVERY = 25  # steps between evaluations (configs/sweep/adaptive.yaml)
BATCH = 16  # sequences per step
P_CAP = 0.2  # inject_max of the adaptive grid


class Controller(Protocol):
    p: float

    def update(self, forgetting: float, step: int) -> float: ...


@dataclass(frozen=True)
class Plant:
    c: float  # drift scale: F = c·t^κ at p = 0
    r: float  # recovery per step and unit of p
    kappa: float = KAPPA

    def step(self, f: float, t: int, p: float) -> float:
        """F after step t: the drift over (t − 1, t] taken exactly, so that F = c·t^κ at p = 0."""
        return f + self.c * (t**self.kappa - (t - 1) ** self.kappa) - self.r * p * f

    def constant(self, p: float, steps: float, f: float = 0.0, start: int = 0) -> float:
        """F after running at a constant p from step `start` (where F = f) to `steps`."""
        for t in range(start + 1, int(steps) + 1):
            f = self.step(f, t, p)
        return f


class _Constant:
    def __init__(self, p: float) -> None:
        self.p = p

    def update(self, forgetting: float, step: int) -> float:
        return self.p


class _KnownPlant:
    """The bound: at each evaluation, the constant p for the rest of the run that ends at s·ε (s as in the
    shipped rule) at the bottom (known here), re-chosen with the measured F."""

    def __init__(self, plant: Plant, eps: float, p0: float, bottom: float, setpoint: float = 0.8) -> None:
        self.plant, self.target, self.p, self.bottom = plant, setpoint * eps, p0, bottom

    def update(self, forgetting: float, step: int) -> float:
        end = max(self.bottom, step + EVAL_EVERY)
        self.p = _solve(lambda p: self.plant.constant(p, end, forgetting, step), self.target)
        return self.p


def _solve(final: Callable[[float], float], eps: float) -> float:
    """Smallest p in [0, P_CAP] with final(p) <= eps (P_CAP when none does)."""
    if final(0.0) <= eps:
        return 0.0
    if final(P_CAP) > eps:
        return P_CAP
    return float(brentq(lambda p: final(p) - eps, 0.0, P_CAP, xtol=1e-6))


def run(plant: Plant, controller: Controller, steps: float) -> tuple[float, float]:
    """Forgetting at `steps` and the pretraining sequences injected up to it, `controller` in the loop."""
    f = injected = 0.0
    for t in range(1, int(steps) + 1):
        f = plant.step(f, t, controller.p)
        injected += controller.p * BATCH
        if t % EVAL_EVERY == 0 and t < steps:
            controller.update(f, t)
    return f, injected


def calibrate(f0: float, t0: float, f5: float, t5: float, kappa: float = KAPPA) -> Plant:
    """The plant through a p = 0 run (forgetting f0 at best step t0) and a p = 5 % run (f5 at t5)."""
    c = f0 / t0**kappa
    if not 0 < f5 < Plant(c, 0.0, kappa).constant(0.05, t5):
        raise UserError(f"p = 5 % forgetting {f5:.4g} at step {t5:g} is not below the p = 0 drift there")
    r = brentq(lambda r: Plant(c, r, kappa).constant(0.05, t5) - f5, 1e-9, 10.0)
    return Plant(c, float(r), kappa)


def _micro_points(
    table: Runs, runs_csv: Path
) -> dict[tuple[str, float, float], dict[float, tuple[float, float]]]:
    """(domain, N, D rounded to 1k) -> {p: (forgetting, best step)}, seed 0 and plain AdamW."""
    if "steps" not in table.values or "forgetting" not in table.values:
        raise UserError(f"{runs_csv}: needs the columns steps and forgetting (runs.csv of a study report)")
    seeds = table.extra.get("seed", ["0"] * len(table))
    out: dict[tuple[str, float, float], dict[float, tuple[float, float]]] = {}
    v = table.values
    for i in range(len(table)):
        if v["anchor_decay"][i] != 0 or str(seeds[i]) not in ("0", "0.0"):
            continue
        key = (str(table.domain[i]), float(v["model_params"][i]), round(float(v["target_tokens"][i]), -3))
        out.setdefault(key, {})[float(v["inject_fraction"][i])] = (
            float(v["forgetting"][i]),
            float(v["steps"][i]),
        )
    return out


def _bottom_fit(table: Runs, domain: str) -> dict[str, Any]:
    """The bottom-step law fitted on the domain's runs, as a fit.json record (what a prior fit holds)."""
    form = get_form("bottom-step")
    fit = fit_form(form, table.for_domain(domain), FitConfig(bootstrap=0))
    return {"domain": domain, "form": form.name, "params": fit.params}


def growth_exponents(sweep: Path) -> dict[str, dict[str, float]]:
    """How forgetting grows along the finished finetunes of a sweep, by p (plain AdamW, seed 0): the
    exponent ln(F_t/F_T) / ln(t/T) at the evaluation nearest t = T/10 (T: the best step), and F at the first
    evaluation as a share of F_T. Runs with F_T <= 0 or T < 100 steps say nothing about a shape."""
    by_p: dict[float, list[tuple[float, float]]] = {}
    for run, summary, _, _ in protocol.run_files(sweep, "finetune"):
        if summary.get("anchor_decay") or not run.name.endswith("_s0"):
            continue
        total, best = float(summary["forgetting"]), float(summary["steps"])
        evals = [
            (float(e["step"]), float(e["pt_loss"])) for e in read_metrics(run / METRICS_FILE, kind="eval")
        ]
        if total <= 0 or best < 100 or len(evals) < 3:
            continue
        base = evals[0][1]
        before = [e for e in evals[1:] if e[0] < best]
        step, pt = min(before, key=lambda e: abs(e[0] / best - 0.1))
        exponent = math.log((pt - base) / total) / math.log(step / best) if pt > base else math.nan
        by_p.setdefault(float(summary["inject_fraction"]), []).append(
            (exponent, (evals[1][1] - base) / total)
        )
    return {
        f"{p:g}": {"runs": len(xs), "exponent_median": float(np.nanmedian([x[0] for x in xs])),
                   "exponent_min": float(np.nanmin([x[0] for x in xs])),
                   "exponent_max": float(np.nanmax([x[0] for x in xs])),
                   "first_eval_share_median": float(np.median([x[1] for x in xs]))}
        for p, xs in sorted(by_p.items())
    }  # fmt: skip


def closed_loop(
    runs: Path, adaptive: Path, out: Path | None = None, kappa: float = KAPPA, sweep: Path | None = None
) -> int:
    """Replay a measured adaptive sweep on a plant fitted to the micro study; compare controller rules.

    Prints, per arm, the share of budgets held and the injected sequences against the plan's, and writes
    closed_loop.json (fractions, sequences) into --out when given.

    Args:
        runs: the runs.csv of the micro study the adaptive sweep ran beside, p = 0, 1 % and 5 % at every
            point (for reports/adaptive: reports/micro/pilots/english-19m-4-sizes/runs.csv)
        adaptive: a `study adaptive` result (reports/adaptive/adaptive.json): points, budgets, the plan's p
        out: folder for closed_loop.json
        kappa: the plant's drift exponent (F = c·t^κ at p = 0); the micro runs measure 0.4-1.2, and 0.5-0.6
            reproduce the measured sweep's outcome under the rule it ran
        sweep: the micro study's run folder (work/sweeps/micro): also measure how forgetting grows along
            its finetunes (metrics.jsonl), the shape the plant and the controller's projection assume
    """
    if not 0 < kappa < 2:
        raise UserError(f"--kappa {kappa} must be in (0, 2): forgetting grows as t^kappa without injection")
    if sweep is not None and not (sweep / "finetune").is_dir():
        raise UserError(
            f"--sweep {sweep}: no finetune/ folder; give the micro study's out_dir (work/sweeps/micro)"
        )
    result = compare(runs, adaptive, kappa)
    if sweep is not None:
        result["growth"] = growth_exponents(sweep)
        for p, g in result["growth"].items():
            print(f"p = {p}: forgetting grows as t^{g['exponent_median']:.2f} (median; {g['exponent_min']:.2f}-"
                  f"{g['exponent_max']:.2f} over {g['runs']} runs) to the bottom; the first evaluation has "
                  f"{100 * g['first_eval_share_median']:.0f} % of it")  # fmt: skip
    for name, arm in result["arms"].items():
        print(f"{name:<22} held {arm['held']}/{arm['runs']} ({100 * arm['share_held']:.1f} %), injected "
              f"{arm['injected_ratio']:.2f}x the plan's, forgetting/ε median {arm['ratio_median']:.2f} "
              f"max {arm['ratio_max']:.2f}")  # fmt: skip
    chk = result["check"]
    print(f"plant check on the p = 1 % runs ({chk['points']} points): mean |error| "
          f"{100 * chk['mean_abs_error']:.1f} %, mean {100 * chk['mean_error']:+.1f} %")  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "closed_loop.json", json_finite(result))
        print(f"wrote {out / 'closed_loop.json'}")
    return 0


def compare(runs: Path, adaptive: Path, kappa: float = KAPPA) -> dict[str, Any]:
    """The closed-loop comparison as plain data (see the module docstring)."""
    table = read_runs(str(runs))
    points = _micro_points(table, runs)
    try:
        measured = json.loads(adaptive.read_text())
        by_name = {r["name"]: r for r in measured["runs"]}
        pairs = measured["pairs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{adaptive}: not a `dist-forget study adaptive` result ({exc})") from None
    bottom_fits: list[dict[str, Any]] = []
    plants: dict[tuple[str, float, float], tuple[Plant, float]] = {}
    errors = []
    for key, by_p in points.items():
        if not {0.0, 0.01, 0.05} <= set(by_p):
            continue
        plant = calibrate(*by_p[0.0], *by_p[0.05], kappa=kappa)
        f1, t1 = by_p[0.01]
        errors.append(plant.constant(0.01, t1) / f1 - 1.0)
        plants[key] = (plant, t1)
    outcomes: dict[str, list[tuple[bool, float, float]]] = {}
    for pair in pairs:
        auto, plan = by_name[pair["run"]], by_name[pair["plan_run"]]
        key = (auto["domain"], float(auto["model_params"]), round(float(auto["target_tokens"]), -3))
        if key not in plants:
            raise UserError(f"{runs}: no p = 0, 1 % and 5 % runs at {key}, a point of {adaptive}")
        plant, steps = plants[key]
        eps, p_plan = float(pair["max_forgetting"]), float(plan["inject_fraction"])
        if not any(f["domain"] == auto["domain"] for f in bottom_fits):
            bottom_fits.append(_bottom_fit(table, auto["domain"]))
        bottom = predict_bottom_step(bottom_fits, auto["domain"], key[1], key[2])
        p_hindsight = _solve(partial(plant.constant, steps=steps), eps)
        arms: dict[str, Controller] = {
            "static plan": _Constant(p_plan),
            "hindsight constant p": _Constant(p_hindsight),
            "measured-F rule": InjectController(eps, p_plan, P_CAP, setpoint=0.8, growth=0.0),
            "shipped rule": InjectController(eps, p_plan, P_CAP, bottom_step=bottom),
            "known-plant bound": _KnownPlant(plant, eps, p_plan, steps),
        }
        for name, controller in arms.items():
            f, injected = run(plant, controller, steps)
            # held to solver precision: the hindsight p lands on ε itself
            outcomes.setdefault(name, []).append((f <= eps * (1 + 1e-6), injected, f / eps))
        real = (auto["forgetting"] <= eps, float(pair["injected_sequences"]), auto["forgetting"] / eps)
        outcomes.setdefault("measured sweep (real)", []).append(real)
    plan_injected = sum(x[1] for x in outcomes["static plan"])
    real_plan = sum(float(p["plan_injected_sequences"]) for p in pairs)
    result_arms = {}
    for name, xs in outcomes.items():
        base = real_plan if name == "measured sweep (real)" else plan_injected
        ratios = [x[2] for x in xs]
        result_arms[name] = {
            "runs": len(xs), "held": int(sum(x[0] for x in xs)), "share_held": sum(x[0] for x in xs) / len(xs),
            "injected_sequences_mean": sum(x[1] for x in xs) / len(xs),
            "injected_ratio": sum(x[1] for x in xs) / base if base else math.nan,
            "ratio_median": float(np.median(ratios)), "ratio_max": float(max(ratios)),
        }  # fmt: skip
    return {
        "runs": str(runs), "adaptive": str(adaptive), "kappa": kappa, "eval_every": EVAL_EVERY, "batch": BATCH,
        "check": {"points": len(errors), "mean_abs_error": float(np.mean(np.abs(errors))),
                  "mean_error": float(np.mean(errors))},
        "arms": result_arms,
    }  # fmt: skip
