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


DATASET = {
    "name": "code",
    "digest": "ab" * 32,
    "source_type": "local",
    "source": '{"uri": "shards/code"}',
    "profile": '{"splits": {}}',
    "context": "train",
    "tags": {"inject_fraction": "0.01"},
}


def test_params_json_source_tags_inputs_and_a_relative_store(runs_dir: Path) -> None:
    out = runs_dir / "meta"
    (out).mkdir()
    (out / "REPORT.md").write_text("# report\n")
    cfg = TrackingConfig(flush_every_s=0.05, system_metrics=False)
    with Tracker.create(
        cfg,
        0,
        "meta",
        {"optim.betas": (0.9, 0.95), "grid.p": [0.0, 0.01]},
        out,
        tags={"stage": "finetune"},
        source_name="dist-forget finetune",
    ) as tracker:
        tracker.log_inputs([DATASET])
        tracker.log_artifact(out / "REPORT.md", "fit")
    client = MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}")
    run = client.get_run(tracker.run_id)
    assert run.data.params == {"optim.betas": "[0.9, 0.95]", "grid.p": "[0.0, 0.01]"}
    tags = run.data.tags
    assert tags["stage"] == "finetune" and tags["mlflow.source.name"] == "dist-forget finetune"
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.user"]
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest) == ("code", "ab" * 18)  # MLflow keeps 36 characters
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "train", "inject_fraction": "0.01"}
    # artifacts live beside the store and are addressed relative to it: the folder can move
    assert run.info.artifact_uri == f"mlflow-artifacts:/{tracker.run_id}/artifacts"
    assert (runs_dir / "mlartifacts" / tracker.run_id / "artifacts" / "fit" / "REPORT.md").is_file()
    assert [a.path for a in client.list_artifacts(tracker.run_id, "fit")] == ["fit/REPORT.md"]


def test_inputs_artifact_folders_and_registration_survive_the_fallback(runs_dir: Path) -> None:
    out = runs_dir / "offline-inputs"
    out.mkdir()
    (out / "fit.json").write_text("{}")
    cfg = TrackingConfig(
        uri=f"http://127.0.0.1:{free_port()}", experiment="offline-inputs", flush_every_s=0.05
    )
    with pytest.warns(RuntimeWarning, match="unavailable"):
        tracker = Tracker.create(cfg, 0, "offline-inputs", {}, out)
    tracker.log_inputs([DATASET])
    tracker.log_artifact(out / "fit.json", "fit")
    (out / "best").mkdir()
    (out / "best" / "config.json").write_text("{}")
    tracker.register_model(out / "best", "offline-model", {"best_step": 3})
    tracker.finish()
    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    assert cli_main(["track", "sync", "--path", str(out), "--uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("offline-inputs").experiment_id])
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["code"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "fit")] == ["fit/fit.json"]
    (version,) = client.search_model_versions("name='offline-model'")
    assert version.run_id == run.info.run_id and version.tags == {"best_step": "3"}
    assert version.source == f"runs:/{run.info.run_id}/best_model"


def test_a_fallback_file_of_every_record_kind_reads_back_line_for_line_and_syncs(runs_dir: Path) -> None:
    """The JSONL as earlier versions wrote it (a literal file, every record kind): each line parses into its
    record and writes back as the same line, and `track sync` sends all of it."""
    from dist_forget.tracking.records import parse

    out = runs_dir / "old-format"
    (out / "best").mkdir(parents=True)
    (out / "best" / "config.json").write_text("{}")
    (out / "fit.json").write_text("{}")
    dataset = json.dumps(DATASET)
    lines = [
        '{"type": "run", "uri": "http://***@127.0.0.1:1", "experiment": "old-format", "run_id": null, '
        '"run_name": "old", "parent_run_id": null, "params": {"lr": "0.001"}, "tags": {"stage": "finetune"}}',
        '{"type": "metrics", "step": 1, "timestamp_ms": 1700000000000, "metrics": {"loss": 3.5, "gnorm": "nan"}}',
        '{"type": "tags", "tags": {"best_step": "1"}}',
        f'{{"type": "artifact", "path": "{out / "fit.json"}", "artifact_path": "fit"}}',
        '{"type": "dict", "data": {"seed": 1}, "name": "run_config.json"}',
        f'{{"type": "inputs", "datasets": [{dataset}]}}',
        f'{{"type": "register", "path": "{out / "best"}", "name": "old-format-model", "tags": {{"best_step": "1"}}}}',
        '{"type": "metrics", "step": 2, "timestamp_ms": 1700000001000, "metrics": {"loss": 3.0}}',
        '{"type": "end", "status": "FINISHED"}',
    ]
    for line in lines[1:]:
        assert json.dumps(parse(json.loads(line)).to_json()) == line
    (out / FALLBACK_NAME).write_text("\n".join(lines) + "\n")

    uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    assert cli_main(["track", "sync", "--path", str(out), "--uri", uri]) == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("old-format").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.001"}
    assert run.data.tags["stage"] == "finetune" and run.data.tags["best_step"] == "1"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 3.5), (2, 3.0)]
    assert str(run.data.metrics["gnorm"]) == "nan"
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["best_model", "fit", "run_config.json"]
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["code"]
    (version,) = client.search_model_versions("name='old-format-model'")
    assert version.run_id == run_id and version.tags == {"best_step": "1"}
