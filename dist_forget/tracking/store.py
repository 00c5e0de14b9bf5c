"""A store that can move: artifacts addressed relative to the store, never by this machine's paths.

MLflow records an artifact location per experiment and run. A local sqlite store would record
`file:///abs/path/mlartifacts/...`, so a copied or shared `mlflow.db` shows broken artifacts. Experiments
this package creates in a local sqlite store get MLflow's proxied scheme instead, `mlflow-artifacts:/`, so
a run's artifacts are `mlflow-artifacts:/<run_id>/artifacts/...` and the files live in `mlartifacts/`
beside `mlflow.db`. Whoever opens the store resolves that against its own copy:

- `mlflow ui` / `mlflow server` started in the store's folder serve `./mlartifacts` by default
  (`--artifacts-destination`), so the UI shows every artifact of a copied folder;
- in this process (the trainer, `track sync`, `fit --mlflow`, tests) `install()` maps `mlflow-artifacts:`
  URIs of a sqlite tracking URI onto `<folder of the .db>/mlartifacts`, where MLflow's own client would
  otherwise ask for an HTTP server. Over HTTP nothing changes: the server proxies.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ARTIFACTS_DIR = "mlartifacts"  # MLflow's default --artifacts-destination, relative to where it starts
PROXIED_ROOT = "mlflow-artifacts:/"
_installed = False


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI, else None."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///") :].split("?", 1)[0])


def artifact_root(tracking_uri: str | None) -> Path | None:
    """Where a local sqlite store keeps the files behind its `mlflow-artifacts:/` URIs."""
    db = sqlite_path(tracking_uri)
    return None if db is None else db.resolve().parent / ARTIFACTS_DIR


def ui_command(tracking_uri: str) -> str:
    """How to open a local store in the browser (artifacts included), for messages and the README."""
    db = sqlite_path(tracking_uri)
    if db is None:
        from dist_forget.redact import redact_uri

        return f"open {redact_uri(tracking_uri)} in a browser"
    folder = db.resolve().parent
    return f"cd {shlex.quote(str(folder))} && mlflow ui --backend-store-uri sqlite:///{db.name}"


def _factory(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> Any:
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
    from mlflow.tracking import get_tracking_uri

    parsed = urlparse(artifact_uri)
    root = artifact_root(tracking_uri or get_tracking_uri())
    if root is None or parsed.netloc:  # a server (named or the tracking one) proxies these
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    local = root.joinpath(*[p for p in parsed.path.split("/") if p])
    return LocalArtifactRepository(local.as_uri())


def install() -> None:
    """Teach this process's MLflow client to resolve `mlflow-artifacts:` under a local sqlite store."""
    global _installed
    if _installed:
        return
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry

    _artifact_repository_registry.register("mlflow-artifacts", _factory)
    _installed = True
