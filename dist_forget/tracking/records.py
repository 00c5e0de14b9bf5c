"""What the tracker records, one class per kind: the live sender queues and sends them, the fallback JSONL
holds them as `to_json()` lines, and `track sync` reads them back with `from_json` and sends them the same
way. A new kind is one class here (its `kind` is the JSONL `type`; `fallback.py` lists the line formats).

Each record knows its line (`to_json`/`from_json`), its MLflow call (`send`) and, for one that names a
local file, why `track sync` can no longer send it (`stale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dist_forget.tracking import mlflow_calls


class Record:
    """One thing the run sends to MLflow, in order with the others."""

    kind: ClassVar[str]
    KINDS: ClassVar[dict[str, type[Record]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Record.KINDS[cls.kind] = cls

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Record:
        raise NotImplementedError

    def send(self, client: Any, run_id: str) -> None:
        raise NotImplementedError

    def stale(self) -> str | None:
        """Why this record cannot be sent any more (a local file it names is gone); None = it can."""
        return None


def parse(line: dict[str, Any]) -> Record | None:
    """The record a JSONL line holds; None for a `run` header or a type this version does not know."""
    cls = Record.KINDS.get(line.get("type"))
    return cls.from_json(line) if cls is not None else None


def _jsonable(value: float) -> float | str:
    # JSON has no NaN/Inf; keep them as strings so a diverged run's last losses survive the trip.
    return value if math.isfinite(value) else repr(value)


@dataclass
class Metrics(Record):
    kind: ClassVar[str] = "metrics"
    step: int
    timestamp_ms: int
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        values = {k: _jsonable(v) for k, v in self.metrics.items()}
        return {"type": self.kind, "step": self.step, "timestamp_ms": self.timestamp_ms, "metrics": values}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Metrics:
        values = {name: float(value) for name, value in line["metrics"].items()}
        return cls(int(line["step"]), int(line["timestamp_ms"]), values)

    def values(self) -> list[tuple[str, float, int, int]]:
        """(key, value, timestamp_ms, step) per metric."""
        return [(k, v, self.timestamp_ms, self.step) for k, v in self.metrics.items()]

    def send(self, client: Any, run_id: str) -> None:
        send_metrics(client, run_id, [self])


def send_metrics(client: Any, run_id: str, records: list[Metrics]) -> None:
    """Many metrics records in as few log_batch calls as MLflow's batch limit allows."""
    mlflow_calls.log_metric_values(client, run_id, [v for r in records for v in r.values()])


@dataclass
class Tags(Record):
    kind: ClassVar[str] = "tags"
    tags: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "tags": self.tags}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Tags:
        return cls({str(k): str(v) for k, v in line["tags"].items()})

    def send(self, client: Any, run_id: str) -> None:
        mlflow_calls.log_tags(client, run_id, self.tags)


@dataclass
class Artifact(Record):
    """A local file uploaded into the run's folder `artifact_path` (None = its top level)."""

    kind: ClassVar[str] = "artifact"
    path: str
    artifact_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path, "artifact_path": self.artifact_path}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Artifact:
        return cls(str(line["path"]), line.get("artifact_path"))

    def send(self, client: Any, run_id: str) -> None:
        client.log_artifact(run_id, self.path, self.artifact_path)

    def stale(self) -> str | None:
        return None if Path(self.path).is_file() else f"artifact {self.path} no longer exists; skipped"


@dataclass
class DictArtifact(Record):
    """A JSON artifact given as its content."""

    kind: ClassVar[str] = "dict"
    data: dict[str, Any]
    name: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "data": self.data, "name": self.name}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> DictArtifact:
        return cls(line["data"], str(line["name"]))

    def send(self, client: Any, run_id: str) -> None:
        client.log_dict(run_id, self.data, self.name)


@dataclass
class Inputs(Record):
    """The run's datasets (see `mlflow_calls.dataset_inputs` for one dataset's fields)."""

    kind: ClassVar[str] = "inputs"
    datasets: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "datasets": self.datasets}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Inputs:
        return cls([d for d in line.get("datasets", []) if isinstance(d, dict)])

    def send(self, client: Any, run_id: str) -> None:
        if self.datasets:
            client.log_inputs(run_id, datasets=mlflow_calls.dataset_inputs(self.datasets))


@dataclass
class RegisterModel(Record):
    """An HF folder uploaded as the run's `best_model/` and made a new version of registered model `name`."""

    kind: ClassVar[str] = "register"
    path: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "path": self.path, "name": self.name, "tags": self.tags}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> RegisterModel:
        return cls(line["path"], line["name"], line.get("tags") or {})

    def send(self, client: Any, run_id: str) -> None:
        mlflow_calls.register(client, run_id, self.path, self.name, self.tags)

    def stale(self) -> str | None:
        return None if Path(self.path).is_dir() else f"model {self.path} no longer exists; not registered"


@dataclass
class Finish(Record):
    """The run's end: FINISHED, FAILED or KILLED."""

    kind: ClassVar[str] = "end"
    status: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "status": self.status}

    @classmethod
    def from_json(cls, line: dict[str, Any]) -> Finish:
        return cls(str(line["status"]))

    def send(self, client: Any, run_id: str) -> None:
        client.set_terminated(run_id, self.status)
