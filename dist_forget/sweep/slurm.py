"""`--backend slurm`: write `sbatch --array` scripts (one array task per point) instead of running.

Files under <sweep_dir>/slurm/: pretrain.json and finetune.json (the points, read by each array task
through `python -m dist_forget.sweep.task`), pretrain.sbatch, finetune.sbatch (after pretraining),
collect.sbatch (runs table + law fit, after the grid: `sweep --collect-only` with every override the
scripts were written with) and submit.sh, which is `dist-forget sweep ... --backend slurm --submit` with
those same overrides (submitting is sweep/slurm_jobs.py). Logs go to slurm/logs/<name>-<stage>-<job>_<task>.out.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dist_forget.io import write_json_atomic, write_text_atomic
from dist_forget.redact import redact_uri, scrub
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import Point
from dist_forget.sweep.requeue import sbatch_lines

STAGES = ("pretrain", "finetune")


def job_name(cfg: SweepConfig, stage: str) -> str:
    return f"{cfg.name}-{stage}"


def log_path(cfg: SweepConfig, root: Path, stage: str, job: str, task: int | None = None) -> Path:
    """Where SLURM writes a job's (or an array task's) output: the `--output` patterns of `_sbatch`."""
    name = job_name(cfg, stage)
    return root / "slurm" / "logs" / (f"{name}-{job}_{task}.out" if task is not None else f"{name}-{job}.out")


def _sbatch(
    cfg: SweepConfig, job: str, array: int | None, body: list[str], env: dict[str, str], logs: Path
) -> str:
    s = cfg.slurm
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={job_name(cfg, job)}", f"#SBATCH --time={s.time}",
             f"#SBATCH --cpus-per-task={s.cpus_per_task}", "#SBATCH --ntasks=1",
             f"#SBATCH --output={logs}/%x-%A_%a.out" if array else f"#SBATCH --output={logs}/%x-%j.out"]  # fmt: skip
    if array:
        throttle = f"%{cfg.max_parallel}" if cfg.max_parallel else ""
        lines.append(f"#SBATCH --array=0-{array - 1}{throttle}")
        lines += sbatch_lines()  # a run checkpoints ahead of the time limit and its task is requeued
    if s.partition:
        lines.append(f"#SBATCH --partition={s.partition}")
    if s.mem:
        lines.append(f"#SBATCH --mem={s.mem}")
    lines += [f"#SBATCH {opt}" for opt in s.sbatch]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", *s.setup, "unset MLFLOW_RUN_ID"]
    # A tracking URI's credentials are not written down (redact.py): the tasks inherit them from the
    # submitting environment (MLFLOW_TRACKING_USERNAME/PASSWORD; sbatch exports it by default).
    lines += [f"export {k}={shlex.quote(redact_uri(v))}" for k, v in env.items()]
    return "\n".join(lines + body) + "\n"


def sweep_argv(config_path: Path, overrides: list[str], *flags: str) -> list[str]:
    """`python -m dist_forget.cli sweep --config C FLAGS OVERRIDES`: how a generated script reruns this sweep
    (every override kept: without them collect would gather another sweep folder, e.g. the default one)."""
    # (an override's URI keeps no credentials in a file; the job takes them from the environment as above)
    return [sys.executable, "-m", "dist_forget.cli", "sweep", "--config", str(config_path.resolve()),
            *flags, *map(scrub, overrides)]  # fmt: skip


def write_slurm(
    cfg: SweepConfig,
    config_path: Path,
    overrides: list[str],
    points: list[Point],
    root: Path,
    env: dict[str, str],
) -> Path:
    """Write the scripts; return submit.sh."""
    out = root / "slurm"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = shlex.quote(sys.executable)
    for stage in STAGES:
        staged = [p for p in points if p.stage == stage]
        if not staged:
            continue
        write_json_atomic(out / f"{stage}.json", [p.to_dict() for p in staged])
        task = f"exec {py} -m dist_forget.sweep.task {shlex.quote(str(out / f'{stage}.json'))} " \
               '"${SLURM_ARRAY_TASK_ID:?submit with sbatch --array}"'  # fmt: skip
        write_text_atomic(out / f"{stage}.sbatch", _sbatch(cfg, stage, len(staged), [task], env, logs))
    collect = "exec " + shlex.join(sweep_argv(config_path, overrides, "--collect-only"))
    write_text_atomic(out / "collect.sbatch", _sbatch(cfg, "collect", None, [collect], env, logs))
    throttle = ["--max-parallel", str(cfg.max_parallel)] if cfg.max_parallel else []
    submit = sweep_argv(config_path, overrides, "--backend", "slurm", "--submit", *throttle)
    path = out / "submit.sh"
    lines = ["#!/usr/bin/env bash",
             "# Submit what has no summary.json yet: pretraining array, then finetune array, then collect + fit.",
             '# Add --wait to follow it to the end; rerun after a failure to resubmit only what is missing.',
             "set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", f'exec {shlex.join(submit)} "$@"']  # fmt: skip
    write_text_atomic(path, "\n".join(lines) + "\n")
    for script in out.glob("*.s*"):
        script.chmod(0o755)
    return path
