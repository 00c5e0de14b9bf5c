"""One writer per run folder: `out_dir/run.lock`, held by rank 0 for the life of a run.

A second run into the same out_dir (a double submission, a requeued job while the old ranks linger, a
second `--resume auto` by hand) is refused in one line naming the holder; a lock whose holder is gone is
taken over with a line saying so. Rank 0 takes it before anything in out_dir is touched and removes it when
the run ends, also on an error (a killed run leaves it: the next run finds it stale).

The file holds JSON written once at creation: host, pid, the pid namespace and boot id (what makes a pid
mean a process on this machine), the process start time (what tells a reused pid apart) and the start
time. The heartbeat is the file's mtime, touched every `HEARTBEAT_S` by a daemon thread through the open
descriptor, so it never touches a file that replaced this one.

Stale (taken over):
- held on this machine (same host, pid namespace and boot): its pid is gone or now names another process.
  A live pid is never stale, stopped (SIGSTOP) or not: it may resume writing;
- held elsewhere (another host, container or boot): no heartbeat for `STALE_S` seconds. A lock from
  elsewhere whose heartbeat is late (`LATE_S`) but not yet stale is waited for, not refused: a job requeued
  on another node seconds after its predecessor was killed finds its lock so.

A takeover renames the stale file aside and checks it moved the very file it judged stale (same inode) before
creating its own, so two contenders never both hold the lock. The holder checks at every checkpoint that the
path still names its file (`check`): a holder taken over (frozen past `STALE_S` on another host) stops at its
next save instead of writing beside the new one.

What is assumed of a shared filesystem (NFSv3+, Lustre, GPFS, ...) holding out_dir: O_CREAT|O_EXCL
creation and rename are atomic across hosts; close-to-open consistency (the holder's age is read with
fstat on a fresh open, never from a cached stat); stable inode numbers; touching a file without times
stores the file server's clock; and the hosts' clocks agree with the server's to well within `STALE_S`
(NTP). A filesystem without these (an object-store mount) cannot keep two writers apart.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError

LOCK = "run.lock"
HEARTBEAT_S = 5.0  # how often the holder touches the lock
STALE_S = 60.0  # a lock from another host untouched this long belongs to a dead run
LATE_S = 3 * HEARTBEAT_S  # three missed heartbeats: late (waited for), not yet stale


def _proc_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name before ")" may hold spaces


def _text(read: Callable[[], str]) -> str:
    try:
        return read().strip()
    except OSError:
        return ""  # not Linux: the host name alone says "this machine"


def identity() -> dict[str, Any]:
    """Who takes the lock: what the file records."""
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_ns": _text(lambda: os.readlink("/proc/self/ns/pid")),
        "boot_id": _text(lambda: Path("/proc/sys/kernel/random/boot_id").read_text()),
        "proc_start": _proc_start(os.getpid()),
        "started": datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "started_s": now,
    }


@dataclass
class Holder:
    info: dict[str, Any]  # the JSON (empty while its writer is between create and write)
    inode: int
    age_s: float  # seconds since the last heartbeat

    def describe(self) -> str:
        i = self.info
        who = f"host {i.get('host', '?')} pid {i.get('pid', '?')} since {i.get('started', '?')}"
        return f"{who} (last heartbeat {self.age_s:.0f} s ago)"


def read_holder(path: Path) -> Holder | None:
    """The lock's holder as a fresh open sees it (close-to-open: no cached attributes); None if no lock."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            raw = fh.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        info = {}
    return Holder(info if isinstance(info, dict) else {}, st.st_ino, time.time() - st.st_mtime)


def _here(holder: Holder, me: dict[str, Any]) -> bool:
    """Whether `holder`'s pid names a process of this machine (same host, pid namespace and boot)."""
    return bool(holder.info) and all(holder.info.get(k) == me[k] for k in ("host", "pid_ns", "boot_id"))


