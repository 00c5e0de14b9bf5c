"""`dist-forget track sync`: upload a run's MLflow fallback JSONL once MLflow is reachable again."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.redact import redact_uri, use_uri
from dist_forget.tracking.config import ResolvedTracking
from dist_forget.tracking.fallback import FALLBACK_NAME, Segment, read_segments
from dist_forget.tracking.store import install
from dist_forget.tracking.tracker import (
    MAX_METRICS_PER_BATCH,
    MlflowUnavailable,
    dataset_inputs,
    open_run,
    probe,
    register,
)


def sync(path: Path, uri: str | None = None) -> int:
    """Upload the metrics, tags and artifacts a run wrote to mlflow_fallback.jsonl while MLflow was down.

    PATH is a run's out_dir or the JSONL itself. The target is --uri, else the URI the run was using,
    else $MLFLOW_TRACKING_URI. A synced file is renamed to *.synced; a sync that failed halfway can be
    rerun (run ids already created are remembered in *.sync.json, repeated metrics are deduplicated).

    Args:
        path: a run's out_dir, or its mlflow_fallback.jsonl
        uri: tracking URI to upload to; unset = the URI the run used, else $MLFLOW_TRACKING_URI
    """
    file = path / FALLBACK_NAME if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} does not exist; pass a run's out_dir holding {FALLBACK_NAME}, or the JSONL")
    segments = read_segments(file)
    if not segments:
        raise UserError(f"{file} holds no run records; it is not a dist-forget MLflow fallback file")
    state_path = file.with_name(file.name + ".sync.json")
    state: dict[str, str] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    for seg in segments:
        target = uri or seg.header.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not target:
            raise UserError(f"{file}: no tracking URI recorded; pass --uri http://HOST:PORT")
        run_id = _upload(
            seg,
            target,
            state.get(seg.key),
            on_created=lambda rid, s=seg: _remember(state_path, state, s, rid),
        )
        print(
            f"synced {len(seg.metrics)} metric values, {len(seg.tags)} tags, "
            f"{len(seg.artifacts) + len(seg.dicts)} artifacts "
            f"of {seg.header.get('run_name')!r} to run {run_id} at {redact_uri(target)}"
        )
    done = file.with_name(file.name + ".synced")
    n = 1
    while done.exists():
        n += 1
        done = file.with_name(f"{file.name}.synced.{n}")
    os.replace(file, done)
    state_path.unlink(missing_ok=True)
    return 0


def _remember(state_path: Path, state: dict[str, str], seg: Segment, run_id: str) -> None:
    state[seg.key] = run_id
    write_json_atomic(state_path, state)


def _upload(seg: Segment, uri: str, known_run_id: str | None, on_created) -> str:  # noqa: ANN001
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    try:
        probe(uri)
    except MlflowUnavailable as exc:
        raise UserError(
            f"{exc}; fix that (start the server, set its credentials) or pass --uri to another "
            "one, then rerun sync"
        ) from None
    install()  # a local sqlite store keeps its artifacts beside it (tracking/store.py)
    uri = use_uri(uri)  # userinfo -> MLFLOW_TRACKING_USERNAME/PASSWORD; a stored `***@` takes them from there
    client = MlflowClient(tracking_uri=uri)
    run_id = known_run_id or seg.header.get("run_id")
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException:
            run_id = None  # e.g. --uri names another server than the run used
    header = seg.header
    rt = ResolvedTracking(
        uri, header.get("experiment") or "dist-forget", run_id, header.get("parent_run_id"), 5.0
    )
    run_id = open_run(
        client, rt, header.get("run_name") or "synced", header.get("params", {}), header.get("tags", {})
    )
    on_created(run_id)
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in seg.metrics]
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
    if seg.tags:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in seg.tags.items()])
    if seg.inputs:
        client.log_inputs(run_id, datasets=dataset_inputs(seg.inputs))
    for artifact, folder in seg.artifacts:
        if Path(artifact).is_file():
            client.log_artifact(run_id, artifact, folder)
        else:
            warnings.warn(f"artifact {artifact} no longer exists; skipped", RuntimeWarning, stacklevel=2)
    for data, name in seg.dicts:
        client.log_dict(run_id, data, name)
    for record in seg.registrations:
        if Path(record["path"]).is_dir():
            register(client, run_id, record)
        else:
            warnings.warn(
                f"model {record['path']} no longer exists; not registered", RuntimeWarning, stacklevel=2
            )
    if seg.status:
        client.set_terminated(run_id, seg.status)
    return run_id
