"""The engine across real processes: 2-rank ZeRO-2 == 1 process, 2 "nodes" == 2 ranks, SIGKILL + resume,
and a 2-rank checkpoint resharded to 1 rank resumes with the 2-rank losses (refused without reshard);
zero-to-hf turns the engine's ZeRO checkpoint into the same model as the engine's own export.

Tolerance: per-step training losses agree to 2e-5 nats/token (fp32; only the order of the gradient
reduction differs between 1 and 2 ranks, which moves the 5th-6th significant digit after a few steps).

Cost: every process start imports torch + transformers (+ deepspeed), which dwarfs 4 steps of the
0.03M model, so the runs are shared: one 2-rank run (no launcher process: `run_ranks`) feeds the
comparison with 1 process, the 2-node launch, the reshard and zero-to-hf; the resumes run in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_forget import cli
from dist_forget.checkpoint.meta import read_meta
from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.preemption import PREEMPTED_EXIT
from dist_forget.engine.trainer import train
from dist_forget.models import hf
from dist_forget.net import free_port
from tests.conftest import group_gone, sigkill_after_step, signal_after_step, tiny_finetune_overrides
from tests.distributed.conftest import REPO, run_ranks

CONFIG = REPO / "configs" / "finetune" / "tiny.yaml"
BIN = Path(sys.executable).parent
TOL = 2e-5
STEPS, CKPT_AT = 4, 2  # a checkpoint at step 2 (and 4): resumes replay steps 3-4
TWO_RANK = ("engine=deepspeed", "parallel.zero_stage=2", "train.micro_batch=1")


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _overrides(tiny_data, base_model: Path, out: Path, *extra: str) -> list[str]:
    return tiny_finetune_overrides(
        tiny_data,
        base_model,
        out,
        "data.inject_fraction=0.25",
        "optim.anchor_decay=0.1",
        f"checkpoint.every={CKPT_AT}",
        f"schedule.steps={STEPS}",
        *extra,
    )


def _argv(tiny_data, base_model: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--config", str(CONFIG), *_overrides(tiny_data, base_model, out, *extra)]


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


def _close(a: dict[int, float], b: dict[int, float]) -> None:
    assert a.keys() == b.keys()
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < TOL, (worst, a, b)


def _one_rank_env(monkeypatch) -> None:
    """engine=deepspeed in this process as a world of one; the env is restored after the test."""
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "DS_ACCELERATOR": "cpu",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def single_run(tiny_data, base_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(load_config(RunConfig, CONFIG, _overrides(tiny_data, base_model, out)), "finetune")
    return out


@pytest.fixture(scope="module")
def zero2_run(tiny_data, base_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2") / "run"
    run_ranks("-m", ["dist_forget.cli", *_argv(tiny_data, base_model, out, *TWO_RANK)], world=2)
    return out


def test_two_rank_zero2_matches_single_process(single_run, zero2_run):
    _close(_losses(zero2_run), _losses(single_run))
    one = json.loads((single_run / "summary.json").read_text())
    two = json.loads((zero2_run / "summary.json").read_text())
    assert two["steps"] == one["steps"]
    assert abs(two["ft_loss"] - one["ft_loss"]) < TOL and abs(two["pt_loss"] - one["pt_loss"]) < TOL
    report = json.loads((zero2_run / "report.json").read_text())
    assert report["world_size"] == 2 and report["inject_fraction_observed"] == 0.25


def test_two_rank_zero2_on_shards_over_http_equals_it_on_local_shards(
    tiny_data, base_model, zero2_run, tmp_path
):
    """The same 2-rank ZeRO-2 finetune with data.target / data.pretrain at a loopback HTTP server (with a
    password in the URL): the same losses bit for bit and the same final weights; the two ranks share one
    node's cache, so each shard crosses the network once; the password is in no file of the run and in
    no line of its output."""
    from safetensors.torch import load_file

    from dist_forget.net import StaticServer

    out, secret = tmp_path / "http", "pw-5521-x"
    with StaticServer(tiny_data.code.parent) as server:
        url = f"http://reader:{secret}@127.0.0.1:{server.server_address[1]}"
        data = [
            f"data.target={url}/code",
            f"data.pretrain={url}/english",
            f"data.cache_dir={tmp_path / 'cache'}",
        ]
        outs = run_ranks(
            "-m", ["dist_forget.cli", *_argv(tiny_data, base_model, out, *TWO_RANK, *data)], world=2
        )
    assert _losses(out) == _losses(zero2_run)
    a, b = (
        load_file(out / "model" / "model.safetensors"),
        load_file(zero2_run / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    one, two = (json.loads((d / "summary.json").read_text()) for d in (zero2_run, out))
    assert {k: v for k, v in one.items() if k != "run_id"} == {k: v for k, v in two.items() if k != "run_id"}
    assert (out / "model" / "tokenizer.json").read_bytes() == (tiny_data.code / "tokenizer.json").read_bytes()
    tars = [path for method, path, _ in server.requests if method == "GET" and path.endswith(".tar")]
    assert tars and len(tars) == len(set(tars)), tars
    assert not [f for f in out.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
    assert not [o for o in outs if secret in o]


def test_two_node_launch_matches_two_ranks(tiny_data, base_model, zero2_run, tmp_path):
    """Two torchrun invocations, one per "node" (static rendezvous on loopback), one rank each."""
    out = tmp_path / "nodes"
    port = str(free_port())
    cmds = [
        [
            str(BIN / "torchrun"),
            "--nnodes",
            "2",
            "--node-rank",
            str(r),
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
            "-m",
            "dist_forget.cli",
            *_argv(tiny_data, base_model, out, *TWO_RANK),
        ]
        for r in (0, 1)
    ]
    env = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            c,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for c in cmds
    ]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    _close(_losses(out), _losses(zero2_run))
    assert json.loads((out / "report.json").read_text())["world_size"] == 2


def test_sigkill_then_resume_auto_equals_uninterrupted(tiny_data, base_model, single_run, tmp_path):
    out = tmp_path / "killed"
    argv = _argv(tiny_data, base_model, out)
    # killed right after step 3 is logged: one step past the step-2 checkpoint, before the last one
    sigkill_after_step(argv, out, 3)
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{CKPT_AT:08d}"
    assert cli.main([*argv, "--resume", "auto"]) == 0  # the resume itself needs no fresh process
    assert _losses(out) == _losses(single_run)  # bit-identical: same process count, fp32, CPU


def _stopped_at(log: Path) -> int:
    """The step a preempted run saved, from its one line (`stopped at step N (...)`)."""
    import re

    (step,) = re.findall(r"stopped at step (\d+) \(", log.read_text())
    return int(step)


def test_sigterm_saves_the_step_reached_then_resume_auto_equals_uninterrupted(
    tiny_data, base_model, single_run, tmp_path
):
    """SIGTERM right after step 2: the run finishes step 3, saves it (checkpoint.every = 2 puts none there),
    exits 75 with one line; `--resume auto` then ends bit-identical to the uninterrupted run."""
    out, log = tmp_path / "termed", tmp_path / "termed.log"
    argv = _argv(tiny_data, base_model, out)
    proc = signal_after_step(argv, out, 2, signal.SIGTERM, log=log)
    assert proc.returncode == PREEMPTED_EXIT, log.read_text()[-3000:]
    assert _stopped_at(log) == 3 and not (out / "summary.json").exists()
    assert "SIGTERM" in log.read_text() and "--resume auto" in log.read_text()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert max(_losses(out)) == 3  # metrics.jsonl holds the step saved
    assert cli.main([*argv, "--resume", "auto"]) == 0
    assert _losses(out) == _losses(single_run)
    one, two = (json.loads((d / "summary.json").read_text()) for d in (out, single_run))
    assert {k: v for k, v in one.items() if k != "run_id"} == {k: v for k, v in two.items() if k != "run_id"}


def test_two_rank_zero2_under_deepspeed_sigterm_then_resume_auto_equals_uninterrupted(
    tiny_data, base_model, zero2_run, tmp_path
):
    """SIGTERM to every process of a `launchers/deepspeed.sh` launch (as SLURM sends it: the runner, its
    launch.py and both ranks) right after step 2: both ranks finish step 3 and save it together, every process
    is gone, and `--resume auto` on 2 ranks ends bit-identical to the uninterrupted 2-rank run."""
    from tests.integration.launching import LAUNCHERS, launch_env

    out, log = tmp_path / "termed", tmp_path / "termed.log"
    argv = _argv(tiny_data, base_model, out, *TWO_RANK)
    env = launch_env(NPROC="2", MASTER_PORT=str(free_port()))
    proc = signal_after_step(argv, out, 2, signal.SIGTERM, command=[str(LAUNCHERS / "deepspeed.sh"), *argv],
                             env=env, log=log)  # fmt: skip
    assert group_gone(proc.pid, 120), "ranks still running 120 s after SIGTERM"
    text = log.read_text()
    assert _stopped_at(log) == 3 and text.count("stopped at step 3") == 1, text[-3000:]  # rank 0 says it
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    run_ranks("-m", ["dist_forget.cli", *argv, "--resume", "auto"], world=2)
    assert _losses(out) == _losses(zero2_run)
    one, two = (json.loads((d / "summary.json").read_text()) for d in (out, zero2_run))
    assert {k: v for k, v in one.items() if k != "run_id"} == {k: v for k, v in two.items() if k != "run_id"}


def test_other_world_size_needs_reshard_then_resumes_like_two_ranks(
    tiny_data, base_model, zero2_run, tmp_path, monkeypatch, capsys
):
    """2-rank ZeRO-2 stopped at step 2 → `convert reshard --world-size 1` → `finetune --resume DIR` on 1 process
    continues with the uninterrupted 2-rank losses. (The step-2 checkpoint of the uninterrupted run is
    byte-for-byte what a run stopped after step 2 leaves.)"""
    _one_rank_env(monkeypatch)
    src = zero2_run / "checkpoints" / f"step-{CKPT_AT:08d}"
    out = tmp_path / "one_rank"
    argv = _argv(tiny_data, base_model, out, *TWO_RANK)
    assert cli.main([*argv, "--resume", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "written by 2 ranks, this run has 1" in err
    assert "dist-forget convert reshard" in err and "--world-size 1" in err

    resharded = tmp_path / "w1"
    assert (
        cli.main(
            ["convert", "reshard", "--checkpoint", str(src), "--out", str(resharded), "--world-size", "1"]
        )
        == 0
    )
    meta, old = read_meta(resharded), read_meta(src)
    assert (meta["world_size"], old["world_size"]) == (1, 2)  # the source is only read
    assert meta["data_fingerprint"] != old["data_fingerprint"] and meta["model"] == old["model"]
    assert (resharded / "hf_config.json").is_file()
    assert (resharded / "tokenizer_config.json").is_file()  # the run's tokenizer travels with the copy

    assert cli.main([*argv, "--resume", str(resharded)]) == 0
    full = _losses(zero2_run)
    _close(_losses(out), {k: v for k, v in full.items() if k > CKPT_AT})
    one, two = (json.loads((d / "summary.json").read_text()) for d in (out, zero2_run))
    assert one["steps"] == two["steps"] and abs(one["ft_loss"] - two["ft_loss"]) < TOL
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 1 and report["inject_fraction_observed"] == 0.25
    # and the 1-rank run's own checkpoints now resume on 1 rank without further ado
    assert read_meta(out / "checkpoints" / f"step-{STEPS:08d}")["world_size"] == 1


def test_zero_to_hf_finds_the_engine_config_and_matches_the_export(zero2_run, tmp_path):
    """Engine ZeRO-2 checkpoint → `convert zero-to-hf` (no --hf-config, no --tokenizer) → transformers loads
    it → same logits as the engine's own `model/` export of the same step, with the run's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = zero2_run / "checkpoints" / f"step-{STEPS:08d}"
    assert cli.main(["convert", "zero-to-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "hf")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").eos_token == "<|endoftext|>"
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    exported = hf.load_folder(zero2_run / "model").eval()
    ids = torch.randint(0, exported.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(converted(input_ids=ids).logits, exported(input_ids=ids).logits)
