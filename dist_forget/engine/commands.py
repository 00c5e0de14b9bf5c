"""`dist-forget pretrain` and `dist-forget finetune`: read the config, run the trainer."""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from dist_forget.config import load_config

_Command = TypeVar("_Command", bound=Callable[..., int])

# Both run commands resume, lock and stop the same way: one text, shown in each one's --help.
_RUN_NOTES = """\
--resume auto continues from the latest checkpoint in out_dir; a path resumes from that checkpoint
(one of out_dir's before its latest starts a branch: the later ones move to checkpoints/abandoned-*/).
A resume keeps the settings that change the result (checkpoint/meta.py RESULT_NEUTRAL lists those
that may change); one run at a time per out_dir (out_dir/run.lock).
SIGTERM or SIGUSR1 (preempt.signals) saves a checkpoint at the end of the step and exits 75; in a
requeued SLURM job (SLURM_RESTART_COUNT > 0) the default is --resume auto."""


def _with_run_notes(command: _Command) -> _Command:
    """Put _RUN_NOTES after the command's first docstring line, where its --help shows them."""
    summary, _, rest = inspect.cleandoc(command.__doc__ or "").partition("\n")
    command.__doc__ = f"{summary}\n\n{_RUN_NOTES}\n{rest}"
    return command


def _run(mode: str, config: str, overrides: list[str], resume: str) -> int:
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.preemption import PREEMPTED_EXIT, Preempted
    from dist_forget.engine.trainer import train

    cfg = load_config(RunConfig, config, overrides)
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if resume == "none" and restarts > 0:  # a requeued SLURM job continues its run (sweep/requeue.py)
        print(f"{mode}: SLURM restart {restarts} of this job: resuming as with --resume auto", flush=True)
        resume = "auto"
    try:
        train(cfg, mode, resume)  # type: ignore[arg-type]
    except Preempted as stopped:  # a signal or a dead launcher: a checkpoint of the last step is saved
        if stopped.rank == 0:
            print(f"{mode}: {stopped}", file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    return 0


@_with_run_notes
def pretrain(config: str, overrides: list[str], resume: str = "none") -> int:
    """Pretrain a ladder-size model from scratch on the pretraining shards (data.target, no injection).

    Args:
        config: run YAML (configs/pretrain/*.yaml), a view of engine/config.py's RunConfig
        overrides: config overrides as section.key=value, e.g. model.size=cpu-0.1m
        resume: none (refuse a used out_dir), auto (latest checkpoint in out_dir) or a checkpoint path
    """
    return _run("pretrain", config, overrides, resume)


@_with_run_notes
def finetune(config: str, overrides: list[str], resume: str = "none") -> int:
    """Finetune model.init_from on data.target with pretraining injection data.inject_fraction.

    Args:
        config: run YAML (configs/finetune/*.yaml), a view of engine/config.py's RunConfig
        overrides: config overrides as section.key=value, e.g. data.inject_fraction=0.01
        resume: none (refuse a used out_dir), auto (latest checkpoint in out_dir) or a checkpoint path
    """
    return _run("finetune", config, overrides, resume)
