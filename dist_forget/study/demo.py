"""`dist-forget demo` (`make demo`): the main job end to end on embedded defaults.

real text → tokenizer + shards → a tiny pretrained ladder → a finetune sweep over D, p and Anchored
AdamW → laws fitted on the smaller sizes and checked on the largest → a planner answer. Every step is
a library call that the CLI also exposes, so each can be rerun alone; everything is cached or resumable,
so a second `make demo` finishes in seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dist_forget.config import load_config
from dist_forget.errors import UserError

DEMO_DOMAINS = ["english", "code"]  # the pretraining mix and the one target the demo grid uses


def demo(config: str = "configs/sweep/demo.yaml", max_forgetting: float = 0.0, bootstrap: int = 200) -> int:
    """Run the main job: data, tiny ladder, finetune sweep, law fit with held-out check, planner answer.

    --max-forgetting is the planner's budget ε in nats per token of pretraining loss; 0 (the default)
    asks for half the forgetting the sweep measured at p = 0 on the largest size and D.

    Args:
        config: sweep YAML of the demo
        max_forgetting: planner budget in nats per token; 0 = half the forgetting measured at p = 0
        bootstrap: bootstrap resamples of the law fit
    """
    from dist_forget.data.commands import prepare
    from dist_forget.laws.plan import format_plan, load_fits, plan
    from dist_forget.sweep.commands import sweep
    from dist_forget.sweep.config import SweepConfig
    from dist_forget.sweep.grid import sweep_dir

    started = time.monotonic()
    cfg = load_config(SweepConfig, config)
    root = sweep_dir(cfg)

    print("== demo 1/3: real text -> tokenizer -> shards", flush=True)
    prepare(out=Path("work/data"), domains=DEMO_DOMAINS)

    print("\n== demo 2/3: pretrain the ladder, finetune the grid, fit the laws (held out: largest size)",
          flush=True)
    fit_args = ["--runs", "{runs_csv}", "--out", "{sweep_dir}/fit", "--holdout", "largest",
                "--bootstrap", str(bootstrap)]
    if sweep(config, overrides=[f"fit.args={json.dumps(fit_args)}"]) != 0:
        raise UserError(f"the demo sweep failed; see the run logs under {root} and rerun `make demo` to resume")

    print("\n== demo 3/3: what the fitted laws say", flush=True)
    fit_json = root / "fit" / "fit.json"
    fits = load_fits(fit_json)
    for rec in fits:
        held = rec.get("holdout") or {}
        held_txt = f", held-out MRE {100 * held['mre']:.2f} % on N={held.get('held_out_model_params', '?')}" if held else ""
        params = ", ".join(f"{k}={v:.4g}" for k, v in rec["params"].items())
        print(f"  {rec['law']:<10} {rec['form']:<18} {rec['domain']}: {params}; in-sample MRE "
              f"{100 * rec['mre']:.2f} %{held_txt}")

    runs = _read_csv(root / "runs.csv")
    largest = max(float(r["model_params"]) for r in runs)
    d_max = max(float(r["target_tokens"]) for r in runs)
    domain = runs[0]["domain"]
    if max_forgetting <= 0:
        at_p0 = [float(r["pt_loss"]) - float(r["pt_loss_base"]) for r in runs
                 if float(r["model_params"]) == largest and float(r["target_tokens"]) == d_max
                 and float(r["inject_fraction"]) == 0 and float(r["anchor_decay"]) == 0]
        if not at_p0 or max(at_p0) <= 0:
            raise UserError("the demo sweep measured no forgetting at p = 0 on its largest size; pass "
                            "--max-forgetting EPS to ask the planner anyway")
        max_forgetting = max(at_p0) / 2
        print(f"  measured forgetting at p = 0 there: {max(at_p0):.4f} nats/token; budget = half of it")
    print(f"\n  planner: smallest p keeping forgetting <= {max_forgetting:.4f} nats/token for N={largest:.0f}, "
          f"D={d_max:.0f} on {domain}:")
    answer = plan(fits, domain, largest, d_max, max_forgetting=max_forgetting, where=str(fit_json))
    print("  " + format_plan(answer).replace("\n", "\n  "))

    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo done in {minutes:.1f} min. Report: {root / 'fit' / 'REPORT.md'}; runs table: "
          f"{root / 'runs.csv'}; plots: {root / 'fit'}; MLflow: experiment {cfg.tracking.experiment!r}")
    print("The demo's ladder is pretrained ~100 steps (a pipeline check); the study on a real budget is "
          "`make study`, its report reports/micro/REPORT.md.")
    return 0


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        raise UserError(f"{path} is missing: the sweep wrote no runs table; rerun `make demo`")
    with path.open() as fh:
        return list(csv.DictReader(fh))
