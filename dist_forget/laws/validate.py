"""Held-out validation: fit on smaller models, predict larger ones (the question the laws exist for).

`largest` fits on N < N_max and scores the N_max runs; `leave-one-size-out` does that for every size in
turn and pools the held-out predictions; `ladder_walk` fits on the k smallest sizes and scores the next
one up, for every k (does the error shrink as the fit sees more sizes?). Errors are relative errors of
the loss itself (fractions).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from dist_forget.errors import UserError
from dist_forget.laws.fit import FitConfig, check_identifiable, error_stats, fit_form
from dist_forget.laws.forms import LawForm
from dist_forget.laws.table import Runs

Holdout = Literal["none", "largest", "leave-one-size-out"]


def _held_out_fit(
    form: LawForm, runs: Runs, size: float, cfg: FitConfig, what: str, train_mask: np.ndarray | None = None
) -> np.ndarray:
    """Fit on the training rows (default: every other size), predict the rows of N = `size`."""
    n = runs.values["model_params"]
    train, test = runs.subset(n != size if train_mask is None else train_mask), runs.subset(n == size)
    try:
        check_identifiable(form, train, f"{what} without N = {size:g}")
    except UserError as exc:
        raise UserError(
            f"{exc} (holdout needs one more model size than the law; try --holdout none)"
        ) from None
    point = fit_form(form, train, cfg)
    return form.predict(point.theta, test.values)


def holdout(form: LawForm, runs: Runs, cfg: FitConfig, mode: Holdout, what: str) -> dict[str, Any]:
    """In-sample fits on the other sizes, scored on the held-out size(s)."""
    if mode == "none":
        return {}
    n = runs.values["model_params"]
    sizes = np.unique(n)
    observed = runs.values[form.target]
    held = [sizes[-1]] if mode == "largest" else list(sizes)
    predicted = np.full(len(runs), np.nan)
    per_size = []
    for size in held:
        mask = n == size
        predicted[mask] = _held_out_fit(form, runs, float(size), cfg, what)
        stats = error_stats(predicted[mask], observed[mask])
        per_size.append(
            {
                "model_params": float(size),
                "n_runs": int(mask.sum()),
                "mre": stats["mre"],
                "max_re": stats["max_re"],
            }
        )
    scored = ~np.isnan(predicted)
    stats = error_stats(predicted[scored], observed[scored])
    out: dict[str, Any] = {
        "mode": mode,
        "n_test": int(scored.sum()),
        "mre": stats["mre"],
        "max_re": stats["max_re"],
        "r2": stats["r2"],
        "per_size": per_size,
    }
    if mode == "largest":
        out["held_out_model_params"] = float(sizes[-1])
        out["n_train"] = int((~scored).sum())
    return out


def ladder_walk(form: LawForm, runs: Runs, cfg: FitConfig, what: str) -> list[dict[str, Any]]:
    """For k = 2 .. S-1: fit on the k smallest sizes, score the next size up only (point fits).

    A k whose smaller sizes cannot identify the form gets no record (a form with an N exponent needs
    two sizes or more). `n_seeds` lists, per scored run, how many seeds it averages (1 without seed means).
    """
    n = runs.values["model_params"]
    sizes = np.unique(n)
    observed = runs.values[form.target]
    seeds = runs.extra.get("n_seeds", [1] * len(runs))
    out = []
    for k in range(2, len(sizes)):
        size, train = float(sizes[k]), n < sizes[k]
        try:
            predicted = _held_out_fit(form, runs, size, cfg, what, train_mask=train)
        except UserError:
            continue
        test = n == size
        stats = error_stats(predicted, observed[test])
        out.append({"k": k, "sizes_fitted": [float(s) for s in sizes[:k]], "model_params": size,
                    "n_train": int(train.sum()), "n_test": int(test.sum()), "mre": stats["mre"],
                    "max_re": stats["max_re"], "n_seeds": [int(seeds[i]) for i in np.flatnonzero(test)]})  # fmt: skip
    return out
