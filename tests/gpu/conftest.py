"""Fixtures of the GPU proof (`gpu`: the session's shared state; `record`: a test's figures for the table) and,
under `python -m benchmarks.gpu_check`, the hooks that write each test's outcome into the runner's records
file next to the figures (tests/gpu/support.py says what the runner hands over)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gpu import support


def _records() -> Path | None:
    path = support.runner_config().get("records")
    return Path(path) if path else None


def _write(**record: Any) -> None:
    path = _records()
    if path is not None:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="session")
def gpu(tmp_path_factory: pytest.TempPathFactory) -> support.GpuCheck:
    config = support.runner_config()
    work = Path(config["work"]) if "work" in config else tmp_path_factory.mktemp("gpu_check")
    check = support.GpuCheck(work, config)
    _write(kind="environment", device=check.device, versions=support.versions())  # the table's header
    return check


@pytest.fixture
def record(request: pytest.FixtureRequest) -> support.Recorder:
    return support.Recorder(_records(), request.node.nodeid)


@pytest.fixture(autouse=True)
def within_budget(request: pytest.FixtureRequest) -> None:
    """A test that does not ask the budget itself (through `gpu.need`) skips with under 30 s left."""
    config = support.runner_config()
    if "gpu" not in request.fixturenames and support.left_s(config) < 30:
        pytest.skip(
            f"out of time: {support.left_s(config):.0f} s left of the {config['budget_s']:.0f} s budget"
        )


def pytest_collection_finish(session: pytest.Session) -> None:
    # what was to run: a test without an outcome afterwards was cut off (pytest killed at the deadline)
    _write(kind="collected", tests=[item.nodeid for item in session.items])


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:  # a test file that does not import: its part is an error with pytest's last line
        lines = [ln.strip() for ln in str(report.longrepr).splitlines() if ln.strip()]
        _write(
            kind="outcome",
            test=report.nodeid,
            when="collect",
            outcome="failed",
            error=True,
            duration=0.0,
            reason=(lines[-1] if lines else "collection failed")[:400],
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if _records() is not None and (report.when == "call" or not report.passed):
        reason, error = "", False
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
        elif report.failed and call.excinfo is not None:
            reason = f"{call.excinfo.typename}: {call.excinfo.value}".strip().splitlines()[0][:400]
            # a missed bound (an assert) fails the part; anything else (a crash, a timeout, a broken
            # fixture) is an error
            error = report.when != "call" or not call.excinfo.errisinstance(AssertionError)
        _write(
            kind="outcome",
            test=report.nodeid,
            when=report.when,
            outcome=report.outcome,
            error=error,
            duration=report.duration,
            reason=reason,
        )
    return report
