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

Each line after the header is one `records.Record` (its `to_json()`), read back by `Record.from_json`.

The file is created owner-only (0600); its `uri` has any credentials redacted (`http://***@host:port`), and
`track sync` takes them from MLFLOW_TRACKING_USERNAME/PASSWORD.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_forget.tracking.records import Artifact, DictArtifact, Metrics, Record, Tags, parse

FALLBACK_NAME = "mlflow_fallback.jsonl"


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

    def append(self, record: Record) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # owner-only: the file holds the run's params and tags, which may come from the environment
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)
            with open(fd, "a", encoding="utf-8") as fh:
                if not self._opened:
                    fh.write(json.dumps(self._header) + "\n")
                    self._opened = True
                fh.write(json.dumps(record.to_json()) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


@dataclass
class Segment:
    """Everything recorded for one run, in order (segments of the same run are merged)."""

    header: dict[str, Any]
    records: list[Record] = field(default_factory=list)

    @property
    def key(self) -> str:
        return segment_key(self.header)

    @property
    def metrics(self) -> list[tuple[str, float, int, int]]:
        """Every metric value: (key, value, timestamp_ms, step)."""
        return [v for r in self.records if isinstance(r, Metrics) for v in r.values()]

    @property
    def tags(self) -> dict[str, str]:
        """The tags as they end up (a later value of a key wins)."""
        return {k: v for r in self.records if isinstance(r, Tags) for k, v in r.tags.items()}

    @property
    def n_artifacts(self) -> int:
        return sum(isinstance(r, (Artifact, DictArtifact)) for r in self.records)


def segment_key(header: dict[str, Any]) -> str:
    # A run that was never created has no id; its resumed attempts share the name and the out_dir.
    if header.get("run_id"):
        return f"id:{header['run_id']}"
    return f"name:{header.get('experiment')}/{header.get('run_name')}"


def read_segments(path: Path) -> list[Segment]:
    """Parse the JSONL into per-run segments, in first-seen order; torn or foreign lines are skipped."""
    segments: dict[str, Segment] = {}
    current: Segment | None = None
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(line, dict):
            continue
        if line.get("type") == "run":
            key = segment_key(line)
            if key in segments:
                current = segments[key]
                current.header["params"] = {**current.header.get("params", {}), **line.get("params", {})}
            else:
                current = segments[key] = Segment(header=line)
            continue
        record = parse(line) if current is not None else None
        if record is not None:
            current.records.append(record)
    return list(segments.values())
