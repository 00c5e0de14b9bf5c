"""Stopping early but resumable: a signal, or the launcher dying, ends the run at the end of the optimizer
step in flight, with a checkpoint of that step on every rank, and exit status `PREEMPTED_EXIT` (75).

SLURM sends SIGTERM at preemption and at the time limit (SIGKILL follows after its KillWait, 30 s by
default); the sbatch scripts ask for SIGUSR1 ahead of the limit (sweep/requeue.py). Which signals count is
`preempt.signals` (default SIGTERM and SIGUSR1).

The handlers only set a flag: a handler that saved would run inside whatever the main thread was doing,
e.g. the middle of a collective. The loop reads the flag once per step inside the step's own all-reduce
(`agree`: one more number in the same tensor, so no extra collective where the data-parallel group is the
whole world), so every rank learns "some rank was asked to stop" at the same step and all of them save
that step together: the ZeRO or Megatron shards of that checkpoint agree. Then metrics.jsonl is closed, the
MLflow run is ended KILLED (a `--resume auto` reopens the same run: RUNNING, then FINISHED at the end), the
ranks meet at a barrier (a launcher that sees one rank exit kills the others: none may still be writing)
and every rank exits 75 (EX_TEMPFAIL in sysexits.h: "try again"). DeepSpeed's launcher passes 75 on;
torchrun's agent reports a failed worker (1), so the SLURM scripts do not rely on the status.

Launchers: torchrun's agent and DeepSpeed's launch.py answer SIGTERM by sending it to the ranks and wait
30 s before SIGKILL: the step in flight and one checkpoint must fit in that. A launcher that dies without
passing anything on (kill -9 of torchrun's agent; SIGTERM to the `deepspeed` runner, which leaves its
launch.py and the ranks running) would leave the ranks training with nobody to stop them: `watch_launcher`
polls the parent (and, under DeepSpeed, the runner above launch.py) every second and stops the run the same
way; a rank that has still not exited `parallel.timeout_s` later (stuck where no step ends) exits at once.
Either way the checkpoint being written when a process is killed is a temp folder that the next resume
removes (engine/run_folder.py): the last complete checkpoint stays the one `latest` names.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

PREEMPTED_EXIT = 75


class Preempted(Exception):
    """The run stopped on request after saving; the CLI prints it (rank 0) and exits PREEMPTED_EXIT."""

    def __init__(self, message: str, rank: int):
        super().__init__(message)
        self.rank = rank


class Preemption:
    """`with Preemption(cfg.preempt.signals, timeout_s) as p:` handlers installed (main thread only),
    the launcher watched when there is one; both removed on exit."""

    def __init__(self, signals: Sequence[str], grace_s: float):
        self.signals = [signal.Signals[name] for name in signals]
        self.grace_s = grace_s
        self.reason = ""  # what asked for the stop ("" = nothing)
        self._old: dict[signal.Signals, Any] = {}
        self._done = threading.Event()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():  # Python only lets it set handlers
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._on_signal)
        if "RANK" in os.environ:  # started by a launcher (a plain process gets its RANK later, from us)
            watch_launcher(self, self._done, self.grace_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason

    def agree(self, backend: Any, values: Sequence[float]) -> tuple[list[float], bool]:
        """(`values` summed over the data-parallel ranks, whether any rank of the world was asked to stop):
        the step's own all-reduce carries the flag; with model parallelism (dp < world) a second one does."""
        flag = 1.0 if self.reason else 0.0
        if backend.dp_size == backend.world_size:
            *sums, stop = backend.dp_all_reduce_sum([*values, flag])
        else:
            sums = backend.dp_all_reduce_sum(values)
            (stop,) = backend.all_reduce_sum([flag])
        return sums, stop > 0

    def stop(self, step: int, checkpoint: Path | None, backend: Any, close: Callable[[], None]) -> Preempted:
        """After the checkpoint of `step` (collective): close metrics and tracking, meet the other ranks,
        and return the exception that ends the run."""
        close()
        backend.barrier()
        why = self.reason or "another rank was asked to stop"
        return Preempted(
            f"stopped at step {step} ({why}): checkpoint {checkpoint} saved; exit {PREEMPTED_EXIT}; "
            "rerun the same command with --resume auto to continue",
            backend.rank,
        )


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of `pid` from /proc (None: gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return fields[0], int(fields[1]), fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def launcher_chain() -> list[tuple[int, str]]:
    """The processes whose death orphans this rank: its parent and, when the parent is DeepSpeed's
    launch.py (which outlives its runner), the runner above it; each as (pid, start time)."""
    chain: list[tuple[int, str]] = []
    pid = os.getppid()
    while pid > 1 and len(chain) < 2:
        stat = _stat(pid)
        if stat is None:
            break
        chain.append((pid, stat[2]))
        if "deepspeed.launcher.launch" not in _cmdline(pid):
            break
        pid = stat[1]
    return chain


def _gone(pid: int, start: str) -> bool:
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X") or stat[2] != start  # dead, a zombie, or a reused pid


def watch_launcher(
    preemption: Preemption, done: threading.Event, grace_s: float, poll_s: float = 1.0
) -> None:
    """A daemon thread: once a process of `launcher_chain()` is gone, ask for the stop and, if the run has
    not ended `grace_s` later, exit at once."""
    chain = launcher_chain()
    if not chain or sys.platform != "linux":
        return
    parent = chain[0][0]
    rank = os.environ.get("RANK", "?")

    def watch() -> None:
        while not done.wait(poll_s):
            dead = [pid for pid, start in chain if _gone(pid, start)]
            if os.getppid() != parent or dead:
                break
        else:
            return
        who = dead[0] if dead else parent
        print(f"rank {rank}: launcher process {who} is gone; saving at the end of this step, then exiting",
              file=sys.stderr, flush=True)  # fmt: skip
        preemption.request(f"launcher process {who} gone")
        if not done.wait(grace_s):
            print(f"rank {rank}: still running {grace_s:g} s after the launcher died; exiting now",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
