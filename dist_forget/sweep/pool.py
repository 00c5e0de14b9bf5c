"""Run sweep points as subprocesses on this machine, up to `max_parallel` at once, resumably.

- A point whose summary.json exists is finished and never run again.
- Each running point holds an exclusive `flock` on `<out_dir>/.sweep.lock`; the lock's file descriptor
  is inherited by the run's process, so if the sweep itself is killed the orphaned run keeps the lock
  and a restarted sweep waits for it instead of starting a second writer on the same folder.
- A point starts once the point it needs (its pretrained model) is finished; when that failed, it is
  skipped. Runs are resumed with the engine's `--resume auto` (in the command the grid built).
"""

from __future__ import annotations

import fcntl
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dist_forget.io import write_json_atomic
from dist_forget.sweep.grid import Point

LOCK_NAME = ".sweep.lock"
LOG_NAME = "sweep.log"
ATTEMPT_HEADER = "=== "  # heads each attempt's output in the log: `=== <time> <command>`


def try_lock(point: Point) -> IO[str] | None:
    """An exclusive lock on the point's folder, or None when another process holds it."""
    Path(point.out_dir).mkdir(parents=True, exist_ok=True)
    fh = open(Path(point.out_dir) / LOCK_NAME, "a+")  # noqa: SIM115 - held for the run's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def start(point: Point, env: dict[str, str], lock: IO[str]) -> subprocess.Popen[bytes]:
    """Start the point's command, output appended to `<out_dir>/sweep.log`, holding `lock`."""
    out = Path(point.out_dir)
    write_json_atomic(out / "sweep_point.json", point.to_dict())
    with open(out / LOG_NAME, "ab") as log:
        log.write(f"\n{ATTEMPT_HEADER}{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(point.argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            point.argv, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=(lock.fileno(),)
        )


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)  # ran to completion in this invocation
    already: list[str] = field(default_factory=list)  # finished before this invocation
    failed: dict[str, str] = field(default_factory=dict)  # name → why

    @property
    def ok(self) -> bool:
        return not self.failed


class LocalPool:
    def __init__(
        self,
        points: list[Point],
        max_parallel: int,
        env: dict[str, str],
        say: Callable[[str], None] = print,
        on_event: Callable[[Outcome, int], None] | None = None,
        poll_s: float = 0.5,
        heartbeat_s: float = 30.0,
    ):
        self.points = points
        self.max_parallel = max(1, max_parallel)
        self.env = env
        self.say = say
        self.on_event = on_event or (lambda outcome, running: None)
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s

    def run(self) -> Outcome:
        outcome = Outcome()
        by_name = {p.name: p for p in self.points}
        pending: list[Point] = []
        for p in self.points:
            if p.done():
                outcome.already.append(p.name)
            else:
                pending.append(p)
        total = len(self.points)
        self.say(f"sweep: {total} runs, {len(outcome.already)} already finished, {len(pending)} to run, "
                 f"{self.max_parallel} at a time")  # fmt: skip
        running: dict[str, tuple[subprocess.Popen[bytes], IO[str], float]] = {}
        waiting_on_lock: set[str] = set()
        durations: list[float] = []
        last_beat = time.monotonic()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            while pending or running:
                for p in list(pending):
                    if len(running) >= self.max_parallel:
                        break
                    if p.needs and p.needs in outcome.failed:
                        pending.remove(p)
                        outcome.failed[p.name] = f"skipped: {p.needs} failed"
                        continue
                    if p.needs and not by_name[p.needs].done():
                        continue
                    lock = try_lock(p)
                    if lock is None:
                        if p.name not in waiting_on_lock:
                            self.say(f"{p.name}: still running from an earlier sweep; waiting for it")
                            waiting_on_lock.add(p.name)
                        continue
                    pending.remove(p)
                    if p.done():  # finished by that earlier sweep's orphan meanwhile
                        lock.close()
                        outcome.already.append(p.name)
                        continue
                    running[p.name] = (start(p, self.env, lock), lock, time.monotonic())
                    self.say(f"start  {p.name} ({p.stage})")
                    self.on_event(outcome, len(running))
                ended = [n for n, (proc, _, _) in running.items() if proc.poll() is not None]
                if not ended:
                    if running and time.monotonic() - last_beat >= self.heartbeat_s:
                        # a long run is otherwise silent here: show where each one is
                        for name in running:
                            self.say(f"  ... {name}: {_last_progress(by_name[name])}")
                        last_beat = time.monotonic()
                    time.sleep(self.poll_s)
                    continue
                for name in ended:
                    proc, lock, t0 = running.pop(name)
                    lock.close()
                    took = time.monotonic() - t0
                    point = by_name[name]
                    if proc.returncode == 0 and point.done():
                        outcome.finished.append(name)
                        durations.append(took)
                    else:
                        why = f"exit {proc.returncode}" if proc.returncode else "no summary.json written"
                        outcome.failed[name] = f"{why}; see {Path(point.out_dir) / LOG_NAME}"
                    done = len(outcome.finished) + len(outcome.already)
                    left = total - done - len(outcome.failed)
                    eta = (
                        sum(durations) / len(durations) * left / self.max_parallel
                        if durations
                        else float("nan")
                    )
                    status = "done  " if name in outcome.finished else "FAILED"
                    self.say(f"{status} {name} in {took:.0f} s | {done}/{total} finished, {len(running)} running, "
                             f"{len(outcome.failed)} failed | ETA {eta_text(eta)}")  # fmt: skip
                    self.on_event(outcome, len(running))
        except KeyboardInterrupt:
            self.say(f"sweep interrupted: stopping {len(running)} runs (rerun the same command to continue)")
            for proc, _, _ in running.values():
                proc.terminate()
            for proc, lock, _ in running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                lock.close()
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
        return outcome


def _last_progress(point: Point) -> str:
    """The run's latest progress line ("step 40/200 | loss ... | ETA ..."), from the tail of its log.

    Only the current attempt's lines count: a resumed run's log still ends with the killed attempt's last
    step (its ETA from before the kill) until the new attempt prints its first one.
    """
    log = Path(point.out_dir) / LOG_NAME
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - 4096))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return "starting"
    starts = [i for i, ln in enumerate(lines) if ln.startswith(ATTEMPT_HEADER)]
    if starts:
        lines = lines[starts[-1] + 1 :]
    steps = [ln for ln in lines if ln.startswith(("step ", "eval "))]
    return steps[-1].strip() if steps else "starting"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def eta_text(seconds: float) -> str:
    """Seconds as 1h05m or 4m10s; "?" for nan (nothing finished yet to estimate from)."""
    if seconds != seconds:  # nan: nothing finished yet
        return "?"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"
