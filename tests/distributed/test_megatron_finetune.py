"""`dist-forget finetune engine=megatron parallel.tp=2` under torchrun (2 gloo ranks) on real shards:
the same exact mixed stream, AnchoredAdamW, summary.json and HF export as the 1-process run.

Tolerance: per-step training losses within 2e-5 nats/token of engine=single (seen ~1e-6: TP only
changes the summation order of the row-parallel products).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.trainer import train
from dist_forget.models import hf

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "finetune" / "tiny.yaml"
TOL = 2e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(tiny_data, base: Path, out: Path, *extra: str) -> list[str]:
    return [f"out_dir={out}", f"model.init_from={base}", f"data.target={tiny_data.code}",
            f"data.pretrain={tiny_data.english}", "data.target_tokens=null", "data.inject_fraction=0.25",
            "tracking.enabled=false", "train.batch_size=4", "train.micro_batch=2", "train.eval_sequences=8",
            "train.eval_every=3", "schedule.steps=6", "schedule.warmup=1", "optim.anchor_decay=0.1", *extra]


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def test_tp2_finetune_via_cli_matches_single_process(tiny_data, tmp_path: Path) -> None:
    base = tmp_path / "base"
    hf.build("cpu-0.03m", tiny_data.vocab_size, tiny_data.seq_len, seed=0).save_pretrained(base)
    single = tmp_path / "single"
    train(load_config(RunConfig, CONFIG, _overrides(tiny_data, base, single)), "finetune")

    out = tmp_path / "tp2"
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "dist_forget.cli", "finetune", "--config", str(CONFIG),
           *_overrides(tiny_data, base, out, "engine=megatron", "parallel.tp=2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "megatron x2" in proc.stdout

    a, b = _losses(out), _losses(single)
    assert a.keys() == b.keys() == set(range(1, 7))
    assert max(abs(a[k] - b[k]) for k in a) < TOL, (a, b)
    one = json.loads((single / "summary.json").read_text())
    two = json.loads((out / "summary.json").read_text())
    assert two["steps"] == one["steps"]
    assert abs(two["ft_loss"] - one["ft_loss"]) < TOL and abs(two["pt_loss"] - one["pt_loss"]) < TOL
    # the checkpoints are Megatron folders (convertible), the best model an ordinary HF folder
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert json.loads((latest / "megatron.json").read_text())["tp"] == 2
    best = hf.load_folder(out / "best")
    assert best.config.hidden_size == 32


def test_tp_pp_not_dividing_the_world_fails_before_training(tiny_data, tmp_path: Path) -> None:
    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.errors import UserError

    for tp, pp in ((3, 1), (1, 2)):
        backend = MegatronBackend(BackendConfig(ParallelConfig(tp=tp, pp=pp), "fp32", 1.0, 0))
        with pytest.raises(UserError, match=f"parallel.tp={tp} x parallel.pp={pp} does not divide the number "
                                            "of processes 1"):
            backend.init_distributed()
