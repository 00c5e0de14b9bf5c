"""TrackingConfig: strict keys, and who wins between the config and the MLflow environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_forget.config import from_dict
from dist_forget.errors import UserError
from dist_forget.tracking import Tracker, TrackingConfig
from dist_forget.tracking.config import resolve
from dist_forget.tracking.fallback import FALLBACK_NAME, read_segments

ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "DIST_FORGET_PARENT_RUN_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults_put_one_sqlite_store_beside_the_run_folders(tmp_path: Path) -> None:
    rt = resolve(TrackingConfig(), tmp_path / "runs" / "a")
    assert rt.uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert (rt.experiment, rt.run_id, rt.parent_run_id) == ("dist-forget", None, None)


def test_environment_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    monkeypatch.setenv("DIST_FORGET_PARENT_RUN_ID", "parent")
    rt = resolve(TrackingConfig(experiment="from-config"), tmp_path)
    assert (rt.uri, rt.experiment, rt.run_id, rt.parent_run_id) == (
        "http://example:5000",
        "from-env",
        "abc",
        "parent",
    )
    # explicit config values win for the URI and the run ids (they come from a checkpoint or a sweep)
    rt = resolve(TrackingConfig(uri="sqlite:///x.db", run_id="r", parent_run_id="p"), tmp_path)
    assert (rt.uri, rt.experiment, rt.run_id, rt.parent_run_id) == ("sqlite:///x.db", "from-env", "r", "p")


def test_strict_keys_and_types() -> None:
    assert from_dict(TrackingConfig, {"flush_every_s": 1}).flush_every_s == 1.0
    with pytest.raises(UserError, match="unknown key 'flush_every'"):
        from_dict(TrackingConfig, {"flush_every": 1})
    with pytest.raises(UserError, match="tracking.flush_every_s = 0.0 must be > 0"):
        from_dict(TrackingConfig, {"flush_every_s": 0})


@pytest.mark.parametrize("cfg,rank", [(TrackingConfig(), 1), (TrackingConfig(enabled=False), 0)])
def test_noop_tracker_touches_nothing(cfg: TrackingConfig, rank: int, tmp_path: Path) -> None:
    tracker = Tracker.create(cfg, rank=rank, run_name="x", params={"a": 1}, out_dir=tmp_path / "run")
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_artifact(tmp_path / "missing.txt")
    tracker.set_tags({"a": "b"})
    tracker.flush()
    tracker.finish()
    assert tracker.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_fallback_reader_skips_torn_lines_and_merges_attempts(tmp_path: Path) -> None:
    path = tmp_path / FALLBACK_NAME
    head = '{"type": "run", "run_id": null, "run_name": "a", "experiment": "e", "params": {"x": "1"}}'
    path.write_text(
        head + "\n"
        '{"type": "metrics", "step": 1, "timestamp_ms": 5, "metrics": {"loss": 2.0, "v": "nan"}}\n'
        + head.replace('"1"', '"2"')
        + "\n"  # a resumed attempt of the same never-created run
        '{"type": "metrics", "step": 2, "timestamp_ms": 6, "metrics": {"loss": 1.5}}\n'
        '{"type": "metrics", "step": 3, "timest'  # torn by a crash
    )
    (seg,) = read_segments(path)
    assert seg.header["params"] == {"x": "2"}
    assert [(k, s) for k, _, _, s in seg.metrics] == [("loss", 1), ("v", 1), ("loss", 2)]
