"""`dist-forget track sync`: upload a run's MLflow fallback JSONL once MLflow is reachable again."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.redact import redact_uri, use_uri
from dist_forget.tracking.config import ResolvedTracking
from dist_forget.tracking.fallback import FALLBACK_NAME, Segment, read_segments
from dist_forget.tracking.mlflow_calls import MlflowUnavailable, connect, existing_run, open_run, probe
from dist_forget.tracking.records import Metrics, send_metrics
from dist_forget.tracking.store import install


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
            f"{seg.n_artifacts} artifacts "
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


def _upload(seg: Segment, uri: str, known_run_id: str | None, on_created: Any) -> str:
    try:
        probe(uri)
    except MlflowUnavailable as exc:
        raise UserError(
            f"{exc}; fix that (start the server, set its credentials) or pass --uri to another "
            "one, then rerun sync"
        ) from None
    install()  # a local sqlite store keeps its artifacts beside it (tracking/store.py)
    uri = use_uri(uri)  # userinfo -> MLFLOW_TRACKING_USERNAME/PASSWORD; a stored `***@` takes them from there
    client = connect(uri)
    # e.g. --uri names another server than the run used: a new run there
    run_id = existing_run(client, known_run_id or seg.header.get("run_id"))
    header = seg.header
    rt = ResolvedTracking(
        uri, header.get("experiment") or "dist-forget", run_id, header.get("parent_run_id"), 5.0
    )
    run_id = open_run(
        client, rt, header.get("run_name") or "synced", header.get("params", {}), header.get("tags", {})
    )
    on_created(run_id)
    # metrics first, in as few batches as MLflow allows; then the rest in the order it happened
    send_metrics(client, run_id, [r for r in seg.records if isinstance(r, Metrics)])
    for record in seg.records:
        if isinstance(record, Metrics):
            continue
        reason = record.stale()
        if reason is not None:
            warnings.warn(reason, RuntimeWarning, stacklevel=2)
        else:
            record.send(client, run_id)
    return run_id
