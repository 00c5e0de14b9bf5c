"""Faults of launched runs, with real processes on 127.0.0.1: a launcher that dies leaves no rank running
(torchrun's agent kill -9'd; the `deepspeed` runner SIGTERM'd, which leaves its launch.py behind), each time
with a checkpoint of the step the ranks stopped at; a stalled (SIGSTOP) or dead (SIGKILL) rank ends the
other within `parallel.timeout_s` with one line naming it. The runs are long (400 steps): they never end on their own
before the fault; each check waits with a generous deadline for "did not exit", never for speed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_forget.net import free_port
from tests.conftest import REPO, group_gone, tiny_finetune_overrides
from tests.integration.launching import LAUNCHERS, launch_env

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "finetune" / "tiny.yaml"
LONG = ("schedule.steps=400", "checkpoint.every=0", "train.eval_every=0", "engine=deepspeed",
        "parallel.zero_stage=2", "train.micro_batch=1")  # fmt: skip
DEADLINE_S = 120  # for "did not exit": far above what any of these takes


def _argv(tiny_data, base_model: Path, out: Path, *extra: str) -> list[str]:  # noqa: ANN001
    return [
        "finetune",
        "--config",
        str(CONFIG),
        *tiny_finetune_overrides(tiny_data, base_model, out, *LONG, *extra),
    ]


def _wait_for_step(out: Path, step: int, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "the run ended before the fault"
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            lines = []
        if any('"kind": "train"' in ln and f'"step": {step},' in ln for ln in lines):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached")


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below `pid` (to follow them once they are re-parented)."""
    parent_of, start = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(stat.parent.name)], start[int(stat.parent.name)] = int(fields[1]), fields[19]
    found, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in found:
                found[child] = start[child]
                frontier.append(child)
    return found


def _all_exited(procs: dict[int, str], deadline_s: float) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        alive = []
        for pid, start in procs.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[19] == start and fields[0] not in ("Z", "X"):
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _stopped_at(text: str) -> int:
    (step,) = re.findall(r"stopped at step (\d+) \(", text)
    return int(step)


@pytest.mark.parametrize("launcher", ["torchrun-kill-9", "deepspeed-sigterm"])
def test_ranks_stop_with_a_checkpoint_when_their_launcher_dies(
    launcher: str,
    tiny_data,
    base_model,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    out, log = tmp_path / "run", tmp_path / "run.log"
    if launcher.startswith("torchrun"):
        script, env = "torchrun.sh", launch_env(NPROC="2", RDZV_ENDPOINT=f"127.0.0.1:{free_port()}",
                                                RDZV_ID=f"faults-{os.getpid()}")  # fmt: skip
    else:
        script, env = "deepspeed.sh", launch_env(NPROC="2", MASTER_PORT=str(free_port()))
    with open(log, "wb") as sink:
        proc = subprocess.Popen([str(LAUNCHERS / script), *_argv(tiny_data, base_model, out)], cwd=REPO, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for_step(out, 2, [proc])
        below = _descendants(proc.pid)  # launch.py and the ranks, or the ranks
        assert len(below) >= 2, below
        os.kill(proc.pid, signal.SIGKILL if launcher.startswith("torchrun") else signal.SIGTERM)
        proc.wait()
        assert _all_exited(below, DEADLINE_S), f"ranks still running {DEADLINE_S} s after the launcher died"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if not group_gone(proc.pid, 0.1) else None
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
    text = log.read_text()
    assert "is gone; saving at the end of this step" in text, text[-3000:]
    step = _stopped_at(text)
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step-{step:08d}"
    meta = json.loads((out / "checkpoints" / f"step-{step:08d}" / "meta.json").read_text())
    assert meta["world_size"] == 2


@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_a_stalled_or_dead_rank_ends_the_other_within_the_timeout_naming_it(
    fault: str, tiny_data, base_model, tmp_path: Path
) -> None:  # noqa: ANN001
    """SIGSTOP (stalled) or SIGKILL (dead) on rank 1 of 2 (no launcher: the ranks as a launcher starts them):
    rank 0's next collective gives up (after parallel.timeout_s = 10 s, or at once on the lost connection)
    and rank 0 exits 2 with one line naming rank 1, not gloo's traceback."""
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "dist_forget.cli",
        *_argv(tiny_data, base_model, out, "parallel.timeout_s=10"),
    ]
    base = launch_env(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2"
    )
    procs = [subprocess.Popen(argv, cwd=REPO, env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
             for r in (0, 1)]  # fmt: skip
    try:
        _wait_for_step(out, 2, procs)
        os.kill(procs[1].pid, getattr(signal, fault))
        _, err = procs[0].communicate(timeout=DEADLINE_S)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert procs[0].returncode == 2, err.decode()[-3000:]
    lines = [ln for ln in err.decode().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err.decode(), err.decode()[-3000:]
    assert "rank 0 of 2" in lines[0] and "rank 1 stalled or died first" in lines[0], lines[0]
    assert "parallel.timeout_s = 10 s" in lines[0]
