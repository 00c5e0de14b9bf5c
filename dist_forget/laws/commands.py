"""CLI: `dist-forget fit` and `dist-forget plan` (flags come from these signatures)."""

from __future__ import annotations

import json as _json
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np

from dist_forget.errors import UserError
from dist_forget.laws._blas import kernels
from dist_forget.laws.diagnostics import format_warnings
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.forms import DEFAULT_FORMS, FORMS
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.plan import format_plan, load_fits
from dist_forget.laws.plan import plan as plan_p
from dist_forget.laws.report import relative_to, write_outputs
from dist_forget.laws.table import read_mlflow, read_runs, seed_means
from dist_forget.numfmt import json_finite
from dist_forget.redact import redact_uri


def fit(
    out: Path,
    runs: str | None = None,
    mlflow: str | None = None,
    forms: tuple[str, ...] = DEFAULT_FORMS,
    holdout: Literal["none", "largest", "leave-one-size-out"] = "none",
    bootstrap: int = 1000,
    delta: float = 1e-3,
    loss: Literal["huber", "squared"] = "huber",
    domains: tuple[str, ...] = (),
    pooled: bool = False,
    workers: int = 0,
    seed: int = 0,
    top_k: int = 16,
    plots: bool = True,
    seed_mean: bool = False,
) -> int:
    """Fit forgetting and finetuning laws per domain to a runs table; write fit.json, REPORT.md and plots.

    --runs is a CSV/Parquet table or a directory of summary.json files; --mlflow EXPERIMENT reads an
    MLflow experiment instead (MLFLOW_TRACKING_URI is honoured). Laws are fitted per domain unless
    --pooled (all runs as one domain "all").

    Args:
        out: folder for fit.json, REPORT.md and the plots (replaced as a whole)
        runs: runs table: CSV, Parquet, or a folder of summary.json files
        mlflow: MLflow experiment name to read the runs from instead of --runs
        holdout: largest: fit without the largest size, report the error on it; leave-one-size-out: each size in
            turn
        bootstrap: bootstrap resamples for the 95 % intervals (0 = none)
        delta: Huber delta on the log-loss residuals
        loss: fit objective on log-loss residuals
        domains: fit only these domains; none = every domain in the table
        pooled: fit all runs as one domain named all
        workers: processes for the bootstrap; 0 = one per core
        seed: seed of the bootstrap resamples
        top_k: optimizer starts taken from the best points of the start grid; 0 = every grid point
        plots: write the PNG plots
        seed_mean: fit and score on the mean of each point's seeds (runs differing only in seed)
        forms: law forms to fit, among:
    """
    if (runs is None) == (mlflow is None):
        raise UserError(
            "give exactly one of --runs PATH (CSV, Parquet or a directory of summary.json) or "
            "--mlflow EXPERIMENT"
        )
    start = time.monotonic()
    table = read_runs(runs) if runs is not None else read_mlflow(str(mlflow))
    averaged = None
    if seed_mean:  # before pooling: seeds are averaged within a domain, never across domains
        table, averaged = seed_means(table, str(runs or f"MLflow experiment {mlflow!r}"))
    if pooled:
        table.domain = np.full(len(table), "all", dtype=object)
    source = (
        relative_to(runs, out)  # REPORT.md links it: relative to its folder, no path of this machine
        if runs is not None
        else f"mlflow:{mlflow}@{redact_uri(os.environ.get('MLFLOW_TRACKING_URI', 'default'))}"
    )
    cfg = FitConfig(delta=delta, loss=loss, top_k=top_k, bootstrap=bootstrap, seed=seed, workers=workers)
    what = f"{len(table)} seed means" if seed_mean else f"{len(table)} runs"
    print(f"read {what} from {source}: domains {', '.join(table.domains())}", flush=True)
    records = fit_runs(table, forms, cfg, holdout, domains=domains or None)
    meta = {
        "source": source,
        "n_runs": len(table),
        "delta": delta,
        "loss": loss,
        "bootstrap": bootstrap,
        "holdout": holdout,
        "seed": seed,
        "forms": list(forms),
        "blas_kernels": kernels(),
    }
    if averaged is not None:  # absent otherwise: fits written before the switch stay byte-identical
        meta |= {"seed_mean": True, "seed_mean_points": averaged}
    written = write_outputs(out, records, table, meta, plots=plots)
    print(f"done in {time.monotonic() - start:.1f} s: {len(records)} fits")
    for rec in records:
        held = rec["holdout"]
        held_txt = f"  held-out MRE {100 * held['mre']:.2f} %" if held else ""
        params = " ".join(f"{k}={v:.4g}" for k, v in rec["params"].items())
        print(f"  {rec['domain']:<16} {rec['form']:<20} MRE {100 * rec['mre']:.2f} %{held_txt}  {params}")
        for text in format_warnings(rec):
            print(f"    warning {text}")
    print(f"wrote {written[0]}, {written[1]} and {len(written) - 2} plots")
    return 0


fit.__doc__ = (fit.__doc__ or "") + " " + ", ".join(FORMS) + "."


def plan(
    fit: Path,
    domain: str,
    model_params: float,
    target_tokens: float,
    max_forgetting: float | None = None,
    inject_fraction: float | None = None,
    anchor_decay: float = 0.0,
    ft_form: str = "finetune",
    pt_form: str = "forgetting",
    json: bool = False,
    force: bool = False,
) -> int:
    """Smallest injection fraction p keeping predicted forgetting <= --max-forgetting, with its 95 % interval.

    Or, with --inject-fraction P, the predicted forgetting and finetune loss at that p. Exits 1 when no p
    in [0, 1] meets the budget, 2 when a fit the answer depends on carries a diagnostic warning (see
    fit.json "warnings"); --force answers anyway and the output carries the warnings.

    Args:
        fit: fit.json written by dist-forget fit
        domain: target domain of the planned finetune (a domain of the fit)
        model_params: N, non-embedding parameters of the model
        target_tokens: D, unique target tokens of the finetune
        max_forgetting: budget: the largest tolerated rise of the pretraining loss, nats per token
        inject_fraction: instead of a budget, predict at this p (0.01 = 1 %)
        anchor_decay: Anchored AdamW decay toward the pretrained weights of the planned run
        ft_form: fitted form used for the finetune loss
        pt_form: fitted form used for forgetting
        json: print one JSON object
        force: answer even when a fit it depends on carries a diagnostic warning
    """
    result = plan_p(
        load_fits(fit),
        domain,
        model_params,
        target_tokens,
        max_forgetting,
        inject_fraction,
        anchor_decay,
        ft_form,
        pt_form,
        where=str(fit),
        force=force,
    )
    if json:
        keys = ("inject_fraction", "ci95", "predicted_forgetting", "predicted_ft_loss", "extrapolated")
        ordered = {k: result[k] for k in keys} | {k: v for k, v in result.items() if k not in keys}
        print(_json.dumps(json_finite(ordered)))  # an unreachable budget prints p as null
    else:
        print(format_plan(result))
    # Exit 1 when no p in [0, 1] meets the budget, so scripts can tell "plan found" from "impossible".
    return 0 if result["reachable"] else 1
