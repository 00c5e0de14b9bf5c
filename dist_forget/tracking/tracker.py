"""`Tracker`: what the training loop calls to log to MLflow, without ever waiting on MLflow.

Only rank 0 gets a live tracker; every other rank (and `tracking.enabled: false`) gets a no-op with the
same methods, because when several ranks create the same new experiment at once, the losers' runs land
silently in MLflow's "Default" experiment.

`log_metrics` only puts a dict on a queue (microseconds); a background thread sends everything queued
every `flush_every_s` as one `log_batch` (one HTTP request instead of ~60 ms per metric). Order is kept:
tags and artifacts go through the same queue.

If MLflow cannot be reached (at start or at any later send), the tracker warns once and from then on
appends everything to `<out_dir>/mlflow_fallback.jsonl`; training never notices.
`dist-forget track sync --path <out_dir>` uploads that file later.

A run also gets MLflow's standard source tags (`mlflow.user`, `mlflow.source.name`/`type`, and
`mlflow.source.git.commit` when this package runs from a git checkout), its dataset inputs
(`log_inputs`, the runs table's Dataset column) and, when `tracking.system_metrics` is on, MLflow's own
system-metrics monitor (CPU, memory, disk, network, GPU every `system_metrics_interval_s`; its cost is
measured in benchmarks/bench_tracking.py).
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.redact import auth_header, redact_uri, scrub, split_credentials, use_uri
from dist_forget.tracking.config import ResolvedTracking, TrackingConfig, resolve
from dist_forget.tracking.fallback import FALLBACK_NAME, FallbackWriter
from dist_forget.tracking.store import PROXIED_ROOT, install, sqlite_path

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens an experiment by its kind: without this tag it guesses "GenAI" and lands on an empty
# traces overview; "custom_model_development" opens the runs table (values: mlflow's ExperimentKind)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
MAX_PARAMS_PER_BATCH = 100  # MLflow's limits on one log_batch request
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_VALUE = 6000
FINISH_TIMEOUT_S = 15.0  # the longest `finish` holds the process for a server that does not answer

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
            from mlflow.entities import RunTag

            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
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


class Tracker:
    """Rank 0's link to MLflow; a no-op on other ranks or when tracking is disabled."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.fallback_path: Path | None = None
        self._queue: queue.Queue[tuple[Any, ...]] | None = None
        self._thread: threading.Thread | None = None
        self._monitor: Any = None
        self._sender: _Sender | None = None
        self._finished = False

    @classmethod
    def create(
        cls,
        cfg: TrackingConfig,
        rank: int,
        run_name: str,
        params: dict[str, Any],
        out_dir: Path,
        tags: dict[str, str] | None = None,
        source_name: str | None = None,
    ) -> Tracker:
        """A live tracker on rank 0 when enabled, else a no-op; `params` = the flattened resolved config,
        `tags` come on top of the standard source tags (`source_name` = the command, e.g. `dist-forget sweep`)."""
        tracker = cls()
        if not cfg.enabled or rank != 0:
            return tracker
        install()  # mlflow-artifacts: URIs of a local sqlite store resolve beside its .db
        rt = resolve(cfg, out_dir)
        shown = redact_uri(rt.uri)  # what is printed and stored; MLflow gets the URI without userinfo and
        rt = replace(rt, uri=use_uri(rt.uri))  # the credentials through its environment variables
        for key, value in _HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        str_params = params_to_strings(params)
        tags = {**source_tags(source_name), **{str(k): scrub(str(v)) for k, v in (tags or {}).items()}}
        tracker.uri = shown
        tracker.fallback_path = Path(out_dir) / FALLBACK_NAME
        header = {
            "uri": shown,
            "experiment": rt.experiment,
            "run_id": rt.run_id,
            "run_name": run_name,
            "parent_run_id": rt.parent_run_id,
            "params": str_params,
            "tags": tags,
        }
        fallback = FallbackWriter(tracker.fallback_path, header)
        client = None
        try:
            probe(rt.uri)
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=rt.uri)
            tracker.run_id = open_run(client, rt, run_name, str_params, tags)
            fallback.set_header(run_id=tracker.run_id)
            if cfg.system_metrics:
                tracker._monitor = start_system_metrics(tracker.run_id, rt, cfg.system_metrics_interval_s)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any MLflow failure means "offline", never a crash
            client = None
            _warn_offline(shown, exc, tracker.fallback_path)
        tracker._queue = queue.Queue()
        sender = tracker._sender = _Sender(client, tracker.run_id, rt, fallback, tracker._queue)
        tracker._thread = threading.Thread(target=sender.loop, name="mlflow-sender", daemon=True)
        tracker._thread.start()
        atexit.register(tracker.finish, "FAILED")  # a crash that skips finish() still closes the run
        return tracker

    @property
    def active(self) -> bool:
        return self._queue is not None and not self._finished

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active:
            stamp = int(time.time() * 1000)
            self._queue.put(("metrics", step, stamp, {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (into the run's folder `artifact_path`, e.g. `fit`; None = its top level)."""
        if self.active:
            self._queue.put(("artifact", {"path": str(Path(path).resolve()), "artifact_path": artifact_path}))

    def register_model(self, folder: str | Path, name: str, tags: dict[str, str] | None = None) -> None:
        """Upload the HF folder as the run's `best_model/` artifacts and make it a new version of registered
        model `name` in MLflow's model registry (created when missing)."""
        if self.active:
            self._queue.put(
                (
                    "register",
                    {
                        "path": str(Path(folder).resolve()),
                        "name": name,
                        "tags": {str(k): str(v) for k, v in (tags or {}).items()},
                    },
                )
            )

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        """Record the run's datasets (see `dataset_inputs` for the record); MLflow shows them per run."""
        if self.active and datasets:
            self._queue.put(("inputs", {"datasets": datasets}))

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """Upload `data` as the JSON artifact `name` (a view of a local file for the artifact store)."""
        if self.active:
            self._queue.put(("dict", {"data": data, "name": name}))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            self._queue.put(("tags", {"tags": {str(k): str(v) for k, v in tags.items()}}))

    def flush(self) -> None:
        """Block until everything queued so far was sent (or written to the fallback JSONL)."""
        if self.active:
            done = threading.Event()
            self._queue.put(("flush", done))
            done.wait()

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is queued, mark the run `status` (FINISHED, FAILED, KILLED) and stop the sender.

        Waits at most FINISH_TIMEOUT_S: a server that accepts connections but does not answer (frozen,
        overloaded) would otherwise hold the process for MLflow's retries, minutes. What is not sent by
        then goes to the fallback JSONL (`track sync` uploads it; a record the server took meanwhile is
        sent twice, which MLflow stores once)."""
        if not self.active:
            return
        self._finished = True
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        if self._monitor is not None:  # its last samples land before the run is closed
            _bounded(lambda: stop_system_metrics(self._monitor), deadline)
            self._monitor = None
        self._queue.put(("end", {"status": status}))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._sender.abandon()
        atexit.unregister(self.finish)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.finish(
            "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        )


MODEL_ARTIFACT = "best_model"


def register(client: Any, run_id: str, record: dict[str, Any]) -> str:
    """Upload `record["path"]` to the run's `best_model/` and register it as a new version of
    `record["name"]`; returns the version. Two runs registering a new name at once are fine."""
    from mlflow.exceptions import MlflowException

    client.log_artifacts(run_id, record["path"], MODEL_ARTIFACT)
    try:
        client.create_registered_model(record["name"])
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(record["name"], f"runs:/{run_id}/{MODEL_ARTIFACT}", run_id=run_id,
                                          tags=record.get("tags") or None)  # fmt: skip
    return str(version.version)


def start_system_metrics(run_id: str, rt: ResolvedTracking, interval_s: float) -> Any:
    """MLflow's own system-metrics monitor on this run (a daemon thread); None if it cannot start."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=bool(rt.run_id),
                                       tracking_uri=rt.uri)  # fmt: skip
        monitor.start()
        return monitor
    except Exception as exc:  # noqa: BLE001 - e.g. psutil missing: train without system metrics
        warnings.warn(f"MLflow system metrics not started ({type(exc).__name__}: {scrub(str(exc))[:200]}); "
                      "set tracking.system_metrics=false to silence this", RuntimeWarning, stacklevel=3)  # fmt: skip
        return None


def stop_system_metrics(monitor: Any) -> None:
    """Stop the monitor; a run shorter than one sampling interval still gets one sample of each system metric."""
    try:
        monitor.finish()
        if getattr(monitor, "_logging_step", 1) == 0:
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
    except Exception:  # noqa: BLE001 - system metrics are never worth a failed run
        pass


def _bounded(fn: Any, deadline: float) -> None:
    """Run `fn` in a daemon thread and wait for it until `deadline` (time.monotonic) at most."""
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))


def _warn_offline(uri: str, exc: BaseException, path: Path) -> None:
    reason = scrub(" ".join(str(exc).split()))[:300]
    warnings.warn(
        f"MLflow at {redact_uri(uri)} is unavailable ({type(exc).__name__}: {reason}); training goes on and "
        f"metrics go to {path}; upload them later with `dist-forget track sync --path {path.parent}`",
        RuntimeWarning,
        stacklevel=3,
    )


class _Sender:
    """The background thread's work: batch the queue into log_batch calls, or into the JSONL."""

    def __init__(
        self,
        client: Any,
        run_id: str | None,
        rt: ResolvedTracking,
        fallback: FallbackWriter,
        q: queue.Queue[tuple[Any, ...]],
    ):
        self.client = client
        self.run_id = run_id
        self.rt = rt
        self.fallback = fallback
        self.queue = q
        self.lock = threading.Lock()  # between this thread and `abandon` (the caller's thread)
        self.abandoned = False
        self.inflight: list[tuple[str, dict[str, Any]]] = []  # what the call in progress sends

    def loop(self) -> None:
        pending: list[tuple[int, int, dict[str, float]]] = []
        deadline = time.monotonic() + self.rt.flush_every_s
        while not self.abandoned:
            try:
                op = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._send_metrics(pending)
                pending = []
                deadline = time.monotonic() + self.rt.flush_every_s
                continue
            if op[0] == "metrics":
                pending.append(op[1:])
                if sum(len(m) for _, _, m in pending) >= MAX_METRICS_PER_BATCH:
                    self._send_metrics(pending)
                    pending = []
                continue
            self._send_metrics(pending)
            pending = []
            if op[0] == "flush":
                op[1].set()
                continue
            kind, record = op
            self._call(kind, record)
            if kind == "end":
                return

    def abandon(self) -> None:
        """Stop sending (the thread is stuck in a call): what it holds and what is queued go to the JSONL;
        the thread, if its call ever returns, writes and sends nothing more."""
        with self.lock:
            self.abandoned = True
            for kind, record in self.inflight:
                self._to_fallback(kind, record)
            while True:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                if op[0] == "metrics":
                    self._to_fallback("metrics", {"step": op[1], "timestamp_ms": op[2], "metrics": op[3]})
                elif op[0] == "flush":
                    op[1].set()
                else:
                    self._to_fallback(*op)

    def _to_fallback(self, kind: str, record: dict[str, Any]) -> None:
        self.fallback.append({"type": kind, **record})

    def _send_metrics(self, pending: list[tuple[int, int, dict[str, float]]]) -> None:
        if not pending or self.abandoned:
            return
        if self.client is None:
            for step, stamp, metrics in pending:
                self._to_fallback("metrics", {"step": step, "timestamp_ms": stamp, "metrics": metrics})
            return
        self.inflight = [("metrics", {"step": st, "timestamp_ms": ts, "metrics": m}) for st, ts, m in pending]
        from mlflow.entities import Metric

        batch = [Metric(k, v, stamp, step) for step, stamp, metrics in pending for k, v in metrics.items()]
        try:
            for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])
        except Exception as exc:  # noqa: BLE001 - offline from now on; the batch goes to the JSONL
            with self.lock:
                if not self.abandoned:
                    self._go_offline(exc)
                    self._send_metrics(pending)
        finally:
            with self.lock:
                self.inflight = []

    def _call(self, kind: str, record: dict[str, Any]) -> None:
        if self.abandoned:
            return
        if self.client is not None:
            self.inflight = [(kind, record)]
            try:
                self._send(kind, record)
                return
            except Exception as exc:  # noqa: BLE001 - offline from now on; the record goes to the JSONL
                with self.lock:
                    if self.abandoned:
                        return
                    self._go_offline(exc)
            finally:
                with self.lock:
                    self.inflight = []
        self._to_fallback(kind, record)

    def _send(self, kind: str, record: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        if kind == "end":
            self.client.set_terminated(self.run_id, record["status"])
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
        elif kind == "artifact":
            self.client.log_artifact(self.run_id, record["path"], record.get("artifact_path"))
        elif kind == "dict":
            self.client.log_dict(self.run_id, record["data"], record["name"])
        elif kind == "inputs":
            self.client.log_inputs(self.run_id, datasets=dataset_inputs(record["datasets"]))
        elif kind == "register":
            register(self.client, self.run_id, record)

    def _go_offline(self, exc: BaseException) -> None:
        self.client = None
        _warn_offline(self.rt.uri, exc, self.fallback.path)
