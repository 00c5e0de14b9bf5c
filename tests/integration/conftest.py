"""Shared fixtures for integration tests: one real `mlflow server` per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dist_forget.tracking.server import LocalServer


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A live server on 127.0.0.1 (sqlite backend, proxied artifacts) in its own process group."""
    with LocalServer(tmp_path_factory.mktemp("mlflow_server")) as server:
        yield server
