"""Every call into MLflow's client: reaching the server (probe, credentials), opening or resuming a run,
the experiment, the model registry, and the entities MLflow's batch calls take.

`tracker.py` queues records and `records.py` says what each sends; both leave the MLflow API to this
module, so the trainer can build an inactive tracker without importing mlflow.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.redact import auth_header, redact_uri, scrub, split_credentials
from dist_forget.tracking.config import ResolvedTracking
from dist_forget.tracking.store import PROXIED_ROOT, sqlite_path

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on an empty
# traces overview; "custom_model_development" opens the runs table (values: mlflow's ExperimentKind)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
MAX_PARAMS_PER_BATCH = 100  # MLflow's limits on one log_batch request
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000

# MLflow's HTTP client retries for minutes by default; the sender thread should give up sooner and
# fall back to the JSONL. A user's own settings win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class MlflowUnavailable(Exception):
    """MLflow did not answer (or refused); the caller falls back to the JSONL."""


def param_string(value: Any) -> str:
    """One param value as MLflow shows it: lists, tuples and dicts as JSON (`[0.9, 0.95]`), else str."""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(list(value) if isinstance(value, tuple) else value, default=str)
    return str(value)


def params_to_strings(params: dict[str, Any]) -> dict[str, str]:
    """MLflow params as strings, every URI in them redacted (a tracking URI may hold a password)."""
    return {str(k)[:250]: scrub(param_string(v))[:MAX_PARAM_VALUE] for k, v in params.items()}


def use_http_defaults() -> None:
    """Shorter MLflow HTTP retries for this process, unless the user set their own."""
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def connect(uri: str) -> Any:
    """An MlflowClient for `uri` (call `probe` first: the client itself waits out long retries)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def existing_run(client: Any, run_id: str | None) -> str | None:
    """`run_id` if the client's server holds that run, else None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None
    return run_id


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """HEAD of the git checkout this package runs from (None for an installed wheel or no git)."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def source_tags(source_name: str | None = None) -> dict[str, str]:
    """MLflow's standard provenance tags, as `mlflow.start_run` would set them."""
    tags = {"mlflow.source.type": "LOCAL",
            "mlflow.source.name": source_name or Path(sys.argv[0]).name or "python"}  # fmt: skip
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def dataset_inputs(datasets: list[dict[str, Any]]) -> list[Any]:
    """MLflow `DatasetInput`s from plain records {name, digest, source_type, source, profile, context, tags}:
    digest (<= 36 characters kept) and profile describe the data, shared by every run of the experiment that
    uses it; context and tags are this run's (its input tags)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return [
        DatasetInput(
            Dataset(
                d["name"],
                d["digest"][:36],
                d.get("source_type", "local"),
                d["source"],
                d.get("schema"),
                d.get("profile"),
            ),  # fmt: skip
            [
                InputTag(MLFLOW_DATASET_CONTEXT, d.get("context", "train")),
                *(InputTag(str(k), str(v)) for k, v in (d.get("tags") or {}).items()),
            ],
        )
        for d in datasets
    ]


def probe(uri: str, timeout_s: float = 3.0) -> None:
    """Fail fast on an HTTP server that is down or refuses our credentials, instead of waiting out MLflow's
    retries. Credentials: the URI's userinfo, else MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD (or TOKEN)."""
    if not uri.startswith(("http://", "https://")):
        return
    clean, user, password = split_credentials(uri)
    shown, base = redact_uri(uri), clean.rstrip("/")
    try:
        with urllib.request.urlopen(base + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise MlflowUnavailable(f"{shown}/health answered HTTP {exc.code}") from None
        # below 500 something answers (e.g. an auth proxy guarding /health): the call below tells more
    except OSError as exc:
        raise MlflowUnavailable(f"{shown} is unreachable ({scrub(str(exc))})") from None
    headers = _basic(user, password or "") if user else auth_header()
    request = urllib.request.Request(
        base + "/api/2.0/mlflow/experiments/search?max_results=1", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            given = "were refused" if headers else "are needed and none were given"
            raise MlflowUnavailable(
                f"{shown}: credentials {given} (HTTP {exc.code}); set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or user:password@ in the URI) to an account of that server"
            ) from None
    except OSError:
        return  # let MLflow's client try and report


def _basic(user: str, password: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, creating it (artifacts beside a sqlite store) when missing, tagged as
    model development (KIND_TAG) unless it already has a kind."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        # A local store addresses artifacts relative to itself (files in mlartifacts/ beside the .db), so
        # the folder can be copied and opened elsewhere; a server decides its own location.
        location = PROXIED_ROOT if sqlite_path(uri) is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})
        except MlflowException:  # another process created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise UserError(
            f"MLflow experiment {name!r} at {redact_uri(uri)} is deleted; restore it "
            f"(`mlflow experiments restore`) or set tracking.experiment to another name"
        )
    if KIND_TAG not in exp.tags:  # made before the tag was set (or by hand): the runs table, not traces
        client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return exp.experiment_id


def open_run(
    client: Any, rt: ResolvedTracking, run_name: str, params: dict[str, str], tags: dict[str, str]
) -> str:
    """Create the run (or resume `rt.run_id`), log its params; return the run id."""
    from mlflow.entities import Param, RunStatus
    from mlflow.exceptions import MlflowException

    if rt.run_id:
        try:
            run = client.get_run(rt.run_id)
        except MlflowException:
            raise UserError(
                f"MLflow run id {rt.run_id!r} (tracking.run_id or $MLFLOW_RUN_ID) does not exist at "
                f"{redact_uri(rt.uri)}; unset it to start a new run"
            ) from None
        run_id = run.info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        old = run.data.params
        changed = sorted(k for k, v in params.items() if k in old and old[k] != v)
        if changed:
            warnings.warn(
                f"resuming MLflow run {run_id}: params {changed[:5]} differ from the logged ones; "
                "MLflow keeps the first values (the new config is in the checkpoint)",
                RuntimeWarning,
                stacklevel=3,
            )
        params = {k: v for k, v in params.items() if k not in old}
        if tags:
            log_tags(client, run_id, tags)
    else:
        exp_id = experiment_id(client, rt.experiment, rt.uri)
        run_tags = dict(tags)
        if rt.parent_run_id:
            run_tags[PARENT_TAG] = rt.parent_run_id
        run_id = client.create_run(exp_id, run_name=run_name, tags=run_tags).info.run_id
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])
    return run_id


MODEL_ARTIFACT = "best_model"


def register(client: Any, run_id: str, path: str, name: str, tags: dict[str, str]) -> str:
    """Upload the folder `path` to the run's `best_model/` and register it as a new version of `name`;
    returns the version. Two runs registering a new name at once are fine."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, path, MODEL_ARTIFACT)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(name, f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id,
                                          tags=tags or None)  # fmt: skip
    return str(version.version)


def log_metric_values(client: Any, run_id: str, values: list[tuple[str, float, int, int]]) -> None:
    """(key, value, timestamp_ms, step) tuples as log_batch calls of at most MAX_METRICS_PER_BATCH."""
    from mlflow.entities import Metric

    batch = [Metric(k, v, stamp, step) for k, v, stamp, step in values]
    for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])


def log_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
