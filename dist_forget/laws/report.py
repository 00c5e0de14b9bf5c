"""Outputs of `dist-forget fit`: fit.json (the contract), REPORT.md and PNG plots, written atomically.

fit.json: {"fits": [{"law", "form", "domain", "params": {name: value}, "ci95": {name: [lo, hi]}, "mre",
"max_re", "r2", "n_runs", "holdout": {...}, ...}]}. Extra keys (formula, range, bootstrap samples,
per-run residuals) are for the planner and the study; readers must ignore keys they do not know.
Errors are fractions, losses nats/token, sizes in parameters and tokens.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dist_forget.io import atomic_dir, write_json_atomic, write_text_atomic
from dist_forget.laws.diagnostics import format_warnings
from dist_forget.laws.forms import Forgetting, get_form
from dist_forget.laws.pipeline import runs_for
from dist_forget.laws.table import Runs
from dist_forget.numfmt import json_finite, pct


def write_outputs(
    out: str | Path, records: list[dict[str, Any]], runs: Runs, meta: dict[str, Any], plots: bool = True
) -> list[Path]:
    """Write fit.json, REPORT.md and plots into `out` (replaced as a whole, never half-written)."""
    with atomic_dir(out, overwrite=True) as tmp:
        write_json_atomic(tmp / "fit.json", json_finite({"meta": meta, "fits": records}))
        pngs = plot_all(tmp, records, runs) if plots else []
        write_text_atomic(tmp / "REPORT.md", report_markdown(records, meta, [p.name for p in pngs]))
    return [Path(out) / "fit.json", Path(out) / "REPORT.md"] + [Path(out) / p.name for p in pngs]


def relative_to(path: str | Path, folder: str | Path) -> str:
    """`path` as seen from `folder` (e.g. the runs table from the report's folder): what fit.json and
    REPORT.md name it by, so they hold no path of this machine and the link works in a copy of the tree."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def report_markdown(records: list[dict[str, Any]], meta: dict[str, Any], pngs: list[str]) -> str:
    lines = [
        "# Law fit report",
        "",
        f"Runs: {_link(str(meta.get('source')))} ({meta.get('n_runs')} runs). Huber delta {meta.get('delta')} on "
        f"log-loss residuals, summed; {meta.get('bootstrap')} bootstrap resamples; holdout: "
        f"{meta.get('holdout')}. Errors are relative errors of the loss (MRE = mean, max = largest).",
        "",
    ]
    if meta.get("blas_kernels"):  # fits written before it was recorded say nothing
        lines += [f"Fitted on OpenBLAS's {', '.join(meta['blas_kernels'])} kernels: a fit repeats bit for bit "
                  "where OpenBLAS picks the same (OPENBLAS_CORETYPE sets them).", ""]  # fmt: skip
    if meta.get("seed_mean"):
        counts = ", ".join(f"{d} {c['points_averaged']} from {c['runs_averaged']} runs"
                           for d, c in meta["seed_mean_points"].items())  # fmt: skip
        lines += [f"Fitted and scored on seed means: runs differing only in seed are one point, their mean "
                  f"(points averaged per domain: {counts}).", ""]  # fmt: skip
    lines += [
        "## In-sample and held-out error, every form side by side",
        "",
        "| domain | law | form | runs | MRE | max RE | R² | held-out MRE | held-out max RE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        h = r.get("holdout") or {}
        lines.append(
            f"| {r['domain']} | {r['law']} | {r['form']} | {r['n_runs']} | {pct(r['mre'])} | "
            f"{pct(r['max_re'])} | {r['r2']:.4f} | {pct(h.get('mre'))} | {pct(h.get('max_re'))} |"
        )
    lines += ["", "## Best form per domain and law", ""]
    best: dict[tuple[str, str], dict[str, Any]] = {}
    key = "held-out MRE" if any(r.get("holdout") for r in records) else "in-sample MRE"
    for r in records:
        score = (r.get("holdout") or {}).get("mre", r["mre"])
        k = (r["domain"], r["law"])
        if k not in best or score < best[k]["_score"]:
            best[k] = dict(r, _score=score)
    for (domain, law), r in sorted(best.items()):
        lines.append(f"- {domain} / {law}: **{r['form']}** ({key} {pct(r['_score'])})")
    lines += ["", "## Parameters (95 % bootstrap intervals)", ""]
    for r in records:
        params = ", ".join(
            f"{n} = {v:.5g} [{r['ci95'][n][0]:.4g}, {r['ci95'][n][1]:.4g}]" for n, v in r["params"].items()
        )
        lines.append(f"- {r['domain']} / {r['form']} (`{r['formula']}`): {params}")
        lines += [f"  - **warning** {text}" for text in format_warnings(r)]
    if pngs:  # beside REPORT.md (also under the sweep run's fit/ artifacts): relative links render
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in pngs]
    return "\n".join(lines) + "\n"


def _link(source: str) -> str:
    """The runs table as a relative Markdown link; an MLflow source (`mlflow:EXP@URI`) stays text."""
    return source if source.startswith("mlflow:") else f"[{source}]({source})"


def _mode(values: np.ndarray) -> float:
    return float(Counter(values.tolist()).most_common(1)[0][0])


def forgetting_plot_tokens(target_tokens: Any) -> float:
    """The D of the forgetting-vs-p plot: the most common D among the runs, the largest of a tie (a grid
    holds every D equally often; forgetting grows with D, and the planner asks about the largest). The
    demo's end screen prints its table at this D, beside the plot."""
    counts = Counter(float(d) for d in np.asarray(target_tokens).tolist())
    return max(counts, key=lambda d: (counts[d], d))


def _curve_cols(runs: Runs, n: float, d: np.ndarray, p: np.ndarray, lam: float) -> dict[str, np.ndarray]:
    size = max(d.size, p.size)
    at_n = runs.values["model_params"] == n
    base = float(runs.values["pt_loss_base"][at_n].mean()) if "pt_loss_base" in runs.values else 1.0
    return {
        "model_params": np.full(size, n),
        "target_tokens": np.broadcast_to(d, size).astype(float),
        "inject_fraction": np.broadcast_to(p, size).astype(float),
        "anchor_decay": np.full(size, lam),
        "pt_loss_base": np.full(size, base),
    }


def _band(form: Any, rec: dict[str, Any], cols: dict[str, np.ndarray], forgetting: bool):
    theta = form.to_internal(rec["params"])
    samples = rec["bootstrap"]["samples"]
    fn = form.forgetting if forgetting else form.predict
    centre = fn(theta, cols)
    if not rec["bootstrap"]["n"]:
        return centre, None
    th = np.array(
        [form.to_internal({k: samples[k][i] for k in samples}) for i in range(rec["bootstrap"]["n"])]
    )
    with np.errstate(over="ignore", invalid="ignore"):
        preds = fn(th.T[:, :, None], cols)
    return centre, np.percentile(preds, [2.5, 97.5], axis=0)


def plot_all(out: Path, records: list[dict[str, Any]], runs: Runs) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for rec in records:
        form = get_form(rec["form"])
        if form.conditional:  # its fit shows in predicted_vs_observed.png
            continue
        sub = runs_for(form, runs.for_domain(rec["domain"]))
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        sizes = np.unique(sub.values["model_params"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
        lam = _mode(sub.values["anchor_decay"])
        if isinstance(form, Forgetting):
            d_fix = forgetting_plot_tokens(sub.values["target_tokens"])
            ps = np.unique(sub.values["inject_fraction"])
            grid = np.concatenate(
                [[0.0], np.geomspace(max(ps[ps > 0].min(initial=1e-4) / 2, 1e-6), ps.max() * 1.5, 60)]
            )
            for n, c in zip(sizes, colors):
                mask = (sub.values["model_params"] == n) & (sub.values["target_tokens"] == d_fix)
                obs = sub.values["pt_loss"][mask] - sub.values["pt_loss_base"][mask]
                ax.scatter(sub.values["inject_fraction"][mask], obs, color=c, s=14, label=f"N = {n:.3g}")
                centre, band = _band(form, rec, _curve_cols(sub, n, np.array([d_fix]), grid, lam), True)
                ax.plot(grid, centre, color=c, lw=1.2)
                if band is not None:
                    ax.fill_between(grid, band[0], band[1], color=c, alpha=0.2, lw=0)
            ax.set_xscale("symlog", linthresh=max(grid[1], 1e-6))
            ax.set_yscale("log")
            ax.set_xlabel("injection fraction p")
            ax.set_ylabel("forgetting: pt_loss - pt_loss_base (nats/token)")
            ax.set_title(f"{rec['domain']}: {rec['form']} at D = {d_fix:.3g}")
        else:
            p_fix = _mode(sub.values["inject_fraction"])
            ds = sub.values["target_tokens"]
            grid = np.geomspace(ds.min() / 1.5, ds.max() * 1.5, 60)
            for n, c in zip(sizes, colors):
                mask = (sub.values["model_params"] == n) & (sub.values["inject_fraction"] == p_fix)
                ax.scatter(ds[mask], sub.values[form.target][mask], color=c, s=14, label=f"N = {n:.3g}")
                centre, band = _band(form, rec, _curve_cols(sub, n, grid, np.array([p_fix]), lam), False)
                ax.plot(grid, centre, color=c, lw=1.2)
                if band is not None:
                    ax.fill_between(grid, band[0], band[1], color=c, alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.set_xlabel("unique target tokens D")
            ax.set_ylabel(
                "step of the best target evaluation"
                if form.law == "bottom"
                else f"{form.target} (nats/token)"
            )
            ax.set_title(f"{rec['domain']}: {rec['form']} at p = {p_fix:g}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        kind = "forgetting_vs_p" if isinstance(form, Forgetting) else "loss_vs_D"
        path = out / f"{kind}_{_safe(rec['domain'])}_{rec['form']}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, law in zip(axes, ("finetune", "forgetting")):
        for rec in [r for r in records if r["law"] == law]:
            obs = [x["observed"] for x in rec["residuals"]]
            pred = [x["predicted"] for x in rec["residuals"]]
            ax.scatter(obs, pred, s=8, label=f"{rec['domain']}/{rec['form']}")
        lims = ax.get_xlim()
        ax.plot(lims, lims, color="k", lw=0.8)
        ax.set_xlabel("observed loss (nats/token)")
        ax.set_ylabel("predicted loss (nats/token)")
        ax.set_title(f"{law} law: predicted vs observed")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "predicted_vs_observed.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
