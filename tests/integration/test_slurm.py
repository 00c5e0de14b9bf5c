"""Sweeps on a real SLURM cluster (the `slurm` fixture: slurmctld + 2 slurmd on loopback). The README's
`sbatch launchers/slurm.sbatch` and SLURM sweep lines run on it in tests/integration/test_readme_runs.py.

The sweep machinery is driven with the stand-in run (fake_run.py: real processes, no training) except in
the engine test, which runs the same tiny real sweep through the local pool and through SLURM.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_forget.cli import main as cli_main
from dist_forget.sweep.slurm_cluster import CRED_EXPIRE_S
from dist_forget.sweep.slurm_jobs import ENDED, queue
from tests.integration.sweeps import attempts, write_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
POLL = "slurm.poll_s=0.5"  # look at the queue often: the runs here take a second


@pytest.fixture
def on_slurm(slurm, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """This process (and what it submits) talks to the test cluster, from the repository root."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0.2")
    monkeypatch.chdir(ROOT)
    return slurm


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _wait_for(predicate, timeout_s: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the cluster made no progress"
        time.sleep(0.2)


@pytest.mark.slurm
def test_submit_wait_keeps_every_override_then_redoes_nothing(
    on_slurm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # noqa: ANN001
    """Overrides given when the scripts are written reach every job, collect included (it used to
    collect the YAML's out_dir); pretrain → finetune → collect run in order; a rerun submits no run again."""
    config = write_sweep(tmp_path)  # its out_dir is tmp/sweep: the override moves the whole sweep
    moved = tmp_path / "moved"
    overrides = [f"out_dir={moved}", "grid.target_tokens=[1000]", 'pretrain.overrides=["optim.lr=0.25"]',
                 'finetune.overrides=["optim.lr=0.5"]', POLL]  # fmt: skip
    command = ["sweep", "--config", str(config), "--backend", "slurm", "--submit", "--wait", *overrides]
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    pre_job, ft_job = re.findall(r"^(?:pretrain|finetune): job (\d+), ", out, flags=re.M)
    assert f"pretrain: job {pre_job}, 2 of 2 runs to do" in out and f"finetune: job {ft_job}, 4 of 4" in out
    (collect_job,) = re.findall(rf"^collect \+ fit: job (\d+) \(after job {ft_job}\)$", out, flags=re.M)
    assert f"finetune job {ft_job}: 4/4 finished, 0 running, 0 pending, 0 failed" in out
    assert f"collect + fit: job {collect_job} COMPLETED" in out

    assert not (tmp_path / "sweep").exists()  # nothing of the YAML's own out_dir, collect included
    rows = _rows(moved / "runs.csv")  # written by the collect job: it saw out_dir and the grid override
    assert sorted(r["name"] for r in rows) == sorted(
        f"{s}_code_D1000_p{p}_a0_s0" for s in ("cpu-0.03m", "cpu-0.1m") for p in ("0", "0.01")
    )
    pre = json.loads((moved / "pretrain" / "cpu-0.1m" / "args.json").read_text())
    fine = json.loads((moved / "finetune" / "cpu-0.1m_code_D1000_p0.01_a0_s0" / "args.json").read_text())
    assert (pre["optim.lr"], pre["out_dir"]) == ("0.25", str(moved / "pretrain" / "cpu-0.1m"))
    assert (fine["optim.lr"], fine["model.init_from"]) == ("0.5", str(moved / "pretrain" / "cpu-0.1m"))
    collect_log = (moved / "slurm" / "logs" / f"t-collect-{collect_job}.out").read_text()
    assert f"runs table: 4 of 4 finetune runs in {moved / 'runs.csv'}" in collect_log
    assert set(attempts(tmp_path, "moved").values()) == {1} and len(attempts(tmp_path, "moved")) == 6

    assert cli_main(command) == 0  # everything finished: only the collect job is submitted
    out = capsys.readouterr().out
    assert "pretrain: all 2 runs finished before; nothing to submit" in out and "finetune: all 4 runs" in out
    assert re.search(r"^collect \+ fit: job \d+$", out, flags=re.M) and "runs to do" not in out, out
    assert set(attempts(tmp_path, "moved").values()) == {1}


@pytest.mark.slurm
def test_scancelled_task_is_named_and_alone_redone(
    on_slurm, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    pretrain = {"config": str(tmp_path / "cfg.yaml"), "sizes": ["cpu-0.03m"], "seq_len": 32}
    config = write_sweep(
        tmp_path, pretrain=pretrain, grid={"target_tokens": [1000], "inject_fraction": [0.0, 0.01]}
    )
    slow = "cpu-0.03m_code_D1000_p0.01_a0_s0"
    monkeypatch.setenv("FAKE_SLOW", slow)  # this run sleeps until it is cancelled
    sweep = ["sweep", "--config", str(config), "--backend", "slurm", POLL]
    assert cli_main([*sweep, "--submit"]) == 0
    capsys.readouterr()
    job = next(j["job"] for j in json.loads((tmp_path / "sweep/slurm/jobs.json").read_text())["jobs"]
               if j["stage"] == "finetune")  # fmt: skip
    _wait_for(lambda: (tmp_path / "sweep" / "finetune" / slow / "attempts.txt").exists())

    assert cli_main([*sweep, "--submit"]) == 2  # the same runs are queued: a second submission is refused
    err = capsys.readouterr().err
    assert "still queued or running" in err and f"scancel {job}" in err.replace(",", "")

    names = [p["name"] for p in json.loads((tmp_path / "sweep/slurm/finetune.json").read_text())]
    subprocess.run(["scancel", f"{job}_{names.index(slow)}"], check=True)
    assert cli_main([*sweep, "--wait"]) == 1  # follows the submission above to its collect job
    out = capsys.readouterr().out
    log = tmp_path / "sweep" / "slurm" / "logs" / f"t-finetune-{job}_{names.index(slow)}.out"
    assert (
        f"FAILED finetune {slow}: cancelled without summary.json (task {job}_{names.index(slow)}); log: {log}"
        in out
    )
    assert "1 failed (rerun the same command to resubmit only those)" in out

    monkeypatch.delenv("FAKE_SLOW")
    assert cli_main([*sweep, "--submit", "--wait"]) == 0
    out = capsys.readouterr().out
    assert "pretrain: job" not in out and "finetune: job" in out and "1 of 2 runs to do" in out
    assert attempts(tmp_path) == {"cpu-0.03m": 1, "cpu-0.03m_code_D1000_p0_a0_s0": 1, slow: 2}
    assert len(_rows(tmp_path / "sweep" / "runs.csv")) == 2


def test_slurm_refuses_a_shared_sqlite_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Array tasks on many nodes must not all write one sqlite file: one line says what to do instead."""
    config = write_sweep(tmp_path, tracking={"enabled": True})
    assert cli_main(["sweep", "--config", str(config), "--backend", "slurm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sqlite" in err and "--tracking-server --submit --wait" in err
    assert not (tmp_path / "sweep" / "slurm").exists()


def _engine_sweep(tmp: Path, data, base_model: Path) -> Path:  # noqa: ANN001
    """Two real finetunes (4 steps each) of the tiny base model: an array of 2 tasks. (SLURM's pretrain →
    finetune → collect chain is the same for any command: the stand-in runs above test it, in seconds.)"""
    quick = ["train.eval_sequences=8", "train.peak_flops=1e11", "tracking.system_metrics=false",
             "tracking.flush_every_s=0.5"]  # fmt: skip
    doc = {
        "name": "engine-slurm",
        "max_parallel": 2,
        "finetune": {"config": str(ROOT / "configs/finetune/tiny.yaml"), "domains": {"code": str(data.code)},
                     "overrides": [f"data.pretrain={data.english}", "schedule.steps=4", "schedule.warmup=1",
                                   "train.batch_size=4", "train.micro_batch=4", "train.eval_every=2", *quick],
                     "set": {"model.init_from": str(base_model), "data.target": "{domain_dir}", "domain": "{domain}",
                             "data.target_tokens": "{target_tokens}", "data.inject_fraction": "{inject_fraction}"}},
        "grid": {"sizes": ["cpu-0.03m"], "target_tokens": [2048], "inject_fraction": [0.0, 0.25]},
        "fit": {"enabled": False},
        "tracking": {"experiment": "engine-slurm"},
    }  # fmt: skip
    path = tmp / "sweep.yaml"
    path.write_text(json.dumps(doc))  # (YAML is a superset of JSON)
    return path


@pytest.mark.slurm
def test_real_sweep_on_slurm_equals_the_local_pool_and_tracks_through_a_server(
    on_slurm,
    tiny_data,
    base_model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # noqa: ANN001
    """The same tiny sweep through the local pool (no tracking) and through SLURM with --tracking-server: the
    same runs.csv (losses within 1e-6; run ids set aside), and every SLURM task logged to the server, nested
    under the sweep's run, which the collect job finished."""
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "DIST_FORGET_PARENT_RUN_ID",
    ):
        monkeypatch.delenv(var, raising=False)
    config = str(_engine_sweep(tmp_path, tiny_data, base_model))
    local, on_cluster = tmp_path / "local", tmp_path / "cluster"
    assert cli_main(["sweep", "--config", config, f"out_dir={local}", "tracking.enabled=false"]) == 0
    command = ["sweep", "--config", config, "--backend", "slurm", "--submit", "--wait", "--tracking-server",
               f"out_dir={on_cluster}", POLL]  # fmt: skip
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    uri = re.search(r"MLflow server for the sweep's tasks: (http://\S+) ", out).group(1)
    assert f"export MLFLOW_TRACKING_URI={uri}" in (on_cluster / "slurm" / "finetune.sbatch").read_text()

    def table(folder: Path) -> dict[str, dict[str, str]]:
        return {r["name"]: r for r in _rows(folder / "runs.csv")}

    here, there = table(local), table(on_cluster)
    assert (
        sorted(here) == sorted(there) == ["cpu-0.03m_code_D2048_p0.25_a0_s0", "cpu-0.03m_code_D2048_p0_a0_s0"]
    )
    for name, row in here.items():
        for column in ("ft_loss", "pt_loss", "pt_loss_base"):
            assert abs(float(row[column]) - float(there[name][column])) <= 1e-6, (name, column)
        assert {
            k: v for k, v in row.items() if k not in ("ft_loss", "pt_loss", "pt_loss_base", "run_id")
        } == {
            k: v for k, v in there[name].items() if k not in ("ft_loss", "pt_loss", "pt_loss_base", "run_id")
        }

    # The server is gone with the command; its store is the sweep's own sqlite file, readable directly.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{on_cluster / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("engine-slurm")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    parent = runs.pop("sweep-engine-slurm")
    assert sorted(runs) == ["cpu-0.03m_code_D2048_p0.25_a0_s0", "cpu-0.03m_code_D2048_p0_a0_s0"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent.info.run_id}
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert {there[n]["run_id"] for n in there} == {runs[n].info.run_id for n in there}


@pytest.mark.slurm
def test_slurm_up_and_down_stop_exactly_their_daemons(slurm, tmp_path: Path) -> None:  # noqa: ANN001
    """`make slurm-up` / `make slurm-down` (tools/slurm_cluster.py): a second cluster beside the fixture's,
    up in one process and stopped by PID from another; the fixture's cluster is untouched."""
    folder = tmp_path / "cluster"
    tool = [sys.executable, str(ROOT / "tools" / "slurm_cluster.py")]
    env = {**slurm.env(), "PYTHONPATH": str(ROOT)}
    up = subprocess.run([*tool, "up", str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert f"export SLURM_CONF={folder / 'slurm.conf'}" in up.stdout
    pids = json.loads((folder / "cluster.json").read_text())["pids"]
    assert sorted(pids) == ["munged", "slurmctld", "slurmd-n1", "slurmd-n2"]
    ours = {**env, "SLURM_CONF": str(folder / "slurm.conf")}
    job = subprocess.run(
        ["srun", "--nodes=2", "hostname"], env=ours, capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0 and len(job.stdout.splitlines()) == 2, job.stderr

    down = subprocess.run([*tool, "down", str(folder)], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    for pid in pids.values():  # gone, or a zombie waiting for its reaper (nothing runs)
        assert not Path(f"/proc/{pid}/cmdline").exists() or not Path(f"/proc/{pid}/cmdline").read_bytes()
    assert (
        subprocess.run(["sinfo"], env=slurm.env(), capture_output=True).returncode == 0
    )  # the fixture's lives


@pytest.mark.slurm
def test_time_limit_warning_saves_requeues_and_resumes_bit_identically(
    slurm,
    tiny_data,
    base_model,
    one_thread,
    tmp_path: Path,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """launchers/slurm.sbatch on the loopback cluster (1 node, torchrun, 1 rank) gets SIGUSR1 in its batch
    shell as SLURM sends it ahead of the time limit (`--signal=B:USR1@180`; here `scancel --batch
    --signal=USR1`, the same delivery): the rank saves the step it reached, the job requeues itself, and its
    second attempt resumes: the same metrics and summary as an uninterrupted run."""
    from dist_forget.config import load_config
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.trainer import train
    from dist_forget.net import free_port
    from tests.conftest import tiny_finetune_overrides
    from tests.integration.launching import LAUNCHERS, launch_env

    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))  # for _state (the sweep's own squeue reader)
    config, extra = (
        ROOT / "configs/finetune/tiny.yaml",
        ("schedule.steps=40", "train.eval_every=10", "checkpoint.every=10"),
    )
    reference, out, log = tmp_path / "reference", tmp_path / "run", tmp_path / "job.out"
    train(
        load_config(RunConfig, config, tiny_finetune_overrides(tiny_data, base_model, reference, *extra)),
        "finetune",
    )
    argv = ["finetune", "--config", str(config), *tiny_finetune_overrides(tiny_data, base_model, out, *extra)]
    env = {**slurm.env(), **launch_env(NPROC="1", RDZV_PORT=str(free_port()))}
    env["PATH"] = slurm.env()["PATH"] + os.pathsep + env["PATH"]
    sub = subprocess.run(["sbatch", "--parsable", "--nodes=1", f"--output={log}", str(LAUNCHERS / "slurm.sbatch"),
                          *argv], cwd=ROOT, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    job = sub.stdout.strip().split(";")[0]
    try:
        _wait_for(lambda: '"step": 2,' in _read(out / "metrics.jsonl"), 300)
        subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
        _wait_for(lambda: _state(job) == "PENDING", 300)  # requeued
        # SLURM holds a requeued job back until its credential expires (cred_expire, 20 s on this cluster), then
        # starts it again: that restart is what is under test, so it is not forced earlier
        # run again and ended: a final state seen, never the mere absence of a line (squeue may fail under load)
        _wait_for(lambda: _state(job) in ENDED | {"GONE"}, 400 + CRED_EXPIRE_S)
    finally:
        if _state(job) not in ENDED | {"GONE"}:
            subprocess.run(["scancel", job], env=env, capture_output=True)
    text = log.read_text()
    assert f"requeueing job {job}" in text and "SLURM restart 1 of this job: resuming" in text, (
        f"job {job} ended {_state(job)}; its log ends:\n{text[-2000:]}\nslurmctld on it:\n"
        + "\n".join(
            line
            for line in _read(slurm.folder / "log" / "slurmctld.log").splitlines()
            if f"JobId={job} " in line + " "
        )  # fmt: skip
    )
    (step,) = (int(s) for s in re.findall(r"stopped at step (\d+) \(SIGUSR1\)", text))
    assert 2 < step < 40 and f"resumed from {out / 'checkpoints' / f'step-{step:08d}'}" in text

    def rows(folder: Path) -> list[dict]:
        timing = ("tokens_per_s", "mfu")
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in lines]

    assert rows(out) == rows(reference)  # every step and evaluation, bit for bit (timings aside)
    ours, theirs = (json.loads((d / "summary.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in ours.items() if k != "run_id"} == {
        k: v for k, v in theirs.items() if k != "run_id"
    }


def _state(job: str) -> str:
    """`job`'s state as the sweep's own `queue` reads it (squeue -t all: PENDING, RUNNING, COMPLETED, ...), or
    GONE once purged. When squeue cannot answer (a busy controller on a loaded machine) it is asked again: that
    is never the job having ended."""
    deadline = time.monotonic() + 60
    while (states := queue([job])) is None:
        assert time.monotonic() < deadline, f"squeue kept failing on job {job}"
        time.sleep(0.5)
    return states.get(job, "GONE")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