def late(holder: Holder, me: dict[str, Any]) -> bool:
    """A holder elsewhere that missed its last heartbeats: dead or stalled, not yet stale. A job requeued on
    another node seconds after its predecessor was killed meets such a lock: it waits for the verdict."""
    return not _here(holder, me) and LATE_S < holder.age_s < STALE_S


def stale_reason(holder: Holder, me: dict[str, Any]) -> str | None:
    """Why `holder` no longer holds the lock, or None while it may still write."""
    i = holder.info
    if _here(holder, me):
        pid = int(i["pid"])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"its process {pid} on this host is gone"
        except PermissionError:
            pass  # another user's live process
        start = _proc_start(pid)
        if i.get("proc_start") is not None and start is not None and start != i["proc_start"]:
            return f"pid {pid} on this host is another process now"
        return None
    if holder.age_s >= STALE_S:
        return f"no heartbeat for {holder.age_s:.0f} s (> {STALE_S:.0f} s)"
    return None


class RunLock:
    """out_dir's lock; `acquire` on rank 0 only (every method is a no-op on a lock not acquired)."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, say: Callable[[str], Any] = print) -> None:
        """Take the lock or raise a one-line UserError naming who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me, races, waiting = identity(), 0, False
        while races < 5:  # a pass ends in our lock, a refusal, a wait, or a race lost to another taker
            try:
                # readable by all: another user's run into this folder must be able to name the holder
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None:
                    races += 1  # released between our create and our read
                    continue
                why = stale_reason(holder, me)
                if why is None and late(holder, me):
                    if not waiting:
                        say(f"run lock: {self.path} is held by {holder.describe()}; waiting up to "
                            f"{STALE_S - holder.age_s:.0f} s for its next heartbeat or its end")  # fmt: skip
                    waiting = True
                    time.sleep(HEARTBEAT_S)
                    continue
                if why is None:
                    raise UserError(
                        f"out_dir {self.path.parent} is in use by another run: {self.path} is held by "
                        f"{holder.describe()}; wait for that run to end or stop it, or use another out_dir "
                        "(a lock whose run is gone is taken over by the next run)"
                    ) from None
                if _take_over(self.path, holder.inode):
                    say(f"run lock: took over {self.path} from {holder.describe()}: {why}")
                races += 1
                continue
            try:
                os.write(fd, (json.dumps(me) + "\n").encode())
                os.fsync(fd)
            except OSError:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                raise
            self.fd = fd
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise UserError(
            f"{self.path}: other runs keep taking this out_dir's lock; make sure one run at a time uses it"
        )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.fd)  # type: ignore[arg-type]  # no times: the file server's clock
            except OSError:
                return  # the file went away (taken over): `check` reports it at the next save

    def check(self) -> None:
        """Raise a one-line UserError if this run no longer holds the lock (another run took it over)."""
        if self.fd is None:
            return
        holder = read_holder(self.path)
        if holder is not None and holder.inode == os.fstat(self.fd).st_ino:
            return
        now = f"now held by {holder.describe()}" if holder else "now removed"
        raise UserError(
            f"{self.path}: this run lost its out_dir lock ({now}); it stops here so that two runs never "
            "write one out_dir; continue with --resume auto once the other run has ended"
        )

    def release(self) -> None:
        """Remove the lock if it is still ours. Never raises: it runs while the run ends, also on errors."""
        if self.fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_S)
        try:
            holder = read_holder(self.path)
            if holder is not None and holder.inode == os.fstat(self.fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def _take_over(path: Path, stale_inode: int) -> bool:
    """Remove the stale lock `stale_inode`, unless another taker replaced it first; True if removed."""
    aside = path.with_name(f"{LOCK}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another taker moved it first
    try:
        if os.stat(aside).st_ino != stale_inode:  # we moved a fresh lock another taker just made: put it back
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # a third one was faster; theirs stands, and the owner of this one loses it (`check`)
            return False
        return True
    finally:
        aside.unlink(missing_ok=True)
