"""Fit every requested form on every domain: point fits, holdout, parallel bootstrap, one record each.

A record is exactly one entry of fit.json's "fits" list (see report.py for the schema).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dist_forget.errors import UserError
from dist_forget.laws.bootstrap import BootstrapJob, bootstrap
from dist_forget.laws.diagnostics import diagnose
from dist_forget.laws.fit import FitConfig, PointFit, check_identifiable, fit_form
from dist_forget.laws.forms import LawForm, get_form
from dist_forget.laws.table import Runs
from dist_forget.laws.validate import Holdout, holdout, ladder_walk

RANGE_COLUMNS = ("model_params", "target_tokens", "inject_fraction", "anchor_decay")


def fit_runs(
    runs: Runs,
    forms: Sequence[str],
    cfg: FitConfig,
    holdout_mode: Holdout = "none",
    domains: Sequence[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fit `forms` per domain; returns fit.json records (with bootstrap samples and per-run residuals)."""
    cfg.validate()
    chosen = list(domains) if domains else runs.domains()
    missing = [d for d in chosen if d not in set(runs.domains())]
    if missing:
        raise UserError(f"--domains {missing[0]!r} has no runs; the table has {', '.join(runs.domains())}")
    law_forms = [get_form(f) for f in forms]
    work: list[tuple[str, Runs, PointFit, dict[str, Any]]] = []
    start = time.monotonic()
    for domain in chosen:  # validate everything before spending time on any fit
        for form in law_forms:
            check_identifiable(form, runs_for(form, runs.for_domain(domain)), f"domain {domain!r}")
    for domain in chosen:
        for form in law_forms:
            sub = runs_for(form, runs.for_domain(domain))
            point = fit_form(form, sub, cfg)
            held = holdout(form, sub, cfg, holdout_mode, f"domain {domain!r}")
            work.append((domain, sub, point, held))
            if progress:
                held_txt = f"  held-out MRE {held['mre']:.4f}" if held else ""
                print(
                    f"fit {form.name:<20} {domain:<16} runs {len(sub):>5}  MRE {point.stats['mre']:.4f}"
                    f"{held_txt}  [{time.monotonic() - start:.1f} s]",
                    flush=True,
                )
    jobs = [BootstrapJob(p.form.name, sub.values, p.observed, p.theta) for _, sub, p, _ in work]
    samples = bootstrap(jobs, cfg, progress=progress)
    return [_record(domain, sub, point, held, s) for (domain, sub, point, held), s in zip(work, samples)]


def walk_runs(runs: Runs, forms: Sequence[str], cfg: FitConfig) -> list[dict[str, Any]]:
    """The ladder walk of every form on every domain (validate.ladder_walk): one record per (domain, form,
    k), point fits only, so it costs ~2 fits per form and size instead of a bootstrap."""
    records = []
    for domain in runs.domains():
        for form in (get_form(f) for f in forms):
            walk = ladder_walk(form, runs_for(form, runs.for_domain(domain)), cfg, f"domain {domain!r}")
            records += [{"domain": domain, "law": form.law, "form": form.name, **step} for step in walk]
    return records


def runs_for(form: LawForm, runs: Runs) -> Runs:
    """The runs a form describes: a form without anchor_decay in its formula gets the plain-AdamW runs
    (anchor_decay = 0) only, else Anchored AdamW runs would pass for less forgetting at the same p."""
    if "anchor_decay" in form.varies or "anchor_decay" not in runs.values:
        return runs
    plain = runs.values["anchor_decay"] == 0
    return runs.subset(plain) if plain.any() else runs


def _record(
    domain: str, runs: Runs, point: PointFit, held: dict[str, Any], samples: np.ndarray
) -> dict[str, Any]:
    form = point.form
    values = point.params
    natural = (
        np.column_stack([p.to_value(samples[:, j]) for j, p in enumerate(form.params)])
        if len(samples)
        else np.empty((0, len(form.params)))
    )
    ci95 = {name: [float(v), float(v)] for name, v in values.items()}
    band = np.full((len(runs), 2), np.nan)
    if len(samples):
        lo, hi = np.percentile(natural, [2.5, 97.5], axis=0)
        ci95 = {p.name: [float(lo[j]), float(hi[j])] for j, p in enumerate(form.params)}
        with np.errstate(over="ignore", invalid="ignore"):
            preds = form.predict(samples.T[:, :, None], runs.values)
        band = np.percentile(preds, [2.5, 97.5], axis=0).T
    residuals = [
        {
            "run_id": runs.run_id[i],
            "model_params": float(runs.values["model_params"][i]),
            "target_tokens": float(runs.values["target_tokens"][i]),
            "inject_fraction": float(runs.values["inject_fraction"][i])
            if "inject_fraction" in runs.values
            else 0.0,
            "observed": float(point.observed[i]),
            "predicted": float(point.predicted[i]),
            "ci95": [float(band[i, 0]), float(band[i, 1])],
            "relative_error": float((point.predicted[i] - point.observed[i]) / point.observed[i]),
        }
        for i in range(len(runs))
    ]
    ranges = {
        c: [float(runs.values[c].min()), float(runs.values[c].max())]
        for c in RANGE_COLUMNS
        if c in runs.values
    }
    record = {
        "law": form.law,
        "form": form.name,
        "formula": form.formula,
        "domain": domain,
        "params": values,
        "ci95": ci95,
        "mre": point.stats["mre"],
        "max_re": point.stats["max_re"],
        "r2": point.stats["r2"],
        "n_runs": len(runs),
        "holdout": held,
        "converged": point.converged,
        "objective": point.objective,
        "range": ranges,
        "bootstrap": {
            "n": len(samples),
            "samples": {p.name: natural[:, j].tolist() for j, p in enumerate(form.params)},
        },
        "residuals": residuals,
    }
    record["warnings"] = diagnose(form, point.theta, record, runs.values)
    return record
