"""MLflow's own system-metrics monitor (CPU, memory, disk, network, GPU) on a run, started and stopped
around training; its cost is measured in benchmarks/bench_tracking.py."""

from __future__ import annotations

import warnings
from typing import Any

from dist_forget.redact import scrub
from dist_forget.tracking.config import ResolvedTracking


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
