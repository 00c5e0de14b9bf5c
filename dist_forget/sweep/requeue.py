"""SLURM jobs that outlive their time limit: checkpoint ahead of it, requeue, continue.

The generated array scripts (sweep/slurm.py) and `launchers/slurm.sbatch` ask SLURM for SIGUSR1 ahead of
the limit, for the batch shell alone (`#SBATCH --signal=B:USR1@<s>`; SLURM may send it up to 60 s earlier
still). The batch shell passes it on to the run: each rank ends its step, saves a checkpoint and exits 75
(engine/preemption.py; the launchers ignore SIGUSR1, launchers/common.sh). Not SIGTERM: srun answers SIGTERM
by ending the whole step, SIGKILL included KillWait later, and a checkpoint in flight with it. And not
SIGUSR1 from SLURM to every process (no `B:`): it would also reach processes that are not ours. When the run
has stopped, the batch shell requeues the job (`scontrol requeue $SLURM_JOB_ID`; the scripts are
`--requeue` and `--open-mode=append`, so the next attempt's output follows in the same log; SLURM holds a
requeued job back for about 2 minutes before it may start again), and the next attempt resumes where the last
one stopped: the engine resumes a run by itself in a requeued job (`SLURM_RESTART_COUNT` > 0), as with
`--resume auto`. SIGTERM (scancel, preemption, the time limit itself) reaches every process from SLURM and
the ranks save the same way (within KillWait, 30 s by default); the batch shell passes SIGUSR1 on too (for a
`scancel --batch`), waits for the run and requeues nothing: a cancelled job stays cancelled, and SLURM
requeues a preempted `--requeue` job itself when its PreemptMode says so.

Here: that batch-shell part for a Python process (the sweep's array task, sweep/task.py);
launchers/slurm.sbatch does the same in bash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

WARNING = "USR1"  # the signal the scripts ask for ahead of the time limit
WARNING_S = 180  # ...and how long ahead: a step and a checkpoint must fit (SLURM may send it 60 s earlier)
SAVED_EXIT = 75  # engine/preemption.py's PREEMPTED_EXIT (sweep/ does not import the engine)


def sbatch_lines(seconds: int = WARNING_S) -> list[str]:
    """The #SBATCH lines that make a job checkpoint and requeue at its time limit."""
    return [f"#SBATCH --signal=B:{WARNING}@{seconds}", "#SBATCH --requeue", "#SBATCH --open-mode=append"]


def supervise(proc: subprocess.Popen[bytes]) -> tuple[int, bool]:
    """Wait for `proc`, passing SIGUSR1 and SIGTERM on to it as SIGUSR1; (its exit status, whether the
    time-limit warning came)."""
    warned = False

    def pass_on(signum: int, frame: FrameType | None) -> None:
        nonlocal warned
        warned = warned or signum == signal.SIGUSR1
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)

    old = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        return proc.wait(), warned
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def requeue(rc: int, warned: bool) -> bool:
    """After the warning, a run that stopped with its checkpoint: put this job back in the queue."""
    job = os.environ.get("SLURM_JOB_ID")
    if not (warned and rc == SAVED_EXIT and job):
        return False
    res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"error: scontrol requeue {job} failed: {res.stderr.strip()}; resubmit to continue",
              file=sys.stderr, flush=True)  # fmt: skip
        return False
    print(f"stopped ahead of the time limit with a checkpoint; job {job} requeued", flush=True)
    return True
