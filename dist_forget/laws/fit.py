"""Fit one law form to runs: Huber loss on log-loss residuals, summed, L-BFGS-B from a grid of starts.

The objective is `sum_i w_i * huber_delta(log pred_i - log obs_i)` with an exact gradient (the forms give
the Jacobian of their log-terms), so every L-BFGS-B run costs a few milliseconds. The terms are summed,
not averaged: averaging shrinks the gradient by 1/n and makes L-BFGS-B stop early (Epoch AI traced
Chinchilla's too-narrow intervals to this). Bootstrap resamples are integer weights `w_i`, which is the
same objective as duplicating rows.

Every point of the start grid is evaluated first (cheap: one objective each), and L-BFGS-B runs from the
`top_k` best of them; `top_k = 0` runs it from every grid point, like Epoch AI's refit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import minimize

from dist_forget.errors import UserError
from dist_forget.laws._blas import single_threaded_blas
from dist_forget.laws.forms import Cols, LawForm
from dist_forget.laws.table import Runs


@dataclass
class FitConfig:
    delta: float = 1e-3  # Huber threshold on log-loss residuals (paper and Chinchilla: 1e-3)
    loss: Literal["huber", "squared"] = "huber"
    top_k: int = 16  # L-BFGS-B starts taken from the best grid points; 0 = every grid point
    maxiter: int = 2000
    bootstrap: int = 1000
    seed: int = 0
    workers: int = 0  # bootstrap processes; 0 = one per CPU core

    def validate(self) -> None:
        if not self.delta > 0:
            raise UserError(f"--delta {self.delta} must be > 0 (the Huber threshold, default 1e-3)")
        if self.bootstrap < 0:
            raise UserError(f"--bootstrap {self.bootstrap} must be >= 0 (0 skips intervals)")
        if self.top_k < 0:
            raise UserError(f"top_k {self.top_k} must be >= 0 (0 = start from every grid point)")


@dataclass
class PointFit:
    """A fitted form: internal parameters, objective value, and per-run predictions."""

    form: LawForm
    theta: np.ndarray
    objective: float
    predicted: np.ndarray
    observed: np.ndarray
    converged: bool = True
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, float]:
        return self.form.to_values(self.theta)


class Objective:
    """Weighted summed Huber (or squared) loss of log residuals and its exact gradient."""

    def __init__(self, form: LawForm, cols: Cols, observed: np.ndarray, cfg: FitConfig,
                 weights: np.ndarray | None = None):
        self.form, self.cols, self.cfg = form, cols, cfg
        self.log_obs = np.log(observed)
        self.weights = np.ones_like(self.log_obs) if weights is None else np.asarray(weights, dtype=float)

    def __call__(self, th: np.ndarray) -> tuple[float, np.ndarray]:
        log_pred, grad_log_pred = self.form.evaluate(th, self.cols)
        value, psi = self.rho(log_pred - self.log_obs)
        return float(self.weights @ value), (self.weights * psi) @ grad_log_pred

    def value(self, th: np.ndarray) -> float:
        r = self.form.log_predict(th, self.cols) - self.log_obs
        return float(self.weights @ self.rho(r)[0])

    def rho(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Loss per residual and its derivative."""
        if self.cfg.loss == "squared":
            return 0.5 * r * r, r
        d = self.cfg.delta
        small = np.abs(r) <= d
        value = np.where(small, 0.5 * r * r, d * (np.abs(r) - 0.5 * d))
        return value, np.where(small, r, d * np.sign(r))


def lbfgs(obj: Objective, start: np.ndarray, cfg: FitConfig) -> tuple[np.ndarray, float, bool]:
    # Tight tolerances: the Huber objective is nearly piecewise linear for delta = 1e-3, and the default
    # ftol stops L-BFGS-B on its flat stretches well before the optimum.
    res = minimize(obj, start, jac=True, method="L-BFGS-B", bounds=obj.form.bounds(),
                   options={"maxiter": cfg.maxiter, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20})
    return res.x, float(res.fun), bool(res.success)


def best_starts(obj: Objective, grid: np.ndarray, top_k: int) -> np.ndarray:
    if top_k == 0 or top_k >= len(grid):
        return grid
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.array([obj.value(g) for g in grid])
    values[~np.isfinite(values)] = np.inf
    return grid[np.argsort(values, kind="stable")[:top_k]]


def check_identifiable(form: LawForm, runs: Runs, what: str) -> None:
    k = len(form.params)
    if len(runs) < k:
        raise UserError(f"{what}: {len(runs)} runs for form {form.name!r} with {k} parameters; it needs at "
                        f"least {k} runs")
    for col in form.varies:
        distinct = np.unique(runs.values[col])
        if distinct.size < 2:
            raise UserError(f"{what}: all {len(runs)} runs have {col} = {distinct[0]:g}; form {form.name!r} "
                            f"needs {col} to vary (add runs at other values or choose another --forms)")


def fit_form(form: LawForm, runs: Runs, cfg: FitConfig, weights: np.ndarray | None = None,
             starts: np.ndarray | None = None) -> PointFit:
    """Best L-BFGS-B fit of `form` to `runs` over the start grid (or the given `starts`)."""
    observed = runs.values[form.target]
    obj = Objective(form, runs.values, observed, cfg, weights)
    best: tuple[np.ndarray, float, bool] | None = None
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if starts is None:
            starts = best_starts(obj, form.grid(), cfg.top_k)
        for start in np.atleast_2d(starts):
            theta, value, ok = lbfgs(obj, start, cfg)
            if np.isfinite(value) and (best is None or value < best[1]):
                best = (theta, value, ok)
    if best is None:
        raise UserError(f"form {form.name!r}: no start gave a finite loss; check the runs' losses and sizes")
    theta, value, ok = best
    predicted = form.predict(theta, runs.values)
    return PointFit(form, theta, value, predicted, observed, ok, error_stats(predicted, observed))


def error_stats(predicted: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    """Mean and max relative error (fractions) and R^2 of the loss itself."""
    rel = np.abs(predicted - observed) / observed
    ss_res = float(((observed - predicted) ** 2).sum())
    ss_tot = float(((observed - observed.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    return {"mre": float(rel.mean()), "max_re": float(rel.max()), "r2": r2}
