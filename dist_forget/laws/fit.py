"""Fit one law form to runs: Huber loss on log-loss residuals, summed, L-BFGS-B from a grid of starts.

The objective is `sum_i w_i * huber_delta(log pred_i - log obs_i)` with an exact gradient (the forms give
the Jacobian of their log-terms), so every L-BFGS-B run costs a few milliseconds. The terms are summed,
not averaged: averaging shrinks the gradient by 1/n and makes L-BFGS-B stop early (Epoch AI traced
Chinchilla's too-narrow intervals to this). Bootstrap resamples are integer weights `w_i`, which is the
same objective as duplicating rows.

Every point of the start grid is evaluated first (one vectorised pass), the `top_k` best are refined
together by `solve_batch` (a vectorised Levenberg-Marquardt, below), and L-BFGS-B finishes from the best
`lbfgs_starts` of those; the lowest objective wins. `top_k = 0` refines every grid point, like Epoch
AI's refit: on Chinchilla's 4,500 starts that took ~2 min here and found the same optimum as the
default top_k = 16 (~1.5 s), which is why the default prescreens.

`solve_batch` minimises the same objective for many starts or many bootstrap weight vectors at once:
Gauss-Newton steps with the Huber loss's own curvature (1 inside delta, 0 outside), damped
Levenberg-Marquardt style and accepted only when the objective drops. Once the set of small residuals
settles this is a Newton step on a quadratic, so it converges in ~20 steps where L-BFGS-B needs ~50,
and each step is one numpy pass for the whole batch instead of a Python round trip per problem.
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
    top_k: int = 16  # starts taken from the best grid points; 0 = every grid point
    lbfgs_starts: int = 2  # L-BFGS-B runs, from the best refined starts
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

    def __init__(
        self,
        form: LawForm,
        cols: Cols,
        observed: np.ndarray,
        cfg: FitConfig,
        weights: np.ndarray | None = None,
    ):
        self.form, self.cols, self.cfg = form, cols, cfg
        self.log_obs = np.log(observed)
        self.weights = np.ones_like(self.log_obs) if weights is None else np.asarray(weights, dtype=float)

    def __call__(self, th: np.ndarray) -> tuple[float, np.ndarray]:
        log_pred, grad_log_pred = self.form.evaluate(th, self.cols)
        value, psi = self.rho(log_pred - self.log_obs)
        return float(self.weights @ value), (self.weights * psi) @ grad_log_pred

    def values(self, thetas: np.ndarray) -> np.ndarray:
        """Objective at each row of `thetas` (S, k), in one vectorised pass."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = self.form.log_predict(thetas.T[:, :, None], self.cols) - self.log_obs
            return (self.rho(r)[0] * self.weights).sum(axis=1)

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
    with single_threaded_blas():
        res = minimize(
            obj,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=obj.form.bounds(),
            options={"maxiter": cfg.maxiter, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20},
        )
    return res.x, float(res.fun), bool(res.success)


def best_starts(obj: Objective, grid: np.ndarray, top_k: int) -> np.ndarray:
    """The `top_k` grid points with the lowest objective (all of them if top_k is 0), best first."""
    if top_k == 0 or top_k >= len(grid):
        return grid
    values = np.concatenate([obj.values(grid[i : i + 512]) for i in range(0, len(grid), 512)])
    values[~np.isfinite(values)] = np.inf
    return grid[np.argsort(values, kind="stable")[:top_k]]


