"""Sweeps with a stand-in command (tests/integration/fake_run.py): real subprocesses, locks, kills, SLURM
scripts and MLflow nesting; the runner is command-agnostic, so this is the machinery the engine uses."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dist_forget.cli import main as cli_main
from dist_forget.tracking.server import LocalServer
from tests.integration.sweeps import attempts, summaries, write_sweep

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_sweep_runs_everything_once_then_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    sizes = ["cpu-0.03m", "cpu-0.1m", "cpu-0.3m"]
    config = str(write_sweep(
        tmp_path,
        pretrain={"config": str(tmp_path / "cfg.yaml"), "sizes": sizes, "seq_len": 32},
        grid={"target_tokens": [1000, 100000], "inject_fraction": [0.0, 0.001, 0.01]},
        fit={"args": ["--runs", "{runs_csv}", "--out", "{sweep_dir}/fit", "--holdout", "largest",
                      "--bootstrap", "10", "--no-plots"]},
    ))  # fmt: skip
    assert cli_main(["sweep", "--config", config]) == 0
    assert set(attempts(tmp_path).values()) == {1} and len(attempts(tmp_path)) == 3 + 18
    first = (tmp_path / "sweep" / "finetune" / "cpu-0.1m_code_D1000_p0_a0_s0" / "attempts.txt").read_text()
    assert first.endswith("OMP_NUM_THREADS=1\n")
    with open(tmp_path / "sweep" / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18 and {float(r["inject_fraction"]) for r in rows} == {0.0, 0.001, 0.01}
    assert {r["name"] for r in rows} >= {"cpu-0.03m_code_D100000_p0.01_a0_s0"}
    fit = json.loads((tmp_path / "sweep" / "fit" / "fit.json").read_text())
    assert fit  # the law fitter ran on the table (its content is the laws' tests' business)

    assert cli_main(["sweep", "--config", config]) == 0  # everything finished: nothing runs again
    assert set(attempts(tmp_path).values()) == {1}


def test_failed_pretrain_skips_its_finetunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_FAIL", "pretrain-cpu-0.03m")
    assert cli_main(["sweep", "--config", str(write_sweep(tmp_path))]) == 1
    ran = attempts(tmp_path)
    assert (
        ran["cpu-0.03m"] == 1
    )  # pretrain folders are named by size and not any(n.startswith("cpu-0.03m_") for n in ran)
    assert sum(n.startswith("cpu-0.1m_") for n in ran) == 4  # the other size went on


def _start_sweep(config: Path, seconds: str, **extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FAKE_RUN_SECONDS": seconds, "PYTHONPATH": str(ROOT), **extra}
    return subprocess.Popen(
        [sys.executable, "-m", "dist_forget.cli", "sweep", "--config", str(config)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for(predicate: object, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "sweep made no progress"
        time.sleep(0.1)


def test_orphaned_run_is_waited_for_not_duplicated(tmp_path: Path) -> None:
    config = write_sweep(tmp_path, max_parallel=1)
    release = tmp_path / "release"  # the first sweep's run holds until it exists, however slow the rerun
    proc = _start_sweep(config, "0.1", FAKE_HOLD=str(release))
    pre = tmp_path / "sweep" / "pretrain" / "cpu-0.03m"
    _wait_for(lambda: (pre / "attempts.txt").is_file())
    proc.kill()  # only the sweep dies; its running child is orphaned and keeps the folder's lock
    proc.wait()
    rerun = _start_sweep(config, "0.1", PYTHONUNBUFFERED="1")  # its lines as they are printed
    seen = []
    try:
        for line in rerun.stdout:  # until the rerun waits for the orphan (or ends without waiting)
            seen.append(line.decode())
            if "waiting for it" in seen[-1]:
                break
    finally:
        release.touch()
    out = "".join(seen) + rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, out
    assert "pretrain-cpu-0.03m: still running from an earlier sweep; waiting for it" in out
    assert attempts(tmp_path)["cpu-0.03m"] == 1 and summaries(tmp_path) == 10


def test_slurm_backend_writes_array_scripts_that_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = write_sweep(tmp_path)
    assert cli_main(["sweep", "--config", str(config), "--backend", "slurm"]) == 0
    slurm = tmp_path / "sweep" / "slurm"
    finetune = (slurm / "finetune.sbatch").read_text()
    assert "#SBATCH --array=0-7%2" in finetune and "export OMP_NUM_THREADS=1" in finetune
    # a run saves ahead of the time limit and its task is requeued (sweep/requeue.py); collect has no run
    requeue = ("#SBATCH --signal=B:USR1@180", "#SBATCH --requeue", "#SBATCH --open-mode=append")
    assert all(line in finetune.splitlines() for line in requeue)
    assert not any(line in (slurm / "collect.sbatch").read_text() for line in requeue)
    assert len(json.loads((slurm / "finetune.json").read_text())) == 8
    submit = (slurm / "submit.sh").read_text()
    assert (
        "--backend slurm --submit" in submit
    )  # submitting is `sweep --submit` (tests/integration/test_slurm.py)
    assert subprocess.run(["bash", "-n", str(slurm / "submit.sh")]).returncode == 0
    assert attempts(tmp_path) == {}  # nothing ran: SLURM runs it
    # An array task is the script itself with SLURM_ARRAY_TASK_ID set (#SBATCH lines are comments).
    for stage, index in (("pretrain", 1), ("finetune", 7), ("finetune", 7)):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(index)}
        res = subprocess.run(
            ["bash", str(slurm / f"{stage}.sbatch")], env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr
    assert "already finished" in res.stdout
    assert attempts(tmp_path) == {"cpu-0.1m": 1, "cpu-0.1m_code_D100000_p0.01_a0_s0": 1}


def test_slurm_scripts_keep_the_overrides_collect_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An override given when the scripts are written (here out_dir and the grid) reaches the array
    tasks and the collect job, which used to gather the YAML's own out_dir. (Without a cluster: each script
    is run with bash; tests/integration/test_slurm.py submits them to a real one.)"""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    pretrain = {"config": str(tmp_path / "cfg.yaml"), "sizes": ["cpu-0.03m"], "seq_len": 32}
    config = write_sweep(tmp_path, pretrain=pretrain)
    moved = tmp_path / "moved"
    overrides = [f"out_dir={moved}", "grid.target_tokens=[1000]", "grid.inject_fraction=[0.01]"]
    assert cli_main(["sweep", "--config", str(config), "--backend", "slurm", *overrides]) == 0
    slurm = moved / "slurm"
    for script, task in (("pretrain.sbatch", "0"), ("finetune.sbatch", "0"), ("collect.sbatch", "")):
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": task}
        res = subprocess.run(["bash", str(slurm / script)], env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    assert "runs table: 1 of 1 finetune runs" in res.stdout
    with open(moved / "runs.csv") as fh:
        assert [r["name"] for r in csv.DictReader(fh)] == ["cpu-0.03m_code_D1000_p0.01_a0_s0"]
    assert not (tmp_path / "sweep").exists()


def test_runs_nest_under_one_mlflow_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_server: LocalServer
) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_TRACK", "1")
    monkeypatch.setenv("MLFLOW_RUN_ID", "must-not-leak-into-runs")
    pretrain = {"config": str(tmp_path / "cfg.yaml"), "sizes": ["cpu-0.03m"], "seq_len": 32}
    tracking = {"experiment": "sweep-it", "uri": mlflow_server.uri}
    config = write_sweep(tmp_path, tracking=tracking, pretrain=pretrain)
    assert (
        cli_main(["sweep", "--config", str(config), "grid.target_tokens=[1000]", "grid.inject_fraction=[0]"])
        == 0
    )
    state = json.loads((tmp_path / "sweep" / "sweep_state.json").read_text())
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("sweep-it")
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if r.info.run_id != state["parent_run_id"]]
    assert sorted(r.info.run_name for r in children) == [
        "cpu-0.03m_code_D1000_p0_a0_s0",
        "pretrain-cpu-0.03m",
    ]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {state["parent_run_id"]}
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/finished"] == 2
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["runs.csv"]


