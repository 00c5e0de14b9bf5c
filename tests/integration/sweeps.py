"""Sweeps of the stand-in run (fake_run.py) for the sweep tests: a sweep YAML and what its runs recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

FAKE = str(Path(__file__).with_name("fake_run.py"))


def write_sweep(tmp: Path, seeds: list[int] | None = None, **changes: object) -> Path:
    (tmp / "cfg.yaml").write_text("train:\n  batch_size: 4\n")
    doc = {
        "name": "t",
        "out_dir": str(tmp / "sweep"),
        "command": [sys.executable, FAKE],
        "max_parallel": 2,
        "pretrain": {"config": str(tmp / "cfg.yaml"), "sizes": ["cpu-0.03m", "cpu-0.1m"], "seq_len": 32},
        "finetune": {"config": str(tmp / "cfg.yaml"), "domains": {"code": "shards/code"}},
        "grid": {"target_tokens": [1000, 100000], "inject_fraction": [0.0, 0.01], "seeds": seeds or [0]},
        "fit": {"enabled": False},
        "tracking": {"enabled": False},
        **changes,
    }
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def attempts(tmp: Path, sweep: str = "sweep") -> dict[str, int]:
    """How many times each run of the sweep folder tmp/sweep was started (by folder name)."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in (tmp / sweep).glob("*/*/attempts.txt")}


def summaries(tmp: Path, sweep: str = "sweep") -> int:
    return len(list((tmp / sweep).glob("*/*/summary.json")))
