"""A throwaway SLURM cluster on loopback: for the tests and for trying `--backend slurm` on one machine.

Debian's `slurm-wlm` and `munge` (installed here with apt-get when missing and we are root), one `munged`,
one `slurmctld` and `nodes` `slurmd`, all in a folder of ours: its own munge key and socket, state, spool,
logs, free ports, so nothing of the machine's own SLURM or munge is touched and two clusters can run side
by side. The nodes are named n1, n2, ... and all have NodeAddr 127.0.0.1 (several slurmd on one host),
each with its share of the CPUs, so a `--nodes=2` job really is two SLURM nodes. Clients find the cluster
through `SLURM_CONF` (see `env()`). There is no accounting (`sacct`): what ran is read from `squeue` while
a job is listed, and from the files the jobs write.

`LocalSlurm(folder).start()` returns once every node is idle; `stop()` cancels what is still queued and
ends exactly the daemons it started, by PID (recorded in `cluster.json`, so another process, e.g.
`make slurm-down`, can stop a cluster that `make slurm-up` started).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic, write_text_atomic
from dist_forget.net import free_port

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
CRED_EXPIRE_S = 20  # a requeued job's hold on this cluster (see _write_config)
STATE = "cluster.json"
PARTITION = "debug"
_INSTALL_LOCK = "dist-forget-slurm-install.lock"
_SBIN = os.pathsep.join(["/usr/sbin", "/sbin"])  # where Debian puts the daemons (not on a user's PATH)


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), _SBIN]))


def missing() -> list[str]:
    """The SLURM and munge programs this machine lacks."""
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def why_unavailable() -> str | None:
    """None when a cluster can be started here (installing the packages first if need be); else why not."""
    if os.geteuid() != 0:  # slurmd starts each job as its user, and apt-get installs as root
        return "a local SLURM cluster runs as root (slurmd, apt-get); this process is not root"
    if missing() and shutil.which("apt-get") is None:
        return f"{' '.join(missing())} not installed and there is no apt-get to install {' '.join(PACKAGES)}"
    return None


def ensure_installed(say: Callable[[str], None] = print) -> None:
    """Install slurm-wlm and munge with apt-get when missing (as root); UserError when that fails.

    Several processes may start a cluster at once (the tests' xdist workers): one installs while the others
    wait on a lock, then find the programs there. (apt-get itself would fail at once on dpkg's lock.)"""
    if not missing():
        return
    # O_NOFOLLOW, no truncation: root opening a fixed name in a shared temp folder must not follow a link
    lock = os.open(Path(tempfile.gettempdir()) / _INSTALL_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if missing():
            _apt_install(say)
    finally:
        os.close(lock)  # releases the lock


def _apt_install(say: Callable[[str], None]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Debian's slurm-wlm and munge packages are all a one-machine cluster needs
    install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    say(f"installing {' '.join(PACKAGES)} (apt-get)")
    res = subprocess.run(install, env=env, capture_output=True, text=True)
    if res.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        res = subprocess.run(install, env=env, capture_output=True, text=True)
    if res.returncode != 0 or missing():
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"local SLURM cluster: apt-get install {' '.join(PACKAGES)} failed ({last})")


def _alive(pid: int, marker: str) -> bool:
    """Whether `pid` is still the daemon we started (its command line names our folder), not a reused PID."""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class LocalSlurm:
    """`with LocalSlurm(folder) as cluster:` → sbatch/squeue work with `cluster.env()`."""

    def __init__(self, folder: str | Path, nodes: int = 2, start_timeout_s: float = 60.0):
        self.folder = Path(folder).resolve()
        self.nodes = nodes
        self.start_timeout_s = start_timeout_s
        self.conf = self.folder / "slurm.conf"
        self.pids: dict[str, int] = {}

    # -- what clients need ------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment for sbatch/squeue/...: this process's, pointed at this cluster."""
        path = os.pathsep.join([os.environ.get("PATH", ""), _SBIN])
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    # -- start ------------------------------------------------------------------------------------------
    def _write_config(self) -> None:
        f = self.folder
        for sub in ("state", "log", "spool"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        munge = f / "munge"
        munge.mkdir(exist_ok=True)
        munge.chmod(0o700)  # munged refuses a key or socket in a folder others may write to
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
            key.chmod(0o400)
        # the CPUs this process may use (a container's cpuset, not the host's count): never more than slurmd finds
        cpus = max(1, len(os.sched_getaffinity(0)) // self.nodes)
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=local",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire: also how long a requeued job waits before it may start again (120 s by default). A
            # requeue that kills the job's batch shell revokes its credential on the node, and a restart before
            # the credential expires is refused there ("already killed") and ends the job FAILED
            f"AuthInfo=socket={munge / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}/%n",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers, CI)
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=1",  # the tests wait on it: schedule every second
            "InactiveLimit=0",
            "KillWait=5",  # scancel: SIGTERM, then SIGKILL 5 s later
        ]
        # Several slurmd on one host: each node its own port; all reached on loopback.
        for name in self.node_names():
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs={cpus}"
            )
        lines.append(f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        write_text_atomic(self.conf, "\n".join(lines) + "\n")

    def _spawn(self, role: str, argv: list[str]) -> None:
        log = open(self.folder / "log" / f"{role}.out", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.folder,
            start_new_session=True,
        )
        log.close()
        self.pids[role] = proc.pid
        self._save()

    def _save(self) -> None:
        write_json_atomic(self.folder / STATE, {"conf": str(self.conf), "pids": self.pids})

    def start(self) -> LocalSlurm:
        why = why_unavailable()
        if why:
            raise UserError(f"{why}: start it as root, or use a real cluster's login node")
        ensure_installed()
        self.folder.mkdir(parents=True, exist_ok=True)
        if (self.folder / STATE).exists() and LocalSlurm.attach(self.folder).running():
            raise UserError(
                f"a local SLURM cluster already runs from {self.folder}; stop it first (make slurm-down)"
            )
        self._write_config()
        munge = self.folder / "munge"
        # Foreground daemons (-F/-D): the PID we hold is the daemon's own, so stop() ends exactly it.
        self._spawn("munged", [_which("munged") or "munged", "-F", "--force", f"--socket={munge / 'munge.socket'}",
                               f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}", f"--log-file={munge / 'munged.log'}"])  # fmt: skip
        self._wait(lambda: (munge / "munge.socket").exists(), "munged")
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-c", "-f", str(self.conf)])
        for name in self.node_names():
            self._spawn(
                f"slurmd-{name}", [_which("slurmd") or "slurmd", "-D", "-N", name, "-f", str(self.conf)]
            )
        self._wait(self._idle, "every node idle (sinfo)")
        return self

    def _idle(self) -> bool:
        res = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env(), capture_output=True, text=True
        )
        states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
        return res.returncode == 0 and all(states.get(n) == "idle" for n in self.node_names())

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():  # type: ignore[operator]
            dead = [role for role, pid in self.pids.items() if not _alive(pid, str(self.folder))]
            if dead or time.monotonic() > deadline:
                self.stop()
                why = (
                    f"{', '.join(dead)} exited" if dead else f"not {what} after {self.start_timeout_s:.0f} s"
                )
                raise UserError(
                    f"local SLURM cluster in {self.folder}: {why}; see its logs in {self.folder / 'log'}"
                )
            time.sleep(0.2)

    # -- stop -------------------------------------------------------------------------------------------
    @classmethod
    def attach(cls, folder: str | Path) -> LocalSlurm:
        """The cluster that `start()` left running in `folder` (its daemons' PIDs from cluster.json)."""
        cluster = cls(folder)
        try:
            cluster.pids = {
                k: int(v) for k, v in json.loads((cluster.folder / STATE).read_text())["pids"].items()
            }
        except (OSError, ValueError, KeyError):
            raise UserError(f"no local SLURM cluster in {cluster.folder} (no readable {STATE})") from None
        cluster.nodes = sum(role.startswith("slurmd-") for role in cluster.pids)
        return cluster

    def running(self) -> bool:
        return any(_alive(pid, str(self.folder)) for pid in self.pids.values())

    def stop(self) -> None:
        """Cancel every job of this cluster, then end its daemons (slurmd, slurmctld, munged) by PID."""
        if _alive(self.pids.get("slurmctld", 0), str(self.folder)):
            # slurmd leaves running jobs' steps alive when it exits: cancel them first, while it can
            subprocess.run(["scancel", "--partition", PARTITION], env=self.env(), capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._jobs_listed():
                time.sleep(0.5)
        order = [r for r in self.pids if r.startswith("slurmd-")] + ["slurmctld", "munged"]
        for role in order:
            pid = self.pids.get(role)
            if pid is None or not _alive(pid, str(self.folder)):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid, str(self.folder)) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _alive(pid, str(self.folder)):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pids = {}
        self._save()

    def _jobs_listed(self) -> bool:
        res = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env(), capture_output=True, text=True)
        return res.returncode == 0 and bool(res.stdout.strip())

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _reap(pid: int) -> None:
    """Collect our own child's exit status (else it lingers as a zombie that still looks alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child (another process started it): init reaps it