def solve_batch(
    form: LawForm,
    cols: Cols,
    observed: np.ndarray,
    weights: np.ndarray,
    theta0: np.ndarray,
    cfg: FitConfig,
    max_iter: int = 100,
    rtol: float = 1e-12,
    finish_stuck: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted objective for each row of `weights` from `theta0`: (thetas (B, k), values (B,))."""
    obj = Objective(form, cols, observed, cfg)
    log_obs = obj.log_obs
    weights = np.broadcast_to(weights, (len(theta0) if np.ndim(theta0) == 2 else len(weights), len(observed)))
    lo, hi = (np.array(b) for b in zip(*form.bounds()))
    count, k = weights.shape[0], len(form.params)
    theta = np.broadcast_to(np.asarray(theta0, dtype=float), (count, k)).copy()

    def evaluate(th: np.ndarray, w: np.ndarray, curvature: bool):
        log_pred, grad = form.evaluate(th.T[:, :, None], cols)
        r = log_pred - log_obs
        value, psi = obj.rho(r)
        f = (w * value).sum(axis=1)
        if not curvature:
            return f, None, None
        g = np.einsum("bn,bnk->bk", w * psi, grad)
        # Curvature of the Huber loss itself (1 inside delta, 0 outside): a semismooth Newton step that
        # lands on the optimum once the set of small residuals settles (~20 steps). The damping scales
        # with the IRLS curvature psi(r)/r, which is never zero, so a damped step is a scaled gradient.
        small = np.abs(r) <= cfg.delta if cfg.loss == "huber" else np.ones_like(r, dtype=bool)
        hess = np.einsum("bn,bnk,bnl->bkl", w * small, grad, grad)
        irls = w * np.where(small, 1.0, psi / np.where(small, 1.0, r))
        scale = np.einsum("bn,bnk->bk", irls, grad * grad) + 1e-12
        return f, g, (hess, scale)

    damping = np.full(count, 1e-4)
    done = np.zeros(count, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        f, g, (hess, scale) = evaluate(theta, weights, True)
        for _ in range(max_iter):
            act = np.flatnonzero(~done)
            if act.size == 0:
                break
            system = hess[act] + (damping[act, None] * scale[act])[:, :, None] * np.eye(k)
            try:
                step = -np.linalg.solve(system, g[act][:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                step = -g[act] / (damping[act, None] * scale[act])
            cand = np.clip(theta[act] + step, lo, hi)
            f_new, _, _ = evaluate(cand, weights[act], False)
            better = np.isfinite(f_new) & (f_new < f[act])
            gain = np.where(better, (f[act] - f_new) / np.maximum(np.abs(f[act]), 1e-300), 0.0)
            acc = act[better]
            theta[acc] = cand[better]
            damping[acc] = np.maximum(damping[acc] / 3.0, 1e-12)
            damping[act[~better]] *= 4.0
            if acc.size:
                f[acc], g[acc], (hess[acc], scale[acc]) = evaluate(theta[acc], weights[acc], True)
            # Finished: a tiny accepted gain, or no descent left even for a gradient-like step.
            done[act[better & (gain < rtol)]] = True
            done[act[~better & (damping[act] > 1e8)]] = True
    stuck = np.flatnonzero(~done) if finish_stuck else []
    for i in stuck:  # rare (e.g. a parameter pinned at a bound): fall back to L-BFGS-B
        theta[i], f[i], _ = lbfgs(Objective(form, cols, observed, cfg, weights[i]), theta[i], cfg)
    return theta, f


def check_identifiable(form: LawForm, runs: Runs, what: str) -> None:
    for col in form.requires:
        if col not in runs.values:
            raise UserError(
                f"{what}: form {form.name!r} needs the column {col} (written to summary.json by this version "
                f"of dist-forget); rerun or re-collect the runs, or choose another --forms"
            )
    if form.name == "kalajdzievski":
        gain = runs.values["ft_loss_base"] - runs.values["ft_loss"]
        if (gain <= 0).any():
            i = int(np.argmax(gain <= 0))
            raise UserError(
                f"{what}: {runs.source[i]} (run {runs.run_id[i]}): ft_loss {runs.values['ft_loss'][i]:.4g} is "
                f"not below ft_loss_base {runs.values['ft_loss_base'][i]:.4g}, so form 'kalajdzievski' has "
                f"no finetuning progress to relate forgetting to; drop that run or choose another --forms"
            )
    if form.law == "bottom" and (runs.values["steps"] <= 0).any():
        i = int(np.argmax(runs.values["steps"] <= 0))
        raise UserError(
            f"{what}: {runs.source[i]} (run {runs.run_id[i]}): its best target evaluation is at step "
            f"{runs.values['steps'][i]:g}, so form 'bottom-step' has no bottom to place; drop that run or "
            "choose another --forms"
        )
    k = len(form.params)
    if len(runs) < k:
        raise UserError(
            f"{what}: {len(runs)} runs for form {form.name!r} with {k} parameters; it needs at least {k} runs"
        )
    for col in form.varies:
        distinct = np.unique(runs.values[col])
        if distinct.size < 2:
            raise UserError(
                f"{what}: all {len(runs)} runs have {col} = {distinct[0]:g}; form {form.name!r} "
                f"needs {col} to vary (add runs at other values or choose another --forms)"
            )


def fit_form(
    form: LawForm,
    runs: Runs,
    cfg: FitConfig,
    weights: np.ndarray | None = None,
    starts: np.ndarray | None = None,
) -> PointFit:
    """Best L-BFGS-B fit of `form` to `runs` over the start grid (or the given `starts`)."""
    observed = runs.values[form.target]
    obj = Objective(form, runs.values, observed, cfg, weights)
    best: tuple[np.ndarray, float, bool] | None = None
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if starts is None:
            starts = best_starts(obj, form.grid(), cfg.top_k)
        starts = np.atleast_2d(starts)
        # Refine all starts at once, then let L-BFGS-B finish from the best few (see module docstring).
        # Chunks of 256 keep the (starts, runs, params) arrays in cache for big grids.
        parts = [
            solve_batch(
                form, runs.values, observed, obj.weights, starts[i : i + 256], cfg, finish_stuck=False
            )
            for i in range(0, len(starts), 256)
        ]
        refined = np.concatenate([t for t, _ in parts])
        values = np.concatenate([v for _, v in parts])
        values[~np.isfinite(values)] = np.inf
        for start in refined[np.argsort(values, kind="stable")[: max(1, cfg.lbfgs_starts)]]:
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
