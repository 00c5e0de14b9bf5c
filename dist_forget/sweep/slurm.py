"""`--backend slurm`: write `sbatch --array` scripts (one array task per point) instead of running.

Files under <sweep_dir>/slurm/: pretrain.json and finetune.json (the points, read by each array task
through `python -m dist_forget.sweep.task`), pretrain.sbatch, finetune.sbatch (after pretraining),
collect.sbatch (runs table + law fit, after the grid) and submit.sh, which chains them with
`--dependency`. Nothing is submitted here: the user runs submit.sh on the cluster's login node.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from dist_forget.io import write_json_atomic, write_text_atomic
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import Point


def _sbatch(
    cfg: SweepConfig, job: str, array: int | None, body: list[str], env: dict[str, str], logs: Path
) -> str:
    s = cfg.slurm
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={cfg.name}-{job}", f"#SBATCH --time={s.time}",
             f"#SBATCH --cpus-per-task={s.cpus_per_task}", "#SBATCH --ntasks=1",
             f"#SBATCH --output={logs}/%x-%A_%a.out" if array else f"#SBATCH --output={logs}/%x-%j.out"]  # fmt: skip
    if array:
        throttle = f"%{cfg.max_parallel}" if cfg.max_parallel else ""
        lines.append(f"#SBATCH --array=0-{array - 1}{throttle}")
    if s.partition:
        lines.append(f"#SBATCH --partition={s.partition}")
    if s.mem:
        lines.append(f"#SBATCH --mem={s.mem}")
    lines += [f"#SBATCH {opt}" for opt in s.sbatch]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}", *s.setup, "unset MLFLOW_RUN_ID"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines + body) + "\n"


def write_slurm(
    cfg: SweepConfig, config_path: Path, points: list[Point], root: Path, env: dict[str, str]
) -> Path:
    """Write the scripts; return submit.sh."""
    out = root / "slurm"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    py = shlex.quote(sys.executable)
    submit = ["#!/usr/bin/env bash", "# Submit the sweep: pretraining array, then finetune array, then collect + fit.",
              "set -euo pipefail", 'cd "$(dirname "$0")"', "dep=()"]  # fmt: skip
    for stage in ("pretrain", "finetune"):
        staged = [p for p in points if p.stage == stage]
        if not staged:
            continue
        write_json_atomic(out / f"{stage}.json", [p.to_dict() for p in staged])
        task = f"exec {py} -m dist_forget.sweep.task {shlex.quote(str(out / f'{stage}.json'))} " \
               '"${SLURM_ARRAY_TASK_ID:?submit with sbatch --array}"'  # fmt: skip
        write_text_atomic(out / f"{stage}.sbatch", _sbatch(cfg, stage, len(staged), [task], env, logs))
        submit += [f'job=$(sbatch --parsable "${{dep[@]}}" {stage}.sbatch)', 'job="${job%%;*}"',
                   f'echo "{stage}: {len(staged)} array tasks, job $job"', 'dep=(--dependency="afterok:$job")']  # fmt: skip
    collect = f"exec {py} -m dist_forget.cli sweep --config {shlex.quote(str(config_path.resolve()))} --collect-only"
    write_text_atomic(out / "collect.sbatch", _sbatch(cfg, "collect", None, [collect], env, logs))
    submit += ['dep=("${dep[@]/afterok/afterany}")', 'job=$(sbatch --parsable "${dep[@]}" collect.sbatch)',
               'echo "collect + fit: job ${job%%;*}"']  # fmt: skip
    path = out / "submit.sh"
    write_text_atomic(path, "\n".join(submit) + "\n")
    for script in out.glob("*.s*"):
        script.chmod(0o755)
    return path
