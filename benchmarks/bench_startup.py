"""CPU seconds a tiny `dist-forget finetune` spends outside its training loop, phase by phase.

    .venv/bin/python -m benchmarks.bench_startup [--repeats 2] [--steps 2] [--data work/data/shards]
                                                 [--baseline DIR]

Each run is a real `dist-forget finetune` of configs/finetune/tiny.yaml (engine=single, tracking on to
the default sqlite store beside the run, system metrics on) from a freshly built cpu-0.015m base model,
in its own process. Inside that process the trainer's phases are wrapped (nothing else changes) and the
process CPU time (user + sys of all threads, `time.process_time`) spent in each is recorded:

- imports: interpreter start and every import up to `train()` (torch, the config, the CLI)
- cli: the CLI's own work around `train()` (its arguments, the config, what it does before the process exits)
- tracker: opening MLflow (imports, store open, run creation, params, system-metrics thread)
- model: building the model (transformers' import and `from_pretrained`)
- setup: the rest of the set-up (data stream and its verification, backend, saver)
- baseline: the starting model's evaluation, before step 1
- peak: the matmul timed for MFU's peak FLOP/s
- loop: the training loop (steps, evaluations, saves and exports)
- summary: summary.json, report.json, loss_curves.png
- finish: the tracker's end (last flush, system metrics stop, run end)
- exit: the rest of the process (its interpreter exit, the CLI), from the parent's rusage

The first run of a repeat opens a new store (MLflow creates its tables), the second one reuses it, as
the later runs of a study do. `--baseline DIR` runs another source tree (e.g. the tree before a change:
`git archive main | tar -x -C DIR`) alternately with this one and prints the ratio of their CPU seconds
outside the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs inside the finetune's process: wraps the trainer's phases with CPU-time accounting, then runs the CLI.
CHILD = r"""
import json, os, sys, time
from dist_forget.engine import trainer
from dist_forget.tracking import tracker as tracker_mod

spent = {}
started = time.process_time()

def timed(owner, name, phase):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        t0 = time.process_time()
        spent.setdefault("at_" + phase, t0)
        try:
            return inner(*args, **kwargs)
        finally:
            spent[phase] = spent.get(phase, 0.0) + time.process_time() - t0
    setattr(owner, name, wrapper)

for name, phase in [("train", "train"), ("_setup", "setup_all"), ("_tracker", "tracker"),
                    ("_build_model", "model"), ("_begin", "begin"), ("measure_peak", "peak"),
                    ("_summarize", "summary")]:
    timed(trainer, name, phase)
timed(tracker_mod.Tracker, "finish", "finish")
from dist_forget import cli
sys.argv = ["dist-forget", *sys.argv[2:]]
try:
    cli.main()
finally:
    spent["total_in_process"] = time.process_time()
    with open(os.environ["BENCH_PHASES"], "w") as fh:
        json.dump(spent, fh)
"""

PHASES = [
    "imports",
    "cli",
    "tracker",
    "model",
    "setup",
    "baseline",
    "peak",
    "loop",
    "summary",
    "finish",
    "exit",
]


def run_once(code: Path, base: Path, out: Path, data: Path, steps: int) -> dict[str, float]:
    """One finetune of the source tree `code` in its own process; its phases' CPU seconds."""
    phases_file = out.parent / f"{out.name}.phases.json"
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "BENCH_PHASES": str(phases_file), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # fmt: skip
    argv = ["finetune", "--config", str(REPO / "configs/finetune/tiny.yaml"), f"out_dir={out}",
            f"model.init_from={base}", f"data.target={data / 'code'}", f"data.pretrain={data / 'english'}",
            f"schedule.steps={steps}", "schedule.warmup=1", f"train.eval_every={steps}"]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", CHILD, "-", *argv], env=env, check=True, cwd=code,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    s = json.loads(phases_file.read_text())
    setup = s["setup_all"] - s["tracker"] - s["model"]
    baseline = s["begin"] - s.get("peak", 0.0)
    inside = s["setup_all"] + s["begin"] + s["summary"] + s["finish"]
    loop = s["train"] - inside
    rest = s["total_in_process"] - s["at_train"] - s["train"]
    phases = {"imports": s["at_train"], "cli": rest, "tracker": s["tracker"], "model": s["model"], "setup": setup,
              "baseline": baseline, "peak": s.get("peak", 0.0), "loop": loop, "summary": s["summary"],
              "finish": s["finish"], "exit": total - s["total_in_process"]}  # fmt: skip
    phases["outside_loop"] = total - loop
    phases["total"] = total
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--data", type=Path, default=REPO / "work/data/shards")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another source tree (e.g. `git archive main`), run alternately: the ratio column")  # fmt: skip
    args = ap.parse_args()
    trees = (
        {"this tree": REPO}
        if args.baseline is None
        else {"baseline": args.baseline.resolve(), "this tree": REPO}
    )
    from dist_forget.models import hf

    vocab = json.loads((args.data / "code" / "manifest.json").read_text())["vocab_size"]
    seq_len = json.loads((args.data / "code" / "manifest.json").read_text())["seq_len"]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        hf.build("cpu-0.015m", vocab, seq_len, seed=0).save_pretrained(base)
        for r in range(args.repeats):
            for name, code in trees.items():  # alternately: load on the machine hits both alike
                runs = Path(tmp) / f"{name.replace(' ', '_')}{r}"  # a new sqlite store: runs/mlflow.db
                runs.mkdir()
                for store, out in (("new store", "a"), ("existing store", "b")):
                    one = run_once(code, base, runs / out, args.data, args.steps)
                    results.setdefault((name, store), []).append(one)
    print(f"CPU seconds (user+sys, median of {args.repeats}) of a {args.steps}-step tiny finetune, by phase:")
    cols = list(results)
    print(f"{'':<14}" + "".join(f"{n:>22}" for n, _ in cols))
    print(f"{'phase':<14}" + "".join(f"{st:>22}" for _, st in cols))
    for phase in [*PHASES, "outside_loop", "total"]:
        row = [statistics.median(x[phase] for x in results[c]) for c in cols]
        print(f"{phase:<14}" + "".join(f"{v:>22.2f}" for v in row))
    if args.baseline is not None:
        for store in ("new store", "existing store"):
            med = {n: statistics.median(x["outside_loop"] for x in results[(n, store)]) for n in trees}
            print(
                f"outside the loop, {store}: {med['this tree'] / med['baseline']:.2f}x the baseline's CPU time"
            )


if __name__ == "__main__":
    main()
