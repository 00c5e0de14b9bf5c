"""`sweep --backend slurm --submit [--wait]`: submit the scripts of sweep/slurm.py and follow them.

- Submit only what has no summary.json: the array indices of those points in pretrain.json and
  finetune.json, pretrain array → finetune array → collect + fit. Both dependencies are `afterany`: a
  finetune whose pretrained model did not finish exits at once naming it (sweep/task.py), so one failed
  size does not cancel every other size's finetunes (as in the local pool); with `afterok` SLURM would hold
  the whole finetune array forever. The collect job runs after the last array whatever its outcome.
  Job ids go to slurm/jobs.json; a submission while those jobs are still queued is refused (each run would
  be started twice).
- Wait: poll `squeue` (no accounting needed: `sacct` is often off, and a run's own summary.json says
  whether it finished): per array finished / running / pending / failed and an ETA; a task that left the
  queue without its summary.json is named once with its logs; done when the collect job has left the queue.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import Point
from dist_forget.sweep.pool import LOG_NAME, eta_text
from dist_forget.sweep.slurm import STAGES, log_path

JOBS_FILE = "jobs.json"
# squeue states of a job that has left for good (anything else is still queued or running)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
         "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}  # fmt: skip
RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}


@dataclass
class Submitted:
    stage: str  # pretrain, finetune or collect
    job: str  # SLURM job id (of the array)
    indices: list[int]  # array task ids = indices into <stage>.json; [] for collect


def _slurm_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UserError(
            f"{name} not found: --submit and --wait run where SLURM's commands are (a login node), "
            "or on this machine after `make slurm-up` and `export SLURM_CONF=...`"
        )
    return path


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] → '0-2,5,7-8' (sbatch --array syntax)."""
    out, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None]):
        if cur != prev + 1:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    return ",".join(out)


def _sbatch(args: list[str], script: Path) -> str:
    res = subprocess.run(
        [_slurm_tool("sbatch"), "--parsable", *args, str(script)], capture_output=True, text=True
    )
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        raise UserError(f"sbatch {' '.join(args)} {script} failed: {why}")
    return res.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"


