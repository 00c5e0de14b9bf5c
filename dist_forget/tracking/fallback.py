"""The local JSONL that holds what MLflow could not take, and its reader.

One JSON object per line, appended and flushed as it happens, so a crash loses at most the line being
written (the reader skips a torn last line). A file is a sequence of segments, each opened by a `run`
record (written when tracking first falls back in a process) that says which run the following records
belong to:

  {"type": "run", "uri", "experiment", "run_id" (null if the run was never created), "run_name",
   "parent_run_id", "params", "tags"}
  {"type": "metrics", "step": 12, "timestamp_ms": 1700000000000, "metrics": {"train/loss": 3.2}}
  {"type": "tags", "tags": {...}}      {"type": "artifact", "path": "/abs/path", "artifact_path": "fit"}
  {"type": "dict", "data": {...}, "name": "run_config.json"}   (a JSON artifact given as its content)
  {"type": "inputs", "datasets": [{"name", "digest", "source_type", "source", "profile", "context"}]}
  {"type": "register", "path": "/abs/best", "name": "registry name", "tags": {...}}
  {"type": "end", "status": "FINISHED"}

The file is created owner-only (0600); its `uri` has any credentials redacted (`http://***@host:port`), and
`track sync` takes them from MLFLOW_TRACKING_USERNAME/PASSWORD.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FALLBACK_NAME = "mlflow_fallback.jsonl"


def _jsonable(value: float) -> float | str:
    # JSON has no NaN/Inf; keep them as strings so a diverged run's last losses survive the trip.
    return value if math.isfinite(value) else repr(value)


class FallbackWriter:
    """Appends records to the JSONL; the segment header is written lazily before the first record."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self._header = {"type": "run", **header}
        self._opened = False
        self._lock = threading.Lock()

    def set_header(self, **updates: Any) -> None:
        with self._lock:
            self._header.update(updates)

    def append(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # owner-only: the file holds the run's params and tags, which may come from the environment
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                if not self._opened:
                    fh.write(json.dumps(self._header) + "\n")
                    self._opened = True
                if record.get("type") == "metrics":
                    record = {**record, "metrics": {k: _jsonable(v) for k, v in record["metrics"].items()}}
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


@dataclass
class Segment:
    """Everything recorded for one run (segments of the same run are merged)."""

    header: dict[str, Any]
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ts_ms, step
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[str, str | None]] = field(default_factory=list)  # local path, folder in the run
    dicts: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # JSON artifacts: content, name
    inputs: list[dict[str, Any]] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)  # model registry versions to create
    status: str | None = None

    @property
    def key(self) -> str:
        return segment_key(self.header)


def segment_key(header: dict[str, Any]) -> str:
    # A run that was never created has no id; its resumed attempts share the name and the out_dir.
    if header.get("run_id"):
        return f"id:{header['run_id']}"
    return f"name:{header.get('experiment')}/{header.get('run_name')}"


def read_segments(path: Path) -> list[Segment]:
    """Parse the JSONL into per-run segments, in first-seen order; torn or foreign lines are skipped."""
    segments: dict[str, Segment] = {}
    current: Segment | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        kind = record.get("type")
        if kind == "run":
            key = segment_key(record)
            if key in segments:
                current = segments[key]
                current.header["params"] = {**current.header.get("params", {}), **record.get("params", {})}
            else:
                current = segments[key] = Segment(header=record)
            continue
        if current is None:
            continue
        if kind == "metrics":
            for name, value in record["metrics"].items():
                current.metrics.append((name, float(value), int(record["timestamp_ms"]), int(record["step"])))
        elif kind == "tags":
            current.tags.update({str(k): str(v) for k, v in record["tags"].items()})
        elif kind == "artifact":
            current.artifacts.append((str(record["path"]), record.get("artifact_path")))
        elif kind == "dict":
            current.dicts.append((record["data"], str(record["name"])))
        elif kind == "register":
            current.registrations.append(record)
        elif kind == "inputs":
            current.inputs.extend(d for d in record.get("datasets", []) if isinstance(d, dict))
        elif kind == "end":
            current.status = str(record["status"])
    return list(segments.values())
