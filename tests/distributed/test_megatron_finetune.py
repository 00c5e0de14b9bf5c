"""`dist-forget finetune engine=megatron parallel.tp=2` under torchrun (2 gloo ranks) on real shards:
the same exact mixed stream, AnchoredAdamW, summary.json and HF export as the 1-process run; its step-3
checkpoint (megatron-core's format) resumes as it is at tp=1 to the same losses; `convert reshard-megatron`
re-keys it for more data-parallel replicas; a Megatron folder works as `model.init_from`.

Tolerance: per-step training losses within 2e-5 nats/token of engine=single (seen ~1e-6: TP only
changes the summation order of the row-parallel products). The same bound holds for the tp=2 -> tp=1
resume (fp32 noise of the same kind; the weights and optimizer state read back are bit-exact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dist_forget.checkpoint import megatron_dist
from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.trainer import train
from dist_forget.models import hf
from dist_forget.net import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "finetune" / "tiny.yaml"
TOL = 2e-5


def _overrides(tiny_data, base: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"out_dir={out}",
        f"model.init_from={base}",
        f"data.target={tiny_data.code}",
        f"data.pretrain={tiny_data.english}",
        "data.target_tokens=null",
        "data.inject_fraction=0.25",
        "tracking.enabled=false",
        "train.batch_size=4",
        "train.micro_batch=2",
        "train.eval_sequences=8",
        "train.eval_every=3",
        "schedule.steps=6",
        "schedule.warmup=1",
        "optim.anchor_decay=0.1",
        *extra,
    ]


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> SimpleNamespace:
    """The base model, its 1-process finetune, and the same finetune with engine=megatron tp=2 under
    torchrun, checkpointing every 3 steps (the step-3 checkpoint is what an interrupted run leaves)."""
    root = tmp_path_factory.mktemp("megatron_ft")
    base = root / "base"
    hf.build("cpu-0.03m", tiny_data.vocab_size, tiny_data.seq_len, seed=0).save_pretrained(base)
    single = root / "single"
    train(load_config(RunConfig, CONFIG, _overrides(tiny_data, base, single)), "finetune")

    tp2 = root / "tp2"
    cmd = [
        str(Path(sys.executable).parent / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "-m",
        "dist_forget.cli",
        "finetune",
        "--config",
        str(CONFIG),
        *_overrides(
            tiny_data,
            base,
            tp2,
            "engine=megatron",
            "parallel.tp=2",
            "checkpoint.every=3",
            "checkpoint.keep=4",
        ),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return SimpleNamespace(root=root, base=base, single=single, tp2=tp2, stdout=proc.stdout)


def test_tp2_finetune_via_cli_matches_single_process(runs) -> None:
    single, out = runs.single, runs.tp2
    assert "megatron x2" in runs.stdout

    a, b = _losses(out), _losses(single)
    assert a.keys() == b.keys() == set(range(1, 7))
    assert max(abs(a[k] - b[k]) for k in a) < TOL, (a, b)
    one = json.loads((single / "summary.json").read_text())
    two = json.loads((out / "summary.json").read_text())
    assert two["steps"] == one["steps"]
    assert abs(two["ft_loss"] - one["ft_loss"]) < TOL and abs(two["pt_loss"] - one["pt_loss"]) < TOL
    # the checkpoints are megatron-core folders (convertible), the best model an ordinary HF folder
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert megatron_dist.load_common(latest)["args"].tensor_model_parallel_size == 2
    assert json.loads((latest / "meta.json").read_text())["data_parallel"] == 1
    best = hf.load_folder(out / "best")
    assert best.config.hidden_size == 32


def _world_of_one(monkeypatch) -> None:
    """engine=megatron in this process as a world of one (restored after the test)."""
    for key, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", str(free_port())),
    ):
        monkeypatch.setenv(key, value)


def test_tp2_checkpoint_resumes_at_tp1_like_the_uninterrupted_run(runs, tiny_data, monkeypatch) -> None:
    _world_of_one(monkeypatch)
    out = runs.root / "resumed-tp1"
    cfg = load_config(
        RunConfig, CONFIG, _overrides(tiny_data, runs.base, out, "engine=megatron", "parallel.tp=1")
    )
    train(cfg, "finetune", resume=str(runs.tp2 / "checkpoints" / "step-00000003"))
    got, want = _losses(out), _losses(runs.tp2)
    assert got.keys() == {4, 5, 6}
    assert max(abs(got[k] - want[k]) for k in got) < TOL, (got, want)
    done = json.loads((out / "summary.json").read_text())
    assert abs(done["ft_loss"] - json.loads((runs.tp2 / "summary.json").read_text())["ft_loss"]) < TOL


def test_reshard_to_more_data_parallel_ranks_keeps_every_state_exactly(runs, tiny_data) -> None:
    from dist_forget.checkpoint import megatron_train
    from dist_forget.convert.megatron_hf import read_megatron, reshard_megatron
    from dist_forget.data.mixture import MixedStream

    ckpt = runs.tp2 / "checkpoints" / "step-00000003"
    out = runs.root / "tp1-dp2"
    summary = reshard_megatron(ckpt, out, world_size=2, tp=1)
    assert summary["from"] == {"tp": 2, "pp": 1, "dp": 1, "world_size": 2}
    assert summary["to"] == {"tp": 1, "pp": 1, "dp": 2, "world_size": 2}
    assert summary["optimizer_keys"] == ["anchor", "exp_avg", "exp_avg_sq"]
    cfg_a, full_a, opt_a = read_megatron(ckpt, optimizer=True)
    cfg_b, full_b, opt_b = read_megatron(out, optimizer=True)
    assert cfg_a == cfg_b and all(torch.equal(full_a[k], full_b[k]) for k in full_a)
    assert opt_a["param_groups"] == opt_b["param_groups"]
    for name, st in opt_a["state"].items():
        assert st.keys() == {"step", "exp_avg", "exp_avg_sq", "anchor"}
        assert all(torch.equal(v, opt_b["state"][name][k]) for k, v in st.items()), name
    # the stream position is the same global one, keyed for 2 data-parallel ranks (what a dp=2 run checks)
    meta = json.loads((out / "meta.json").read_text())
    client = megatron_train.read_common(out)["dist_forget"]["client_state"]
    old = megatron_train.read_common(ckpt)["dist_forget"]["client_state"]
    run = load_config(RunConfig, CONFIG, _overrides(tiny_data, runs.base, out))
    assert (meta["world_size"], meta["data_parallel"], meta["config"]["parallel"]["tp"]) == (2, 2, 1)
    assert (
        meta["data_fingerprint"] == client["data"]["fingerprint"] == MixedStream(run.data, 0, 2).fingerprint
    )
    assert client["data"]["consumed"] == old["data"]["consumed"] and client["train"] == old["train"]


def test_reshard_bad_input_is_one_line_and_writes_nothing(runs) -> None:
    from dist_forget.convert.megatron_hf import hf_to_megatron, reshard_megatron
    from dist_forget.errors import UserError

    ckpt = runs.tp2 / "checkpoints" / "step-00000003"
    bad = runs.root / "bad"
    converted = runs.root / "converted"
    hf_to_megatron(runs.base, converted, tp=2)
    cases = [
        ((ckpt, bad), {"world_size": 4, "tp": 4}, "does not divide the model's num_attention_heads=2"),
        ((ckpt, bad), {"world_size": 3}, "--world-size 3 is not a multiple of --tp 2"),
        ((converted, bad), {"world_size": 1}, "not an engine=megatron training checkpoint"),
        ((ckpt, ckpt), {"world_size": 1}, "is the source checkpoint"),
    ]
    for args, kw, message in cases:
        with pytest.raises(UserError, match=message) as info:
            reshard_megatron(*args, **kw)
        assert "\n" not in str(info.value)
        assert not bad.exists()


def test_megatron_folder_as_init_from_gives_the_hf_folders_first_step(runs, tiny_data) -> None:
    from dist_forget.convert.megatron_hf import hf_to_megatron

    meg = hf_to_megatron(runs.base, runs.root / "base-tp2", tp=2)
    out = runs.root / "from-megatron"
    cfg = load_config(
        RunConfig,
        CONFIG,
        _overrides(tiny_data, meg, out, "schedule.steps=1", f"model.cache_dir={runs.root / 'cache'}"),
    )
    train(cfg, "finetune")
    assert _losses(out)[1] == _losses(runs.single)[1]  # same weights, same batch: bit-identical
    assert len(list((runs.root / "cache").glob("megatron-base-tp2-*/config.json"))) == 1


def test_tp_pp_not_dividing_the_world_fails_before_training(tiny_data, tmp_path: Path) -> None:
    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.errors import UserError

    for tp, pp in ((3, 1), (1, 2)):
        backend = MegatronBackend(BackendConfig(ParallelConfig(tp=tp, pp=pp), "fp32", 1.0, 0))
        with pytest.raises(
            UserError, match=f"parallel.tp={tp} x parallel.pp={pp} does not divide the number of processes 1"
        ):
            backend.init_distributed()
