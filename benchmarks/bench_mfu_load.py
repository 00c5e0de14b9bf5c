"""MFU on shared CPU cores: the wall-clock definition against the per-CPU-second one, with a neighbour.

    .venv/bin/python -m benchmarks.bench_mfu_load [--size cpu-0.3m --steps 10 --threads 1 --hogs 2]

Each case is a real `dist-forget finetune` of configs/finetune/tiny.yaml (engine=single, no tracking, a
freshly built `--size` base model, `--threads` torch threads) in its own process; `--hogs` busy loops
(`python -c "while True: pass"`, at this process's nice) compete for the cores:
- idle: no neighbour;
- hog throughout: the neighbours start before the peak is timed and stay for the steps;
- hog after the peak: the peak is timed on idle cores, the neighbours arrive for the steps;
- hog during the peak only: the neighbours hold the cores while the peak is timed and leave before the
  steps (a restart next to a job that then ends).
Inside the finetune's process the trainer's `measure_peak` is wrapped: it times the wall-clock peak too,
right before the per-CPU-second one the trainer uses, and writes a marker the parent starts or stops the
neighbours on; `MetricsLog.train_step` is wrapped to record each step's wall and process-CPU seconds. From
the same steps (all but the first two): wall MFU = FLOPs / wall seconds / wall peak (the old definition),
CPU MFU = FLOPs / process CPU seconds / per-CPU-second peak (the trainer's, whose last logged figure is
printed beside it). Ratios are against the idle case of the same run. The neighbours are killed at the end
whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs inside the finetune's process: records both peaks and every step's two clocks, then runs the CLI.
CHILD = r"""
import json, os, sys, time
from pathlib import Path
from dist_forget.engine import trainer, metrics_log

rec = {"steps": []}
inner_peak = trainer.measure_peak
def peak(device, precision="fp32", *args, cpu_time=False, **kwargs):
    rec["wall_peak"] = inner_peak(device, precision, *args, **kwargs)
    rec["peak"] = inner_peak(device, precision, *args, cpu_time=cpu_time, **kwargs)
    rec["cpu_time"] = cpu_time
    Path(os.environ["BENCH_MARKER"]).write_text("peak timed")
    return rec["peak"]
trainer.measure_peak = peak

inner_step = metrics_log.MetricsLog.train_step
def step(self, state, loss, lr, grad_norm, dt, cpu_dt, *rest):
    rec["steps"].append((dt, cpu_dt))
    rec.update(flops_per_step=self.cost.flops_per_token * self.cost.tokens_per_step)
    return inner_step(self, state, loss, lr, grad_norm, dt, cpu_dt, *rest)
metrics_log.MetricsLog.train_step = step

from dist_forget import cli
sys.argv = ["dist-forget", *sys.argv[2:]]
try:
    cli.main()
finally:
    Path(os.environ["BENCH_RECORD"]).write_text(json.dumps(rec))
"""

HOG = "while True: pass"
CASES = ("idle", "hog throughout", "hog after the peak", "hog during the peak only")


def run_case(
    case: str, args: argparse.Namespace, base: Path, out: Path, hogs: list[subprocess.Popen]
) -> dict:
    """One finetune with the neighbours started or stopped as `case` says; its record and metrics.jsonl."""
    marker, record = out.parent / f"{out.name}.marker", out.parent / f"{out.name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads), "DS_ACCELERATOR": "cpu",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "BENCH_MARKER": str(marker), "BENCH_RECORD": str(record)}  # fmt: skip
    data = args.data
    argv = ["finetune", "--config", str(REPO / "configs/finetune/tiny.yaml"), f"out_dir={out}",
            f"model.init_from={base}", f"data.target={data / 'code'}", f"data.pretrain={data / 'english'}",
            f"schedule.steps={args.steps}", "schedule.warmup=1", f"train.eval_every={args.steps}",
            "train.eval_sequences=16", "tracking.enabled=false", "checkpoint.every=0"]  # fmt: skip
    if case in ("hog throughout", "hog during the peak only"):
        start_hogs(hogs, args.hogs)
    child = subprocess.Popen([sys.executable, "-c", CHILD, "-", *argv], env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while child.poll() is None and not marker.exists():
            time.sleep(0.02)
        if case == "hog after the peak":
            start_hogs(hogs, args.hogs)
        elif case == "hog during the peak only":
            stop_hogs(hogs)
        _, err = child.communicate()
    finally:
        if child.poll() is None:  # interrupted: the finetune goes too
            child.kill()
            child.wait()
        stop_hogs(hogs)
    if child.returncode != 0:
        raise RuntimeError(f"{case}: the finetune failed:\n{err[-2000:]}")
    rec = json.loads(record.read_text())
    logged = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    rec["logged_mfu"] = [r["mfu"] for r in logged if r["kind"] == "train"][-1]
    return rec


def start_hogs(hogs: list[subprocess.Popen], n: int) -> None:
    hogs.extend(subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(n))


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    """Kill the neighbours this benchmark started (by their own handles) and reap them."""
    while hogs:
        hog = hogs.pop()
        hog.kill()
        hog.wait()


def figures(rec: dict) -> dict[str, float]:
    steps = rec["steps"][2:]  # the first steps warm the allocator and the optimizer state
    wall, cpu = sum(s[0] for s in steps), sum(s[1] for s in steps)
    flops = rec["flops_per_step"] * len(steps)
    return {"wall_s": wall / len(steps), "cpu_s": cpu / len(steps), "wall_peak": rec["wall_peak"],
            "cpu_peak": rec["peak"], "wall_mfu": flops / wall / rec["wall_peak"],
            "cpu_mfu": flops / cpu / rec["peak"], "logged_mfu": rec["logged_mfu"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="cpu-0.3m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--data", type=Path, default=REPO / "work/data/shards")
    args = ap.parse_args()
    from dist_forget.models import hf

    manifest = json.loads((args.data / "code" / "manifest.json").read_text())
    results: dict[str, dict[str, float]] = {}
    hogs: list[subprocess.Popen] = []
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp) / "base"
            hf.build(args.size, manifest["vocab_size"], manifest["seq_len"], seed=0).save_pretrained(base)
            for i, case in enumerate(CASES):
                results[case] = figures(run_case(case, args, base, Path(tmp) / f"run{i}", hogs))
    finally:
        stop_hogs(hogs)
    idle = results["idle"]
    print(f"{args.size}, {args.steps} steps x 16 seq x {manifest['seq_len']} tokens, {args.threads} threads, "
          f"{args.hogs} busy-loop neighbours; {time.perf_counter() - started:.0f} s in all")  # fmt: skip
    print("| case | step wall s | step CPU s | peak wall GFLOP/s | peak GFLOP/CPU-s | wall MFU (old) | "
          "CPU-time MFU (new) | trainer's logged MFU | wall MFU / idle | CPU MFU / idle |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, f in results.items():
        print(f"| {case} | {f['wall_s']:.3f} | {f['cpu_s']:.3f} | {f['wall_peak'] / 1e9:.1f} | "
              f"{f['cpu_peak'] / 1e9:.1f} | {f['wall_mfu']:.1%} | {f['cpu_mfu']:.1%} | {f['logged_mfu']:.1%} | "
              f"{f['wall_mfu'] / idle['wall_mfu']:.2f} | {f['cpu_mfu'] / idle['cpu_mfu']:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
