"""A stand-in for `dist-forget pretrain|finetune --config CFG --resume auto key=value...` in sweep tests.

It parses the same command line the sweep builds, records each attempt, sleeps a little and writes a
summary.json whose losses follow a made-up law, so the sweep machinery is tested without training.
Env: FAKE_RUN_SECONDS (sleep), FAKE_FAIL (a run name that exits 1), FAKE_SLOW (a run name that sleeps
600 s: a test kills it), FAKE_HOLD (a file: every run waits until it exists, then goes on), FAKE_TRACK=1
(log to MLflow with the real Tracker, so nesting under the sweep's parent run is checked end to end). Each
attempt's key=value words are kept in args.json (what the run was told: the sweep's overrides must reach it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from dist_forget.io import write_json_atomic
from dist_forget.models.ladder import shape_of


def main(argv: list[str]) -> int:
    stage = argv[0]
    assert argv[1] == "--config" and argv[3:5] == ["--resume", "auto"], argv
    kv = dict(a.split("=", 1) for a in argv[5:] if "=" in a)
    out = Path(kv["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "attempts.txt", "a") as fh:
        fh.write(f"{os.getpid()} OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n")
    write_json_atomic(out / "args.json", kv)
    hold = os.environ.get("FAKE_HOLD")
    while hold and not Path(hold).exists():
        time.sleep(0.05)
    slow = os.environ.get("FAKE_SLOW") == kv["name"]
    time.sleep(600 if slow else float(os.environ.get("FAKE_RUN_SECONDS", "0.2")))
    if os.environ.get("FAKE_FAIL") == kv["name"]:
        return 1
    # a metrics log and, for a pretraining run, an exported model folder (what a finetune starts from)
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps({"kind": "train", "step": s}) + "\n" for s in range(3))
    )
    if stage == "pretrain":
        n = shape_of(kv["model.size"]).non_embedding_params()
        summary = {"model_params": n, "steps": int(kv["schedule.steps"]), "pt_loss": 3.0 + 40 * n**-0.3}
        write_json_atomic(out / "model" / "config.json", {"size": kv["model.size"], "pid": os.getpid()})
    else:
        base = json.loads((Path(kv["model.init_from"]) / "summary.json").read_text())  # must exist first
        model = Path(kv["model.init_from"]) / "model" / "config.json"
        (out / "init_model.json").write_text(model.read_text() if model.is_file() else "")
        n, d = base["model_params"], int(kv["data.target_tokens"])
        p, a = float(kv["data.inject_fraction"]), float(kv["optim.anchor_decay"])
        forgetting = 2.0 * d**0.1 * n**-0.2 / (1 + 100 * p + 10 * a)
        summary = {"domain": kv["domain"], "model_params": n, "target_tokens": d, "inject_fraction": p,
                   "anchor_decay": a, "ft_loss": 1.5 + 30 * n**-0.3 + 20 * d**-0.3,
                   "pt_loss": base["pt_loss"] + forgetting, "pt_loss_base": base["pt_loss"], "steps": 10,
                   "run_id": kv["name"]}  # fmt: skip
    if os.environ.get("FAKE_TRACK") == "1":
        from dist_forget.tracking import Tracker, TrackingConfig

        with Tracker.create(
            TrackingConfig(flush_every_s=0.1, system_metrics=False), 0, kv["name"], kv, out
        ) as tracker:
            tracker.log_metrics({"val/ft_loss": summary.get("ft_loss", 0.0)}, step=10)
            summary["run_id"] = tracker.run_id
    write_json_atomic(out / "summary.json", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
