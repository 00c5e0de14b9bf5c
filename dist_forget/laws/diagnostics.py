"""Fit diagnostics: why a fitted law cannot answer a question, as short codes with words.

A fit can converge and still say nothing: a parameter that sits on its search bound was not determined
by the runs (its value is the box's, not the data's), an exponent near 0 says the effect it stands for
is absent from these runs, a scale whose 95 % interval spans more than 100x is not known to even an
order of magnitude, an N exponent fitted on fewer than three sizes is a line through two points, and a
law that predicts held-out runs far worse than the runs it was fitted on does not extrapolate. Each
warning names the parameters it concerns, so a consumer (the planner) can refuse exactly the answers
that depend on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dist_forget.laws.forms import Cols, LawForm

EXPONENT_MIN = 0.01  # an exponent below this is "no effect" at any scale a study can reach
CI_RATIO_MAX = 100.0  # a scale parameter's 95 % interval hi/lo above this is not an estimate
HOLDOUT_RATIO_MAX = 3.0  # held-out MRE above this many times the in-sample MRE: no extrapolation ...
HOLDOUT_FLOOR = 0.005  # ... once it is above 0.5 % at all (tiny in-sample errors make any ratio large)
BOUND_TOL = 1e-3  # internal-space distance to a bound that counts as "on" it
VANISHED = 1e-4  # a scale whose removal changes no prediction by more than this is at its lower bound
MIN_SIZES = 3

# Which parameter carries the N dependence in each form (the one too few sizes leave unidentified).
N_EXPONENT = "alpha"


def warning(code: str, message: str, params: list[str]) -> dict[str, Any]:
    return {"code": code, "message": message, "params": params}


def diagnose(form: LawForm, theta: np.ndarray, record: dict[str, Any], cols: Cols) -> list[dict[str, Any]]:
    """Warnings for one fitted record (fit.json entry): `theta` in internal space, `cols` its runs."""
    out: list[dict[str, Any]] = []
    values = record["params"]
    predicted = form.predict(theta, cols)
    for j, (p, v) in enumerate(zip(form.params, theta)):
        lo, hi = p.bounds
        for side, bound in (("lower", lo), ("upper", hi)):
            # An exponent at 0 is the same finding as exponent_near_zero below: report it once.
            if not p.log and side == "lower":
                continue
            # A scale whose term has vanished (E ~ 1e-13) is on its bound in effect even where L-BFGS
            # stopped short of it: moving it there changes no prediction.
            moved = theta.copy()
            moved[j] = bound
            with np.errstate(over="ignore", invalid="ignore"):
                change = np.max(np.abs(form.predict(moved, cols) / predicted - 1.0))
            if abs(float(v) - bound) <= BOUND_TOL or (p.log and side == "lower" and change < VANISHED):
                shown = float(p.to_value(bound))
                out.append(
                    warning(
                        "param_at_bound",
                        f"{p.name} = {values[p.name]:.4g} sits on the {side} bound {shown:.4g} of its search box "
                        f"(in effect: its term changes no prediction by {100 * VANISHED:g} %): the runs do not "
                        f"determine it",
                        [p.name],
                    )
                )
    for p in form.params:
        if not p.log and values[p.name] < EXPONENT_MIN:
            out.append(
                warning(
                    "exponent_near_zero",
                    f"{p.name} = {values[p.name]:.3g} < {EXPONENT_MIN}: the effect it stands for is absent in these runs",
                    [p.name],
                )
            )
    ci = record.get("ci95") or {}
    for p in form.params:
        lo_hi = ci.get(p.name)
        if not p.log or not lo_hi or lo_hi[0] is None or lo_hi[1] is None:
            continue
        lo, hi = float(lo_hi[0]), float(lo_hi[1])
        if lo <= 0 or not np.isfinite(hi) or hi / lo > CI_RATIO_MAX:
            out.append(
                warning(
                    "ci_too_wide",
                    f"{p.name}'s 95 % interval [{lo:.3g}, {hi:.3g}] spans more than {CI_RATIO_MAX:.0f}x",
                    [p.name],
                )
            )
    sizes = len(np.unique(cols["model_params"]))
    if "model_params" in form.varies and sizes < MIN_SIZES and N_EXPONENT in form.param_names:
        out.append(
            warning(
                "too_few_sizes",
                f"{sizes} distinct model sizes: {N_EXPONENT} is not identifiable from fewer than {MIN_SIZES}",
                [N_EXPONENT],
            )
        )
    held = record.get("holdout") or {}
    if held and held.get("mre") is not None and record.get("mre") is not None:
        if held["mre"] > max(HOLDOUT_RATIO_MAX * record["mre"], HOLDOUT_FLOOR):
            out.append(
                warning(
                    "holdout_worse_than_noise",
                    f"held-out MRE {100 * held['mre']:.2f} % is over {HOLDOUT_RATIO_MAX:.0f}x the in-sample "
                    f"{100 * record['mre']:.2f} % (and over {100 * HOLDOUT_FLOOR:g} %): the law does not extrapolate "
                    f"to the held-out size",
                    list(form.param_names),
                )
            )
    return out


def blocking(record: dict[str, Any], depends_on: list[str]) -> list[dict[str, Any]]:
    """The warnings of `record` that concern any parameter in `depends_on`."""
    return [w for w in record.get("warnings") or [] if set(w.get("params", [])) & set(depends_on)]


def format_warnings(record: dict[str, Any]) -> list[str]:
    return [f"{w['code']}: {w['message']}" for w in record.get("warnings") or []]
