"""What MLflow logging costs a training step: the batched background Tracker vs no tracking.

    .venv/bin/python -m benchmarks.bench_tracking [--size cpu-0.3m] [--blocks 8] [--steps 15]
                                                  [--system-interval 1.0]

A real step (HF Llama of a ladder size, batch 8 x 128 tokens, forward + backward + AdamW, 1 thread)
is timed in alternating blocks: no tracking, then `Tracker.log_metrics` of 8 metrics per step to a
live `mlflow server` on loopback (flush_every_s=1, five times more often than the default), then the
same with MLflow's system-metrics monitor running on the run (what `tracking.system_metrics: true`
adds), sampling every --system-interval seconds (1 s: ten times the default 10 s). The alternation and
the median make the ratios robust to other load on the machine; the background threads' own CPU time
is the noise-free bound. For scale it also times the naive way: one synchronous
`MlflowClient.log_metric` HTTP request per metric (8 per step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch


def make_step(size: str):  # noqa: ANN201
    from dist_forget.models.hf import build

    model = build(size, vocab_size=4096, max_seq_len=128, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, 4096, (8, 128), generator=torch.Generator().manual_seed(0))

    def step() -> float:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def metrics_of(loss: float, i: int) -> dict[str, float]:
    names = ("train/loss", "train/lr", "train/tokens_per_s", "train/mfu", "train/grad_norm",
             "train/inject_fraction", "val/ft_loss", "val/pt_loss")  # fmt: skip
    return {n: loss + k + i * 1e-3 for k, n in enumerate(names)}


def timed(step, n: int, log=None) -> list[float]:  # noqa: ANN001
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        loss = step()
        if log is not None:
            log(metrics_of(loss, i), i)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="cpu-0.3m")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--system-interval", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from mlflow import MlflowClient

    from dist_forget.tracking import Tracker, TrackingConfig
    from dist_forget.tracking.config import resolve
    from dist_forget.tracking.server import LocalServer
    from dist_forget.tracking.system_metrics import start_system_metrics, stop_system_metrics

    step = make_step(args.size)
    timed(step, 5)  # warm-up
    with tempfile.TemporaryDirectory() as tmp, LocalServer(Path(tmp) / "server") as server:
        cfg = TrackingConfig(uri=server.uri, experiment="bench-tracking", flush_every_s=1.0, system_metrics=False)
        tracker = Tracker.create(cfg, 0, "bench", {"size": args.size}, Path(tmp) / "run")
        rt = resolve(cfg, Path(tmp) / "run")
        base, tracked, system, ratios, sys_ratios = [], [], [], [], []
        monitor_cpu, monitor_wall, samples = 0.0, 0.0, 0
        for _ in range(args.blocks):
            base += timed(step, args.steps)
            tracked += timed(step, args.steps, tracker.log_metrics)
            # the monitor runs only during its own blocks, so the other two stay clean
            monitor = start_system_metrics(tracker.run_id, replace(rt, run_id=tracker.run_id), args.system_interval)
            first, t0 = monitor._logging_step, time.perf_counter()
            system += timed(step, args.steps, tracker.log_metrics)
            monitor_wall += time.perf_counter() - t0
            monitor_cpu += time.clock_gettime(time.pthread_getcpuclockid(monitor._process.ident))
            samples += monitor._logging_step - first
            stop_system_metrics(monitor)
            b = statistics.median(base[-args.steps :])
            ratios.append(statistics.median(tracked[-args.steps :]) / b)
            sys_ratios.append(statistics.median(system[-args.steps :]) / b)
        # CPU the sender thread used (HTTP, JSON): the most it can take from the training thread.
        sender_cpu = time.clock_gettime(time.pthread_getcpuclockid(tracker._thread.ident))
        tracked_wall = sum(tracked) + sum(system)
        t0 = time.perf_counter()
        tracker.finish()
        finish_s = time.perf_counter() - t0
        # Per-call cost of log_metrics itself (queue put), on a fresh live tracker.
        probe = Tracker.create(cfg, 0, "bench-calls", {}, Path(tmp) / "run2")
        calls = []
        for i in range(2000):
            t0 = time.perf_counter()
            probe.log_metrics(metrics_of(1.0, i), i)
            calls.append(time.perf_counter() - t0)
        probe.finish()
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.get_experiment_by_name("bench-tracking").experiment_id).info.run_id
        naive = timed(step, 5, lambda m, i: [client.log_metric(run_id, k, v, step=i) for k, v in m.items()])
        logged = len(client.get_metric_history(tracker.run_id, "train/loss"))

    b, t, nv = statistics.median(base), statistics.median(tracked), statistics.median(naive)
    sm = statistics.median(system)
    print(f"model {args.size}, {args.blocks} alternating blocks of {args.steps} steps, 1 thread")
    print(f"step time, no tracking:           {b * 1e3:8.2f} ms (median)")
    print(
        f"step time, Tracker (8 metrics):   {t * 1e3:8.2f} ms (median)  ratio {t / b:.4f}; "
        f"median of per-block ratios {statistics.median(ratios):.4f}"
    )
    print(
        f"step time, Tracker + system metrics every {args.system_interval:g} s: {sm * 1e3:8.2f} ms (median)  "
        f"ratio {sm / b:.4f}; median of per-block ratios {statistics.median(sys_ratios):.4f}; "
        f"vs Tracker alone {sm / t:.4f}"
    )
    print(
        f"system-metrics thread CPU: {monitor_cpu * 1e3:.0f} ms over {monitor_wall:.1f} s "
        f"= {monitor_cpu / monitor_wall:.2%} of one core at a {args.system_interval:g} s interval "
        f"({samples} samples logged); at the default 10 s: ~{monitor_cpu / monitor_wall * args.system_interval / 10:.2%}"
    )
    print(
        f"sender thread CPU: {sender_cpu * 1e3:.0f} ms over {tracked_wall:.1f} s of tracked steps "
        f"= {sender_cpu / tracked_wall:.2%} of one core"
    )
    print(f"step time, naive log_metric x 8:  {nv * 1e3:8.2f} ms (median)  ratio {nv / b:.2f}")
    print(f"log_metrics call: {statistics.median(calls) * 1e6:.1f} us median, "
          f"{sorted(calls)[int(0.99 * len(calls))] * 1e6:.1f} us p99 (8 metrics)")  # fmt: skip
    print(f"finish() (final flush + end run): {finish_s * 1e3:.0f} ms; steps logged to the server: {logged}")


if __name__ == "__main__":
    main()
