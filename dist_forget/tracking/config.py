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
ROOT_ENV = "DIST_FORGET_SWEEP_DIR"  # a sweep's folder: its runs tag their paths relative to it


def run_root(out_dir: str | Path) -> Path:
    """What a run's paths are relative to: the sweep folder, else the folder holding out_dir (the store's)."""
    env = os.environ.get(ROOT_ENV)
    return Path(env).resolve() if env else Path(out_dir).resolve().parent


def relative(path: str | Path, root: Path) -> str:
    """`path` relative to `root` (with `..` when outside it): a tag that survives moving the whole tree."""
    return Path(os.path.relpath(Path(path).resolve(), root)).as_posix()


@dataclass
class TrackingConfig:
    enabled: bool = True  # log to MLflow (rank 0 only); false: metrics.jsonl and summary.json only
    uri: str | None = (
        None  # MLflow tracking URI; unset: $MLFLOW_TRACKING_URI, else sqlite:///<out_dir>/../mlflow.db
    )
    experiment: str = "dist-forget"  # MLflow experiment ($MLFLOW_EXPERIMENT_NAME wins)
    run_id: str | None = None  # log into this existing MLflow run (else $MLFLOW_RUN_ID, else a new run)
    parent_run_id: str | None = None  # nest the run under this one (a sweep sets it)
    flush_every_s: float = 5.0  # seconds between two batched uploads of metrics
    system_metrics: bool = True  # MLflow's CPU/memory/disk/network/GPU monitor on the run (system/*)
    system_metrics_interval_s: float = 10.0  # seconds between its samples
    register_model: str = ""  # register the run's best model (best/) under this registry name; "" = don't

    def validate(self) -> None:
        if self.system_metrics_interval_s <= 0:
            raise UserError(
                f"tracking.system_metrics_interval_s = {self.system_metrics_interval_s} must be > 0; try 10"
            )
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
