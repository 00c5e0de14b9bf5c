"""Tables and curves of the SmolLM2 study (configs/sweep/smollm2.yaml) from its runs' metrics.jsonl.

    python reports/smollm2/make_report.py work/sweeps/smollm2 [--out reports/smollm2]

Prints a Markdown table of target and English validation loss per evaluation step for every run, and
the best-target row of each summary.json; writes curves.png and copies each summary.json and metrics.jsonl to OUT.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def _runs(sweep: Path) -> list[tuple[float, Path]]:
    runs = []
    for run in sorted((sweep / "finetune").iterdir()):
        if (run / "summary.json").is_file():
            runs.append((json.loads((run / "summary.json").read_text())["inject_fraction"], run))
    if not runs:
        raise SystemExit(f"{sweep}/finetune holds no finished run (no summary.json): run the sweep first")
    return sorted(runs)


def _evals(run: Path) -> dict[int, tuple[float, float]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: (r["ft_loss"], r["pt_loss"]) for r in rows if r["kind"] == "eval"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = ap.parse_args()
    runs = _runs(args.sweep)
    evals = {p: _evals(run) for p, run in runs}
    steps = sorted(set().union(*(e.keys() for e in evals.values())))
    ps = [p for p, _ in runs]

    head = ["step", *(f"target p={p:g}" for p in ps), *(f"English p={p:g}" for p in ps)]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for s in steps:
        cells = [f"{evals[p][s][0]:.4f}" if s in evals[p] else "" for p in ps]
        cells += [f"{evals[p][s][1]:.4f}" if s in evals[p] else "" for p in ps]
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("\n| p | best step | ft_loss | pt_loss | pt_loss_base | forgetting (pt_loss − pt_loss_base) |\n"
          "|---|---|---|---|---|---|")
    args.out.mkdir(parents=True, exist_ok=True)
    for p, run in runs:
        s = json.loads((run / "summary.json").read_text())
        print(f"| {p:g} | {s['steps']} | {s['ft_loss']:.4f} | {s['pt_loss']:.4f} | {s['pt_loss_base']:.4f} | "
              f"{s['pt_loss'] - s['pt_loss_base']:+.4f} |")
        shutil.copyfile(run / "summary.json", args.out / f"summary_p{p:g}.json")
        shutil.copyfile(run / "metrics.jsonl", args.out / f"metrics_p{p:g}.jsonl")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, k, title in ((axes[0], 0, "target (German) validation"), (axes[1], 1, "English validation")):
        for p in ps:
            xs = sorted(evals[p])
            ax.plot(xs, [evals[p][x][k] for x in xs], "o-" if p == 0 else "s--", label=f"p = {p:g}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
    fig.suptitle("SmolLM2-135M finetuned on German man pages (20 steps x 8 x 128 tokens)")
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=100)
    print(f"\nwrote {args.out / 'curves.png'} and {len(runs)} summaries")


if __name__ == "__main__":
    main()
