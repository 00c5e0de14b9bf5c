"""One run folder: one writer, one lineage, one config, and a full disk said in one line.

- the run lock: a real second `finetune --resume auto` into a live run's out_dir is refused in one line and
  the first run ends exactly as an undisturbed one; locks of dead or reused pids, and silent ones from
  another host, are taken over, live ones refused, and a holder taken over stops at its next save;
- a resume from an earlier checkpoint starts a branch: what came after it is moved aside, and retention,
  `latest`, `best`, summary.json and a later --resume auto follow the branch (the issue's scenario in 8 steps);
- a resume with a changed setting that changes the result (optim.lr, train.eval_every) is refused in one line
  listing each; one that does not (checkpoint.keep) is accepted and recorded in report.json;
- a full disk (a real 4 MiB tmpfs, filled from the test at a chosen moment) during a checkpoint, an HF
  export or a metrics line ends in one line naming the path and "no space left on device"; the last
  checkpoint resumes to the undisturbed run's result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dist_forget import cli
from dist_forget.engine import run_lock
from dist_forget.engine import summary as summary_module
from dist_forget.engine.metrics_log import MetricsLog, StepCost
from dist_forget.engine.run_folder import CheckpointManager
from dist_forget.engine.saving import Saver
from dist_forget.engine.trainer import train
from dist_forget.errors import UserError
from dist_forget.io import write_text_atomic
from dist_forget.schema import read_metrics
from tests.conftest import REPO, sigkill_after_step, tiny_finetune_overrides, tmpfs
from tests.unit.test_engine_trainer import CONFIG, _cfg, _losses

pytestmark = pytest.mark.usefixtures("one_thread")
EIGHT = ("schedule.steps=8", "checkpoint.keep=10")  # checkpoints at 2, 4, 6 and 8, all kept


def _argv(tiny_data, base_model, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--config", str(CONFIG), *tiny_finetune_overrides(tiny_data, base_model, out, *extra)]


def _same_summary(out: Path, want: dict) -> bool:
    """summary.json of `out` is `want` (another folder's), but for the run id, which names the folder."""
    have = json.loads((out / "summary.json").read_text())
    return {**have, "run_id": None} == {**want, "run_id": None} and have["run_id"].startswith("local:")


@pytest.fixture(scope="module")
def four(tiny_data, base_model, tmp_path_factory) -> tuple[Path, dict]:
    """The undisturbed 4-step run the interrupted ones must end as."""
    out = tmp_path_factory.mktemp("four") / "run"
    return out, train(_cfg(tiny_data, base_model, out), "finetune")


@pytest.fixture(scope="module")
def eight(tiny_data, base_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eight") / "run"
    return out, train(_cfg(tiny_data, base_model, out, *EIGHT), "finetune")


# ------------------------------------------------------------------------------------------- the run lock


@pytest.mark.slow
def test_a_second_run_into_a_live_out_dir_is_refused_and_the_first_ends_intact(
    tiny_data, base_model, four, tmp_path
):
    """The first run is stopped (SIGSTOP) after its first step, so it is alive and holds the lock while a
    second process, with another lr, tries the same out_dir; then it is continued and ends normally."""
    out = tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "dist_forget.cli", *_argv(tiny_data, base_model, out)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while first.poll() is None and time.monotonic() < deadline:
            if (out / "metrics.jsonl").is_file() and any(
                r["kind"] == "train" for r in _complete_records(out / "metrics.jsonl")
            ):
                break
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "the first run ended before it could be stopped"
        second = subprocess.run(
            [sys.executable, "-m", "dist_forget.cli", *_argv(tiny_data, base_model, out, "optim.lr=0.5"),
             "--resume", "auto"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGCONT)
            first.kill()
            first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert f"{out / 'run.lock'} is held by host {socket.gethostname()} pid {first.pid} since" in line, line
    assert "is in use by another run" in line and "heartbeat" in line and "another out_dir" in line
    # the first run ended as if alone: its losses, its row, its config; and its lock is gone
    assert _losses(out) == _losses(four[0]) and _same_summary(out, four[1])
    assert json.loads((out / "run_config.json").read_text())["optim"]["lr"] == 1e-3
    assert not (out / "run.lock").exists()


def _complete_records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(ln) for ln in lines[:-1]]  # the last line may be the one being written


def _lock_file(path: Path, **info) -> None:
    write_text_atomic(path, json.dumps({**run_lock.identity(), **info}) + "\n")


def test_stale_locks_are_taken_over_live_ones_refused_and_a_lost_lock_stops_the_holder(tmp_path, monkeypatch):
    said: list[str] = []
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / run_lock.LOCK
    stale = {
        "is gone": {"pid": dead.pid},  # this host, the process exited (kill -9, a crash)
        "another process now": {"proc_start": -1},  # this host, our pid but not our start time: reused
        "no heartbeat for": {"host": "node-b", "pid": 1},  # another host, silent for an hour
    }
    for why, info in stale.items():
        _lock_file(path, **info)
        old = time.time() - 3600
        os.utime(path, (old, old))
        lock = run_lock.RunLock(tmp_path)
        lock.acquire(say=said.append)
        assert why in said[-1] and said[-1].startswith(f"run lock: took over {path} from host"), said[-1]
        lock.check()  # ours now
        lock.release()
        assert not path.exists()
    live = {"pid": os.getpid()}, {"host": "node-b", "pid": 1}  # a live pid here; a fresh heartbeat elsewhere
    for info in live:
        _lock_file(path, **info)
        with pytest.raises(UserError, match="is in use by another run") as exc:
            run_lock.RunLock(tmp_path).acquire(say=said.append)
        assert f"host {info.get('host', socket.gethostname())} pid {info['pid']}" in str(exc.value)
        path.unlink()
    _late_locks_elsewhere_are_waited_for(path, monkeypatch, said)
    # a holder frozen past the timeout is taken over elsewhere: it finds out at its next save and stops
    lock = run_lock.RunLock(tmp_path)
    lock.acquire()
    path.unlink()
    _lock_file(path, host="node-b", pid=1)
    with pytest.raises(UserError, match="lost its out_dir lock .now held by host node-b pid 1"):
        lock.check()
    lock.release()
    assert path.exists()  # the new holder's lock is left alone


def _beat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(0.05):
        os.utime(path)


def _late_locks_elsewhere_are_waited_for(path: Path, monkeypatch, said: list[str]) -> None:
    """A lock from another host that missed heartbeats but is not stale yet (a job requeued on another node
    right after its predecessor was killed) is waited for: taken over once stale, refused if it beats again.
    The timescales shrink (heartbeat 0.05 s, stale after 5 s); the outcome, not the time, is asserted."""
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(run_lock, "LATE_S", 0.15)
    monkeypatch.setattr(run_lock, "STALE_S", 5.0)
    for beats_again in (False, True):
        _lock_file(path, host="node-b", pid=1)
        old = time.time() - 1.0
        os.utime(path, (old, old))
        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(path, stop))  # the holder comes back to life
        if beats_again:
            beat.start()
        lock = run_lock.RunLock(path.parent)
        try:
            if beats_again:
                with pytest.raises(UserError, match="is in use by another run"):
                    lock.acquire(say=said.append)
            else:
                lock.acquire(say=said.append)
                assert "no heartbeat for" in said[-1]
        finally:
            stop.set()
            if beats_again:
                beat.join()
            lock.release()
        assert "waiting up to" in said[-1 if beats_again else -2]
        path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- one lineage


@pytest.mark.slow
def test_a_resume_from_an_earlier_checkpoint_starts_a_branch(tiny_data, base_model, eight, tmp_path, capsys):
    """The issue's scenario in 8 steps: a run that reached step 8 is resumed from its step 2 (with keep=2,
    a setting a resume may change) and killed (SIGKILL) after step 5. The checkpoints 4, 6, 8 and what that
    branch reported went aside; the branch's own step-4 checkpoint survives retention (by step, the old 6
    and 8 would have counted as the newest); --resume auto continues at that 4, not the abandoned 8, takes
    over the killed run's lock, and ends exactly as the uninterrupted run."""
    full, summary = eight
    out = tmp_path / "run"
    shutil.copytree(full, out)
    ckpts = out / "checkpoints"
    metrics = (
        out / "metrics.jsonl"
    )  # what the resume keeps anyway; else the watcher below sees the old step 5
    write_text_atomic(metrics, "".join(json.dumps(r) + "\n" for r in read_metrics(metrics, until_step=2)))
    argv = _argv(tiny_data, base_model, out, *EIGHT, "checkpoint.keep=2")
    sigkill_after_step([*argv, "--resume", str(ckpts / "step-00000002")], out, 5)

    (aside,) = ckpts.glob("abandoned-*")
    assert sorted(p.name for p in aside.iterdir()) == [
        "best",  # the old branch's best/ export, of its step 8
        "loss_curves.png",
        "model",
        "report.json",
        "step-00000004",
        "step-00000006",
        "step-00000008",
        "summary.json",
    ]
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000002", "step-00000004"]
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    pointer = ckpts / "best"  # where the folder keeps one: never into the abandoned branch
    assert not pointer.exists() or (ckpts / pointer.read_text().strip()).is_dir()
    assert (out / "best" / "config.json").is_file()  # the branch's own best (step 4), exported by it
    assert not (out / "summary.json").exists()  # the abandoned branch's row is not reported

    train(_cfg(tiny_data, base_model, out, *EIGHT, "checkpoint.keep=2"), "finetune", resume="auto")
    said = capsys.readouterr().out
    assert "run lock: took over" in said and "on this host is gone" in said  # the killed run's lock
    assert f"resumed from {ckpts / 'step-00000004'} at step 4" in said
    assert _losses(out) == _losses(full) and _same_summary(out, summary)
    report = json.loads((out / "report.json").read_text())
    changes = {c["key"]: (c["step"], c["old"], c["new"]) for c in report["config_changes"]}
    assert changes == {"checkpoint.keep": (2, 10, 2), "out_dir": (2, str(full), str(out))}  # a copied folder
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000006", "step-00000008"]
    assert not (out / "run.lock").exists()


# ------------------------------------------------------------------------------------------- one config


def test_a_resume_with_changed_settings_is_refused_in_one_line(tiny_data, base_model, four, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(four[0], out)
    before = (out / "run_config.json").read_text()
    changed = ("optim.lr=0.002", "train.eval_every=1", "checkpoint.keep=5")
    assert cli.main([*_argv(tiny_data, base_model, out, *changed), "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: checkpoint ") and "other settings" in err
    assert "optim.lr 0.001 -> 0.002" in err and "train.eval_every 2 -> 1" in err, err
    assert "checkpoint.keep" not in err and "start a new out_dir" in err  # keep may change
    assert (out / "run_config.json").read_text() == before  # never the config of a run that did not happen
    assert not (out / "run.lock").exists()


# ---------------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs: a run's outputs (about 2 MiB) fit; filled from the test at a chosen moment."""
    with tmpfs(tmp_path / "disk", "size=4m,mode=0700") as disk:
        yield disk


def _fill(disk: Path, leave: int) -> None:
    """Take all of `disk`'s free space but `leave` bytes."""
    st = os.statvfs(disk)
    with open(disk / "filler", "ab") as fh:
        fh.write(b"\0" * max(st.f_bavail * st.f_frsize - leave, 0))


# where: (class or module, function, when it is the call that meets the full disk, bytes left, the path in
# the line, the checkpoint `latest` still names)
FULL_DISK = {
    "checkpoint": (CheckpointManager, "save", lambda a: a[1] == 4, 200_000, "checkpoints/step-00000004", 2),
    "export": (Saver, "export", lambda a: a[1] == "model", 50_000, "model", 4),
    "summary": (
        summary_module,
        "write_json_atomic",
        lambda a: a[0].name == "summary.json",
        0,
        "summary.json",
        4,
    ),
}


@pytest.mark.parametrize("where", list(FULL_DISK))
def test_a_full_disk_ends_in_one_line_and_the_last_checkpoint_resumes(
    where, small_disk, tiny_data, base_model, four, monkeypatch, capsys
):
    cls, name, due, leave, path, latest = FULL_DISK[where]
    real = getattr(cls, name)

    def on_a_full_disk(*args, **kwargs):  # the disk fills up just before this call (the call is real)
        if due(args) and not (small_disk / "filler").exists():
            _fill(small_disk, leave)
        return real(*args, **kwargs)

    out = small_disk / "run"
    monkeypatch.setattr(cls, name, on_a_full_disk)
    assert cli.main(_argv(tiny_data, base_model, out)) == 2
    monkeypatch.setattr(cls, name, real)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out / path) in err and "no space left on device" in err, err
    assert "enforce fail" not in err and "--resume auto" in err
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step-{latest:08d}"
    assert not [p.name for p in ckpts.iterdir() if p.name.startswith(".")]  # no temp tag, no pointer temp
    assert not (out / "run.lock").exists()
    (small_disk / "filler").unlink()
    train(_cfg(tiny_data, base_model, out), "finetune", resume="auto")
    assert _losses(out) == _losses(four[0]) and _same_summary(out, four[1])
    assert (out / "model" / "config.json").is_file() and (out / "best" / "config.json").is_file()


def test_a_metrics_line_on_a_full_disk_names_the_file(small_disk, capsys):
    """metrics.jsonl stays open for the whole run: a line that needs a new page of a full disk fails in
    write() itself, which names no file; the log names it (and the CLI turns it into its one line)."""
    from dist_forget.engine.run_state import RunState
    from dist_forget.tracking import Tracker

    path = small_disk / "metrics.jsonl"
    log = MetricsLog(path, 0, None, Tracker.inactive(), StepCost(100, 256, 1e6, 1e11), print)
    _fill(small_disk, 0)
    state = RunState(sequences=4)
    with pytest.raises(OSError) as exc:
        for step in range(1, 100):  # a page (4 KiB) holds about 15 of these lines
            state.step = step
            log.train_step(state, 6.0, 1e-3, 1.0, 0.1, 0.1, 0.0, 4.0, 0.0)
    assert exc.value.filename == str(path) and "No space left on device" in str(exc.value)
    log.close()  # what it still held cannot be written either: closing says nothing more