def queue(jobs: list[str]) -> dict[str, str] | None:
    """{'12_3': 'RUNNING', '14': 'PENDING', ...} for these jobs (array tasks one by one, ended ones while SLURM
    still lists them); None when squeue could not answer (a busy controller: ask again later)."""
    if not jobs:
        return {}
    res = subprocess.run([_slurm_tool("squeue"), "-h", "-r", "-t", "all", "-j", ",".join(jobs), "-o", "%i %T"],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        # every id already purged from the controller's memory: nothing of them is queued
        return {} if "Invalid job id" in res.stderr else None
    return dict(line.split()[:2] for line in res.stdout.splitlines() if len(line.split()) >= 2)


def read_jobs(root: Path) -> list[Submitted]:
    path = root / "slurm" / JOBS_FILE
    try:
        return [Submitted(**j) for j in json.loads(path.read_text())["jobs"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"no submission to wait for: {path} missing or unreadable; submit with --submit"
        ) from None


def _key(sub: Submitted, index: int) -> str:
    return f"{sub.job}_{index}"  # how squeue -r names an array task


def _queued(jobs: list[Submitted]) -> list[str]:
    """The jobs (array ids) of an earlier submission that are still queued or running."""
    states = queue([j.job for j in jobs])
    if states is None:  # not knowing could mean starting every run twice
        raise UserError("squeue did not answer, so the last submission's jobs may still be queued; try again")
    return sorted({key.split("_")[0] for key, state in states.items() if state not in ENDED})


def submit(
    cfg: SweepConfig, points: list[Point], root: Path, say: Callable[[str], None] = print
) -> list[Submitted]:
    """Submit the chain for the points without summary.json; print and record the job ids."""
    out = root / "slurm"
    if (out / JOBS_FILE).exists():
        still = _queued(read_jobs(root))
        if still:
            raise UserError(
                f"sweep {cfg.name}: jobs {', '.join(still)} of the last submission ({out / JOBS_FILE}) are still "
                f"queued or running; follow them with --wait (without --submit) or cancel them: scancel {' '.join(still)}"
            )
    jobs: list[Submitted] = []
    after: list[str] = []
    try:
        for stage in STAGES:
            staged = [p for p in points if p.stage == stage]
            todo = [i for i, p in enumerate(staged) if not p.done()]
            if staged and not todo:
                say(f"{stage}: all {len(staged)} runs finished before; nothing to submit")
            if not todo:
                continue
            throttle = f"%{cfg.max_parallel}" if cfg.max_parallel else ""
            job = _sbatch([f"--array={_ranges(todo)}{throttle}", *after], out / f"{stage}.sbatch")
            jobs.append(Submitted(stage, job, todo))
            say(f"{stage}: job {job}, {len(todo)} of {len(staged)} runs to do (array {_ranges(todo)})")
            after = [f"--dependency=afterany:{job}"]
        job = _sbatch(after, out / "collect.sbatch")
    except UserError:
        if jobs:  # half a chain would run without its collect job: take it back
            subprocess.run([_slurm_tool("scancel"), *[j.job for j in jobs]], capture_output=True)
        raise
    jobs.append(Submitted("collect", job, []))
    say(f"collect + fit: job {job}" + (f" (after job {jobs[-2].job})" if len(jobs) > 1 else ""))
    write_json_atomic(out / JOBS_FILE, {"submitted_at": time.time(), "jobs": [asdict(j) for j in jobs]})
    return jobs


@dataclass
class Failure:
    stage: str
    name: str
    why: str


def wait(
    cfg: SweepConfig,
    points: list[Point],
    root: Path,
    jobs: list[Submitted],
    poll_s: float = 5.0,
    heartbeat_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> bool:
    """Follow the jobs until the collect job has left the queue; whether every run and the collect job
    succeeded. Progress is printed when it changes (and every heartbeat_s)."""
    staged = {stage: [p for p in points if p.stage == stage] for stage in STAGES}
    by_name = {p.name: p for p in points}
    arrays = [j for j in jobs if j.stage in STAGES]
    collect = next((j for j in jobs if j.stage == "collect"), None)
    todo = sum(len(j.indices) for j in arrays)
    t0 = time.monotonic()
    failed: dict[str, Failure] = {}
    states: dict[str, str] = {}
    last_line, last_print = "", 0.0
    while True:
        answer = queue([j.job for j in jobs])
        if answer is not None:
            states = answer
        parts, finished = [], 0
        for sub in arrays:
            counts = {"finished": 0, "running": 0, "pending": 0, "failed": 0}
            for i in sub.indices:
                point = staged[sub.stage][i]
                state = states.get(_key(sub, i))
                if point.done():
                    counts["finished"] += 1
                    failed.pop(point.name, None)  # (a shared filesystem may show the file late)
                elif state is not None and state not in ENDED:
                    counts["running" if state in RUNNING else "pending"] += 1
                else:
                    counts["failed"] += 1
                    if point.name not in failed:
                        failed[point.name] = Failure(
                            sub.stage, point.name, _why(cfg, root, sub, i, point, state, by_name)
                        )
                        say(f"FAILED {sub.stage} {point.name}: {failed[point.name].why}")
            finished += counts["finished"]
            parts.append(f"{sub.stage} job {sub.job}: {counts['finished']}/{len(sub.indices)} finished, "
                         f"{counts['running']} running, {counts['pending']} pending, {counts['failed']} failed")  # fmt: skip
        collect_state = states.get(collect.job) if collect else "COMPLETED"
        left = todo - finished - len(failed)
        elapsed = time.monotonic() - t0
        eta = elapsed * left / finished if finished else float("nan")
        line = " | ".join(parts) + f" | ETA {eta_text(eta) if left else '0m00s'}"
        if not parts and collect is not None:
            line = f"collect + fit job {collect.job}: {(collect_state or 'submitted').lower()}"
        now = time.monotonic()
        if line != last_line or now - last_print >= heartbeat_s:
            say(line)
            last_line, last_print = line, now
        # (absent from an answer: purged after its end; no answer at all: a busy controller, ask again)
        if collect is None or (answer is not None and (collect_state is None or collect_state in ENDED)):
            break
        time.sleep(poll_s)
    done = sum(p.done() for p in points)
    if collect is not None:
        where = log_path(cfg, root, "collect", collect.job)
        say(f"collect + fit: job {collect.job} {collect_state or 'left the queue'}; log: {where}")
    say(f"sweep {cfg.name} on SLURM: {done} of {len(points)} runs finished, {len(failed)} failed"
        + (" (rerun the same command to resubmit only those)" if failed else "") + f"; results under {root}")  # fmt: skip
    return not failed and collect_state in ("COMPLETED", None)


def _why(
    cfg: SweepConfig,
    root: Path,
    sub: Submitted,
    index: int,
    point: Point,
    state: str | None,
    by_name: dict[str, Point],
) -> str:
    """Why a task left the queue without its summary.json, and where to read about it."""
    needs = by_name.get(point.needs) if point.needs else None
    if needs is not None and not needs.done():
        head = f"skipped: needs {needs.name}, which did not finish"
    else:
        head = f"{(state or 'gone from the queue').lower()} without {point.summary.name}"
    logs = f"log: {log_path(cfg, root, sub.stage, sub.job, index)} and {Path(point.out_dir) / LOG_NAME}"
    return f"{head} (task {sub.job}_{index}); {logs}"
