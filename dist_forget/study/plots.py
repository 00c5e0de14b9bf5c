"""The study report's plots: forgetting against D and against the target loss per domain, and the target and
pretraining validation curves of every finetune (from each run's metrics.jsonl)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_forget.schema import METRICS_FILE, read_metrics
from dist_forget.study import findings as fd


def plot_study(out: Path, runs: list[fd.Run], sweep: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    domains = sorted({r.domain for r in runs})
    sizes = sorted({r.n for r in runs})
    colors = dict(zip(sizes, plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))))

    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        for n in sizes:
            pts = sorted((r.d, r.forgetting) for r in runs
                         if (r.domain, r.n, r.p, r.a, r.seed) == (domain, n, 0.0, 0.0, 0))  # fmt: skip
            if pts:
                ax.plot(*zip(*pts), "o-", color=colors[n], label=f"N = {n:,.0f}")
        ax.set_xscale("log")
        ax.set_xlabel("unique target tokens D")
        ax.set_title(f"{domain}: forgetting at p = 0")
    axes[0][0].set_ylabel("forgetting (nats/token)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study_forgetting_vs_D.png", dpi=90)
    plt.close(fig)
    written.append("study_forgetting_vs_D.png")

    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.8), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        for r in runs:
            if r.domain != domain or r.seed != 0:
                continue
            marker = "o" if r.a == 0 else "^"
            ax.scatter(
                r.ft, r.forgetting, color=colors[r.n], marker=marker, s=12 + 120 * r.p + 4 * np.log1p(r.a)
            )
        ax.set_xlabel("best target loss (nats/token)")
        ax.set_title(f"{domain}: forgetting vs target loss")
    axes[0][0].set_ylabel("forgetting (nats/token)")
    axes[0][0].scatter([], [], marker="o", color="gray", label="AdamW (size ~ p)")
    axes[0][0].scatter([], [], marker="^", color="gray", label="Anchored AdamW, p = 0")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "study_forgetting_vs_target_loss.png", dpi=90)
    plt.close(fig)
    written.append("study_forgetting_vs_target_loss.png")

    curves = _curves(sweep, runs)
    if curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for n, p, steps, ft, pt in curves.values():
            style = "-" if p == 0 else "--"
            axes[0].plot(steps, ft, style, color=colors[n], label=f"N = {n:,.0f}, p = {p:g}")
            axes[1].plot(steps, pt, style, color=colors[n])
        axes[0].set_title("target validation loss (U-curve)")
        axes[1].set_title("English validation loss (forgetting)")
        for ax in axes:
            ax.set_xlabel("finetuning step")
            ax.set_ylabel("nats/token")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "study_curves.png", dpi=90)
        plt.close(fig)
        written.append("study_curves.png")
    return written


def _curves(
    sweep: Path, runs: list[fd.Run]
) -> dict[str, tuple[float, float, list[int], list[float], list[float]]]:
    """Eval curves of the smallest D on the first domain, every size, p = 0 and the largest p."""
    if not runs:
        return {}
    domain, d, p_max = min(r.domain for r in runs), min(r.d for r in runs), max(r.p for r in runs)
    out = {}
    for r in sorted(runs, key=lambda r: (r.p, r.n)):
        if (r.domain, r.d, r.a, r.seed) != (domain, d, 0.0, 0) or r.p not in (0.0, p_max):
            continue
        path = sweep / "finetune" / r.name / METRICS_FILE
        if not path.is_file():
            continue
        evals = read_metrics(path, "eval")
        out[r.name] = (r.n, r.p, [e["step"] for e in evals], [e["ft_loss"] for e in evals],
                       [e["pt_loss"] for e in evals])  # fmt: skip
    return out
