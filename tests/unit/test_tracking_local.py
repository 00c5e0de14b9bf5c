"""Tracker on the default embedded sqlite store (no server), the JSONL fallback, and `track sync`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dist_forget.cli import main as cli_main
from dist_forget.errors import UserError
from dist_forget.tracking import Tracker, TrackingConfig
from dist_forget.tracking.commands import sync
from dist_forget.tracking.fallback import FALLBACK_NAME
from dist_forget.tracking.server import free_port


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One store for the module: creating a fresh sqlite schema costs seconds.
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "DIST_FORGET_PARENT_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)


def test_default_store_receives_run(runs_dir: Path) -> None:
    out = runs_dir / "a"
    out.mkdir()
    (out / "config.yaml").write_text("x: 1\n")
    with Tracker.create(TrackingConfig(flush_every_s=0.1), 0, "a", {"x": 1, "y": None}, out) as tracker:
        for step in range(3):
            tracker.log_metrics({"loss": 1.0 + step}, step)
        tracker.log_artifact(out / "config.yaml")
    client = MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"x": "1", "y": "None"} and run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [1.0, 2.0, 3.0]
    assert [a.path for a in client.list_artifacts(tracker.run_id)] == ["config.yaml"]
    assert (runs_dir / "mlartifacts").is_dir()  # artifacts beside the store, not in the working dir


def test_exception_marks_run_failed(runs_dir: Path) -> None:
    with pytest.raises(RuntimeError), Tracker.create(TrackingConfig(), 0, "b", {}, runs_dir / "b") as tracker:
        raise RuntimeError("loss is NaN")
    client = MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}")
    assert client.get_run(tracker.run_id).info.status == "FAILED"


def test_unknown_run_id_is_a_user_error(runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(UserError, match=r"MLflow run id '0{32}'.*does not exist.*unset it"):
        Tracker.create(TrackingConfig(), 0, "c", {}, runs_dir / "c")


def test_offline_then_sync_into_sqlite(runs_dir: Path) -> None:
    out = runs_dir / "offline"
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", experiment="offline", flush_every_s=0.05)
    with pytest.warns(RuntimeWarning, match="unavailable"):
        tracker = Tracker.create(cfg, 0, "offline", {"p": 0.01}, out)
    tracker.log_metrics({"loss": 2.0}, 0)
    tracker.set_tags({"best_step": "0"})
    tracker.finish()
    assert json.loads((out / FALLBACK_NAME).read_text().splitlines()[1])["metrics"] == {"loss": 2.0}

    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    assert cli_main(["track", "sync", "--path", str(out / FALLBACK_NAME), "--uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
    assert run.data.params == {"p": "0.01"} and run.data.tags["best_step"] == "0"
    assert run.data.metrics == {"loss": 2.0}
    with pytest.raises(UserError, match="does not exist"):
        sync(out)  # already synced: the file was renamed


def test_sync_to_dead_server_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / FALLBACK_NAME).write_text('{"type": "run", "run_name": "x"}\n')
    with pytest.raises(UserError, match="unreachable.*rerun sync"):
        sync(tmp_path, uri=f"http://127.0.0.1:{free_port()}")
    assert (tmp_path / FALLBACK_NAME).exists()