def test_parent_run_holds_the_fit_and_the_store_can_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default local store (no server): the parent run gets REPORT.md, the plots, fit.json and the
    fitted values as metrics; then the sweep folder is moved elsewhere, a fresh `mlflow server` is started
    on the copy and serves the artifacts through its REST API (nothing points at the old path)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "DIST_FORGET_PARENT_RUN_ID",
        "DIST_FORGET_SWEEP_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    sizes = ["cpu-0.03m", "cpu-0.1m", "cpu-0.3m"]
    config = str(write_sweep(
        tmp_path,
        pretrain={"config": str(tmp_path / "cfg.yaml"), "sizes": sizes, "seq_len": 32},
        grid={"target_tokens": [1000, 100000], "inject_fraction": [0.0, 0.001, 0.01]},
        fit={"args": ["--runs", "{runs_csv}", "--out", "{sweep_dir}/fit", "--holdout", "largest",
                      "--bootstrap", "10"]},
        tracking={"experiment": "portable"},
    ))  # fmt: skip
    assert cli_main(["sweep", "--config", config]) == 0
    sweep = tmp_path / "sweep"
    assert (sweep / "mlflow.db").is_file() and (sweep / "mlartifacts").is_dir()
    fit = json.loads((sweep / "fit" / "fit.json").read_text())
    plots = sorted(p.name for p in (sweep / "fit").glob("*.png"))
    assert plots

    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.copytree(sweep, moved)
    shutil.rmtree(sweep)  # nothing may point back at the original folder
    with LocalServer(tmp_path / "srv", store=moved) as server:

        def get(endpoint: str, **query: str) -> bytes:
            url = f"{server.uri}/{endpoint}?{urllib.parse.urlencode(query)}"
            with urllib.request.urlopen(url, timeout=30) as resp:
                return resp.read()

        exp = json.loads(get("api/2.0/mlflow/experiments/get-by-name", experiment_name="portable"))[
            "experiment"
        ]
        body = json.dumps(
            {"experiment_ids": [exp["experiment_id"]], "filter": "tags.stage = 'sweep'"}
        ).encode()
        req = urllib.request.Request(
            f"{server.uri}/api/2.0/mlflow/runs/search",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            (parent,) = json.loads(resp.read())["runs"]
        run_id = parent["info"]["run_id"]
        assert parent["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # relative to the store
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        for rec in fit["fits"]:
            prefix = f"fit/{rec['domain']}/{rec['form']}"
            for name, value in rec["params"].items():
                assert metrics[f"{prefix}/{name}"] == pytest.approx(value)
            assert metrics[f"{prefix}/mre"] == pytest.approx(rec["mre"])
            assert metrics[f"{prefix}/heldout_mre"] == pytest.approx(rec["holdout"]["mre"])
            assert metrics[f"{prefix}/warnings"] == len(rec["warnings"])
        listed = json.loads(get("api/2.0/mlflow/artifacts/list", run_id=run_id, path="fit"))["files"]
        assert {f["path"] for f in listed} == {f"fit/{n}" for n in ["REPORT.md", "fit.json", *plots]}
        report = get("get-artifact", path="fit/REPORT.md", run_uuid=run_id).decode()
        assert report.startswith("# Law fit report") and all(p in report for p in plots)
        # links relative to REPORT.md's folder (fit/ in the store too): every plot beside it, the runs table
        # one folder up; no path of the machine that wrote it, in any of the parent's text artifacts
        links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
        assert sorted(links) == plots and "Runs: [../runs.csv](../runs.csv)" in report
        for name in ("fit/REPORT.md", "fit/fit.json", "runs.csv"):
            assert str(tmp_path) not in get("get-artifact", path=name, run_uuid=run_id).decode(), name
        kind = json.loads(get("api/2.0/mlflow/experiments/get-by-name", experiment_name="portable"))
        tags = {t["key"]: t["value"] for t in kind["experiment"]["tags"]}
        assert tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow opens the runs table
        png = get("get-artifact", path=f"fit/{plots[0]}", run_uuid=run_id)
        assert png.startswith(b"\x89PNG")
        assert b"run_id" in get("get-artifact", path="runs.csv", run_uuid=run_id)


def test_array_task_passes_the_time_limit_warning_to_its_run() -> None:
    """The batch shell of an array task (sweep/task.py -> requeue.supervise) gets SIGUSR1 from SLURM: its run
    gets it too, and the exit status (75: saved) and the warning come back for the requeue decision."""
    from dist_forget.sweep.requeue import supervise

    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"

    def warn() -> None:  # as SLURM's --signal=B:USR1 reaches the batch shell, once it listens
        while signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=warn, daemon=True).start()
    try:
        assert supervise(proc) == (75, True)
    finally:
        proc.kill()
        proc.wait()


def test_heartbeat_shows_the_current_attempt_not_the_killed_one(tmp_path: Path) -> None:
    """A resumed run's log still ends with its killed attempt's last step until the new attempt prints one:
    the sweep's heartbeat must not relay that stale line (its step and ETA are from before the kill)."""
    from dist_forget.sweep.grid import Point
    from dist_forget.sweep.pool import LOG_NAME, LocalPool

    out = tmp_path / "run"
    out.mkdir()
    (out / LOG_NAME).write_text("\n=== 2026-01-01 00:00:00 earlier\nstep 20/1500 | loss 3.2 | ETA 19h59m\n")
    script = (
        "import pathlib, sys, time\n"
        "time.sleep(1.0)\n"  # heartbeats before the new attempt's first step
        "print('step 2/1500 | loss 3.1 | ETA 2h01m', flush=True)\n"
        "time.sleep(1.0)\n"
        "pathlib.Path(sys.argv[1], 'summary.json').write_text('{}')\n"
    )
    point = Point(name="p", stage="finetune", out_dir=str(out), argv=[sys.executable, "-c", script, str(out)])
    said: list[str] = []
    outcome = LocalPool([point], 1, dict(os.environ), say=said.append, poll_s=0.05, heartbeat_s=0.2).run()
    assert outcome.finished == ["p"], said
    beats = [s for s in said if s.startswith("  ... p: ")]
    assert beats and not any("step 20/1500" in s for s in beats), beats
    assert beats[0] == "  ... p: starting" and beats[-1] == "  ... p: step 2/1500 | loss 3.1 | ETA 2h01m"


def test_kept_runs_let_a_sweep_go_on_in_an_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A study moved to a machine without its sweep folder: the runs kept in `keep_runs` are restored and
    skipped, and the finetune that had not finished runs from the kept pretrained model."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    kept = tmp_path / "kept"
    config = str(write_sweep(tmp_path, keep_runs=str(kept)))
    assert cli_main(["sweep", "--config", config]) == 0
    sweep = tmp_path / "sweep"
    names = {p.name for p in kept.iterdir()}
    assert names == {"pretrain-cpu-0.03m", "pretrain-cpu-0.1m"} | {
        p.name for p in (sweep / "finetune").iterdir()
    }
    run = sweep / "finetune" / "cpu-0.1m_code_D1000_p0.01_a0_s0"
    with gzip.open(kept / run.name / "metrics.jsonl.gz", "rt") as fh:
        assert fh.read() == (run / "metrics.jsonl").read_text()
    assert (kept / "pretrain-cpu-0.1m" / "model" / "config.json").is_file()
    assert not (kept / run.name / "model").exists()  # a finetune's model is not kept
    model_used = (run / "init_model.json").read_text()
    runs_before = (sweep / "runs.csv").read_text()

    # the new machine: no sweep folder, and one finetune that had not finished before the move
    shutil.rmtree(sweep)
    shutil.rmtree(kept / run.name)
    assert cli_main(["sweep", "--config", config]) == 0
    assert attempts(tmp_path) == {run.name: 1}  # the pretraining runs were not redone
    assert (run / "init_model.json").read_text() == model_used  # the kept pretrained model, restored
    assert (sweep / "finetune" / "cpu-0.03m_code_D1000_p0_a0_s0" / "metrics.jsonl").is_file()
    assert (sweep / "runs.csv").read_text() == runs_before
    assert (kept / run.name / "summary.json").is_file()  # kept again as it landed


def test_kept_runs_are_restored_only_under_the_command_that_made_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kept runs follow the study to another checkout (another sweep folder), but once the sweep YAML changes
    a finetune's command, the old result is not restored in its place: that run is made again and its
    kept folder replaced, while the pretraining runs, whose command did not change, are restored."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    kept = tmp_path / "kept"
    assert cli_main(["sweep", "--config", str(write_sweep(tmp_path, keep_runs=str(kept)))]) == 0
    finetunes = {p.name for p in (tmp_path / "sweep" / "finetune").iterdir()}

    moved = write_sweep(tmp_path, keep_runs=str(kept), out_dir=str(tmp_path / "elsewhere"))
    capsys.readouterr()
    assert cli_main(["sweep", "--config", str(moved)]) == 0
    assert attempts(tmp_path, "elsewhere") == {}  # every run restored: same commands, another folder
    assert "not restored" not in capsys.readouterr().out

    finetune = {"config": str(tmp_path / "cfg.yaml"), "domains": {"code": "shards/code"},
                "overrides": ["optim.lr=1.0e-4"]}  # fmt: skip
    changed = write_sweep(tmp_path, keep_runs=str(kept), out_dir=str(tmp_path / "changed"), finetune=finetune)
    assert cli_main(["sweep", "--config", str(changed)]) == 0
    out = capsys.readouterr().out
    assert f"not restored: {len(finetunes)} runs in {kept} were made with another command" in out
    assert attempts(tmp_path, "changed") == {name: 1 for name in finetunes}
    point = json.loads((kept / sorted(finetunes)[0] / "sweep_point.json").read_text())
    assert "optim.lr=1.0e-4" in point["argv"]  # the kept folder now holds the new command's result


def test_a_sweep_refuses_a_folder_whose_runs_another_command_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Editing a finished sweep's YAML (another lr) and running it on the same folder would report the old
    results under the new configuration: the sweep stops with one line naming a run and the fix, runs
    nothing, and --dry-run marks those runs as changed."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FAKE_RUN_SECONDS", "0")
    assert cli_main(["sweep", "--config", str(write_sweep(tmp_path))]) == 0
    before = attempts(tmp_path)
    finetune = {"config": str(tmp_path / "cfg.yaml"), "domains": {"code": "shards/code"},
                "overrides": ["optim.lr=1.0e-4"]}  # fmt: skip
    edited = str(write_sweep(tmp_path, finetune=finetune))
    capsys.readouterr()
    assert cli_main(["sweep", "--config", edited]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "8 finished runs under" in err and "made with another command" in err
    assert "cpu-0.03m_code_D100000_p0.01_a0_s0" in err  # the first of them by name
    assert attempts(tmp_path) == before
    assert cli_main(["sweep", "--config", edited, "--dry-run"]) == 0
    states = [line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert states.count("changed") == 8 and states.count("done") == 2  # the pretraining runs did not change
