"""Shared fixtures for integration tests: one real `mlflow server` and one real SLURM cluster per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dist_forget.sweep import slurm_cluster
from dist_forget.tracking.server import LocalServer


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A live server on 127.0.0.1 (sqlite backend, proxied artifacts) in its own process group."""
    with LocalServer(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.LocalSlurm]:
    """A SLURM cluster on loopback (2 nodes, slurmctld + 2 slurmd + munged of its own): slurm-wlm and munge are
    installed with apt-get when missing; skipped, with the reason, only where that cannot be done (not root,
    no apt-get). Its daemons are stopped by PID at the end of the session."""
    why = slurm_cluster.why_unavailable()
    if why:
        pytest.skip(f"no SLURM cluster: {why}")
    with slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster
