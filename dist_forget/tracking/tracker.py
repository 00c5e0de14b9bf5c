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

This module only queues and flushes: what each record sends is `records.py`, the MLflow calls are
`mlflow_calls.py`, the monitor is `system_metrics.py`.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.redact import redact_uri, scrub, use_uri
from dist_forget.tracking.config import ResolvedTracking, TrackingConfig, resolve
from dist_forget.tracking.fallback import FALLBACK_NAME, FallbackWriter
from dist_forget.tracking.mlflow_calls import (
    MAX_METRICS_PER_BATCH,
    connect,
    open_run,
    params_to_strings,
    probe,
    source_tags,
    use_http_defaults,
)
from dist_forget.tracking.records import (
    Artifact,
    DictArtifact,
    Finish,
    Inputs,
    Metrics,
    Record,
    RegisterModel,
    Tags,
    send_metrics,
)
from dist_forget.tracking.store import install
from dist_forget.tracking.system_metrics import start_system_metrics, stop_system_metrics

FINISH_TIMEOUT_S = 15.0  # the longest `finish` holds the process for a server that does not answer


class Tracker:
    """Rank 0's link to MLflow; a no-op on other ranks or when tracking is disabled."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.uri: str | None = None
        self.fallback_path: Path | None = None
        self._queue: queue.Queue[Record | threading.Event] | None = None
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
        tracker = cls.inactive()
        if not cfg.enabled or rank != 0:
            return tracker
        install()  # mlflow-artifacts: URIs of a local sqlite store resolve beside its .db
        rt = resolve(cfg, out_dir)
        shown = redact_uri(rt.uri)  # what is printed and stored; MLflow gets the URI without userinfo and
        rt = replace(rt, uri=use_uri(rt.uri))  # the credentials through its environment variables
        use_http_defaults()
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
            client = connect(rt.uri)
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

    @classmethod
    def inactive(cls) -> Tracker:
        """A tracker that records nothing (every method returns at once): other ranks, or tracking
        disabled. Building it loads no MLflow."""
        return cls()

    @property
    def active(self) -> bool:
        return self._queue is not None and not self._finished

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active:
            stamp = int(time.time() * 1000)
            self._queue.put(Metrics(step, stamp, {k: float(v) for k, v in metrics.items()}))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file (into the run's folder `artifact_path`, e.g. `fit`; None = its top level)."""
        if self.active:
            self._queue.put(Artifact(str(Path(path).resolve()), artifact_path))

    def register_model(self, folder: str | Path, name: str, tags: dict[str, str] | None = None) -> None:
        """Upload the HF folder as the run's `best_model/` artifacts and make it a new version of registered
        model `name` in MLflow's model registry (created when missing)."""
        if self.active:
            tags = {str(k): str(v) for k, v in (tags or {}).items()}
            self._queue.put(RegisterModel(str(Path(folder).resolve()), name, tags))

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        """Record the run's datasets (see `mlflow_calls.dataset_inputs` for the record); MLflow shows them
        per run."""
        if self.active and datasets:
            self._queue.put(Inputs(datasets))

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        """Upload `data` as the JSON artifact `name` (a view of a local file for the artifact store)."""
        if self.active:
            self._queue.put(DictArtifact(data, name))

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            self._queue.put(Tags({str(k): str(v) for k, v in tags.items()}))

    def flush(self) -> None:
        """Block until everything queued so far was sent (or written to the fallback JSONL)."""
        if self.active:
            done = threading.Event()
            self._queue.put(done)
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
        self._queue.put(Finish(status))
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
        q: queue.Queue[Record | threading.Event],
    ):
        self.client = client
        self.run_id = run_id
        self.rt = rt
        self.fallback = fallback
        self.queue = q
        self.lock = threading.Lock()  # between this thread and `abandon` (the caller's thread)
        self.abandoned = False
        self.inflight: list[Record] = []  # what the call in progress sends

    def loop(self) -> None:
        pending: list[Metrics] = []
        deadline = time.monotonic() + self.rt.flush_every_s
        while not self.abandoned:
            try:
                op = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._send_metrics(pending)
                pending = []
                deadline = time.monotonic() + self.rt.flush_every_s
                continue
            if isinstance(op, Metrics):
                pending.append(op)
                if sum(len(m.metrics) for m in pending) >= MAX_METRICS_PER_BATCH:
                    self._send_metrics(pending)
                    pending = []
                continue
            self._send_metrics(pending)
            pending = []
            if isinstance(op, threading.Event):  # a flush: everything before it is sent
                op.set()
                continue
            self._call(op)
            if isinstance(op, Finish):
                return

    def abandon(self) -> None:
        """Stop sending (the thread is stuck in a call): what it holds and what is queued go to the JSONL;
        the thread, if its call ever returns, writes and sends nothing more."""
        with self.lock:
            self.abandoned = True
            for record in self.inflight:
                self.fallback.append(record)
            while True:
                try:
                    op = self.queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(op, threading.Event):
                    op.set()
                else:
                    self.fallback.append(op)

    def _send_metrics(self, pending: list[Metrics]) -> None:
        if not pending or self.abandoned:
            return
        if self.client is None:
            for record in pending:
                self.fallback.append(record)
            return
        self.inflight = list(pending)
        try:
            send_metrics(self.client, self.run_id, pending)
        except Exception as exc:  # noqa: BLE001 - offline from now on; the batch goes to the JSONL
            with self.lock:
                if not self.abandoned:
                    self._go_offline(exc)
                    self._send_metrics(pending)
        finally:
            with self.lock:
                self.inflight = []

    def _call(self, record: Record) -> None:
        if self.abandoned:
            return
        if self.client is not None:
            self.inflight = [record]
            try:
                record.send(self.client, self.run_id)
                return
            except Exception as exc:  # noqa: BLE001 - offline from now on; the record goes to the JSONL
                with self.lock:
                    if self.abandoned:
                        return
                    self._go_offline(exc)
            finally:
                with self.lock:
                    self.inflight = []
        self.fallback.append(record)

    def _go_offline(self, exc: BaseException) -> None:
        self.client = None
        _warn_offline(self.rt.uri, exc, self.fallback.path)
