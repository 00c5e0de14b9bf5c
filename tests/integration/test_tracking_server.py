"""Tracker against a real `mlflow server` on loopback: params, metrics, artifacts, resume, fallback, sync."""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dist_forget.cli import main as cli_main
from dist_forget.tracking import Tracker, TrackingConfig
from dist_forget.tracking.fallback import FALLBACK_NAME
from dist_forget.tracking.server import LocalServer, free_port

pytestmark = pytest.mark.slow


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_params_metrics_artifacts_arrive(mlflow_server: LocalServer, tmp_path: Path) -> None:
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="it-arrive", parent_run_id=None, flush_every_s=0.2)
    params = {"optim.lr": 3e-4, "data.inject_fraction": 0.01, "model.size": "cpu-0.1m"}
    tracker = Tracker.create(cfg, rank=0, run_name="arrive", params=params, out_dir=tmp_path)
    assert tracker.run_id
    for step in range(25):
        tracker.log_metrics({"train/loss": 5.0 - 0.1 * step, "train/tokens_per_s": 1000.0}, step=step)
    (tmp_path / "summary.json").write_text(json.dumps({"ft_loss": 2.5}))
    tracker.log_artifact(tmp_path / "summary.json")
    tracker.set_tags({"dist_forget.best_step": "20"})
    tracker.finish()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "it-arrive"
    assert run.data.params == {"optim.lr": "0.0003", "data.inject_fraction": "0.01", "model.size": "cpu-0.1m"}
    assert run.data.tags["dist_forget.best_step"] == "20"
    assert run.info.run_name == "arrive"
    assert _steps(client, tracker.run_id, "train/loss") == list(range(25))
    assert run.data.metrics["train/loss"] == pytest.approx(5.0 - 0.1 * 24)
    local = client.download_artifacts(tracker.run_id, "summary.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == {"ft_loss": 2.5}
    assert not (tmp_path / FALLBACK_NAME).exists()


def test_resume_into_same_run_and_nesting(
    mlflow_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(mlflow_server.uri)
    parent = Tracker.create(
        TrackingConfig(uri=mlflow_server.uri, experiment="it-resume"), 0, "sweep-parent", {}, tmp_path / "p"
    )
    monkeypatch.setenv("DIST_FORGET_PARENT_RUN_ID", parent.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    first = Tracker.create(TrackingConfig(experiment="it-resume"), 0, "child", {"a": 1}, tmp_path / "c")
    first.log_metrics({"loss": 3.0}, step=1)
    first.finish("KILLED")  # as if the job was stopped; the checkpoint holds first.run_id

    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    second = Tracker.create(
        TrackingConfig(experiment="it-resume"), 0, "child", {"a": 1, "b": 2}, tmp_path / "c"
    )
    assert second.run_id == first.run_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    second.log_metrics({"loss": 2.0}, step=2)
    second.finish()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"a": "1", "b": "2"}
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert _steps(client, first.run_id, "loss") == [1, 2]
    parent.finish()


def test_only_rank0_talks(mlflow_server: LocalServer, tmp_path: Path) -> None:
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="it-rank1-must-not-exist")
    tracker = Tracker.create(cfg, rank=1, run_name="r1", params={"a": 1}, out_dir=tmp_path)
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.finish()
    assert tracker.run_id is None
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("it-rank1-must-not-exist") is None


def test_server_down_then_sync(mlflow_server: LocalServer, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = TrackingConfig(uri=dead, experiment="it-offline", flush_every_s=0.1)
    with pytest.warns(RuntimeWarning, match="unavailable.*track sync"):
        tracker = Tracker.create(
            cfg, rank=0, run_name="offline", params={"optim.lr": 0.001}, out_dir=tmp_path
        )
    assert tracker.run_id is None
    for step in range(10):
        tracker.log_metrics({"train/loss": float(10 - step), "val/ft_loss": float("nan")}, step=step)
    (tmp_path / "config.yaml").write_text("optim:\n  lr: 0.001\n")
    tracker.log_artifact(tmp_path / "config.yaml")
    tracker.finish()
    lines = (tmp_path / FALLBACK_NAME).read_text().splitlines()
    assert json.loads(lines[0])["type"] == "run" and json.loads(lines[-1]) == {
        "type": "end",
        "status": "FINISHED",
    }

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli_main(["track", "sync", "--path", str(tmp_path), "--uri", mlflow_server.uri]) == 0
    assert not (tmp_path / FALLBACK_NAME).exists() and (tmp_path / (FALLBACK_NAME + ".synced")).exists()

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("it-offline")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "offline" and run.info.status == "FINISHED"
    assert run.data.params == {"optim.lr": "0.001"}
    assert _steps(client, run.info.run_id, "train/loss") == list(range(10))
    assert run.data.metrics["train/loss"] == 1.0
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def test_server_hangs_midway_then_sync_resumes_same_run(
    mlflow_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops answering mid-run: earlier metrics are on it, later ones in the JSONL; sync merges."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "run"
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="it-midway", flush_every_s=0.1)
    tracker = Tracker.create(cfg, 0, "midway", {}, out)
    for step in range(5):
        tracker.log_metrics({"loss": float(step)}, step=step)
    tracker.flush()
    os.killpg(mlflow_server.proc.pid, signal.SIGSTOP)  # frozen: connections open, nothing answers
    try:
        with pytest.warns(RuntimeWarning, match="unavailable"):
            for step in range(5, 8):
                tracker.log_metrics({"loss": float(step)}, step=step)
            tracker.flush()
        tracker.finish()
    finally:
        os.killpg(mlflow_server.proc.pid, signal.SIGCONT)
    assert json.loads((out / FALLBACK_NAME).read_text().splitlines()[0])["run_id"] == tracker.run_id

    assert cli_main(["track", "sync", "--path", str(out)]) == 0  # to the URI recorded in the JSONL
    client = MlflowClient(mlflow_server.uri)
    assert _steps(client, tracker.run_id, "loss") == list(
        range(8)
    )  # once each, though a batch may land twice
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_frozen_server_holds_finish_only_until_its_bound_then_sync(
    mlflow_server: LocalServer, tmp_path: Path
) -> None:
    """With MLflow's HTTP settings as a run has them (20 s timeout, 2 retries: minutes per call on a frozen
    server), `finish` returns by its bound (FINISH_TIMEOUT_S, + slack for a loaded machine, far below those
    minutes); what was not sent is in the JSONL, and sync completes the same run."""
    from dist_forget.tracking.tracker import FINISH_TIMEOUT_S

    out = tmp_path / "run"
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="it-frozen", flush_every_s=0.1,
                         system_metrics_interval_s=1.0)  # fmt: skip
    tracker = Tracker.create(cfg, 0, "frozen", {}, out)
    for step in range(3):
        tracker.log_metrics({"loss": float(step)}, step=step)
    tracker.flush()
    os.killpg(mlflow_server.proc.pid, signal.SIGSTOP)  # frozen: connections are accepted, nothing answers
    try:
        for step in range(3, 6):
            tracker.log_metrics({"loss": float(step)}, step=step)
        start = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sender may or may not have given up by then
            tracker.finish("KILLED")
        held = time.monotonic() - start
    finally:
        os.killpg(mlflow_server.proc.pid, signal.SIGCONT)
    assert held < FINISH_TIMEOUT_S + 10, held
    records = [json.loads(line) for line in (out / FALLBACK_NAME).read_text().splitlines()]
    assert records[0]["run_id"] == tracker.run_id and records[-1] == {"type": "end", "status": "KILLED"}

    assert cli_main(["track", "sync", "--path", str(out)]) == 0
    client = MlflowClient(mlflow_server.uri)
    assert _steps(client, tracker.run_id, "loss") == list(range(6))
    assert client.get_run(tracker.run_id).info.status == "KILLED"
