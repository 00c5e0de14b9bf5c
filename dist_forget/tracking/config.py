"""The `tracking:` section of a run config and how it is resolved against the environment.

Resolution order (the same one transformers' MLflow callback follows, so a user's habits carry over):

- uri: `tracking.uri`, else `$MLFLOW_TRACKING_URI`, else a local sqlite store
  `sqlite:///<out_dir>/../mlflow.db` — one store beside the run folders, so the runs of a study
  (`work/runs/<name>/`) share one database that `mlflow ui --backend-store-uri` opens; nothing to start.
- experiment: `$MLFLOW_EXPERIMENT_NAME` when set, else `tracking.experiment`.
- run_id (resume into an existing run): `tracking.run_id`, else `$MLFLOW_RUN_ID`.
- parent_run_id (nest under a sweep's parent run): `tracking.parent_run_id`, else
  `$DIST_FORGET_PARENT_RUN_ID`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dist_forget.errors import UserError

PARENT_ENV = "DIST_FORGET_PARENT_RUN_ID"


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None
    experiment: str = "dist-forget"
    run_id: str | None = None
    parent_run_id: str | None = None
    flush_every_s: float = 5.0

    def validate(self) -> None:
        if self.flush_every_s <= 0:
            raise UserError(f"tracking.flush_every_s = {self.flush_every_s} must be > 0 seconds; try 5.0")
        if not self.experiment:
            raise UserError("tracking.experiment is empty; name the MLflow experiment, e.g. dist-forget")


@dataclass(frozen=True)
class ResolvedTracking:
    uri: str
    experiment: str
    run_id: str | None
    parent_run_id: str | None
    flush_every_s: float


def default_uri(out_dir: str | Path) -> str:
    store = Path(out_dir).resolve().parent / "mlflow.db"
    return f"sqlite:///{store}"


def resolve(cfg: TrackingConfig, out_dir: str | Path) -> ResolvedTracking:
    """Apply the environment to `cfg` (see the module docstring for who wins)."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(out_dir)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or cfg.experiment
    run_id = cfg.run_id or os.environ.get("MLFLOW_RUN_ID") or None
    parent = cfg.parent_run_id or os.environ.get(PARENT_ENV) or None
    return ResolvedTracking(uri, experiment, run_id, parent, cfg.flush_every_s)
