"""A sweep's finished runs kept in a folder that is committed with the study (`keep_runs:` in the sweep YAML).

A long study outlives the machine it started on. The sweep folder holds gigabytes of checkpoints; what a
report and a resumed sweep need from a finished run is small: its summary, report, config and metrics, and
for a pretraining run its exported model (the finetunes start from it). `keep` copies those into
`<keep_runs>/<point name>/` as each run lands, so they can be committed; `restore` copies them back into an
empty sweep folder, where their summary.json makes the sweep skip them and the finetunes still to run start
from the very pretrained weights the kept ones did. A kept run is restored only where it was made by the
command the sweep would run today: after the sweep YAML changes (another data mix, another lr), an old
result must not stand in for the new configuration.
"""

from __future__ import annotations

import filecmp
import gzip
import json
import shutil
from pathlib import Path

from dist_forget.io import atomic_dir, atomic_path
from dist_forget.schema import METRICS_FILE, SUMMARY_FILE
from dist_forget.sweep.grid import Point

RUN_FILES = ("report.json", "run_config.json", "sweep_point.json")
MODEL_DIR = "model"  # a finished run's exported HF folder: kept for pretraining runs only
GZ = ".gz"  # the metrics are kept compressed (a finetune's per-step log is ~300 bytes a step)


def kept_dir(point: Point, into: Path) -> Path:
    return into / point.name


def is_kept(point: Point, into: Path) -> bool:
    kept = kept_dir(point, into)
    return (
        (kept / SUMMARY_FILE).is_file()
        and point.done()
        and filecmp.cmp(kept / SUMMARY_FILE, point.summary, shallow=False)
        and made_by(kept, point)  # the same figures from another command are still another run
    )


def keep(points: list[Point], into: Path) -> list[str]:
    """Copy every finished point that is not kept yet into `into`; returns their names."""
    kept = []
    for point in points:
        if not point.done() or is_kept(point, into):
            continue
        run = Path(point.out_dir)
        with atomic_dir(kept_dir(point, into), overwrite=True) as tmp:
            for name in (SUMMARY_FILE, *RUN_FILES):
                if (run / name).is_file():
                    shutil.copyfile(run / name, tmp / name)
            if (run / METRICS_FILE).is_file():
                with open(run / METRICS_FILE, "rb") as src, gzip.open(tmp / (METRICS_FILE + GZ), "wb") as dst:
                    shutil.copyfileobj(src, dst)
            if point.stage == "pretrain" and (run / MODEL_DIR).is_dir():
                shutil.copytree(run / MODEL_DIR, tmp / MODEL_DIR)
        kept.append(point.name)
    return kept


def made_by(kept: Path, point: Point) -> bool:
    """Whether the kept run was made by the command `point` runs, wherever its checkout was.

    The recorded command names the interpreter and the sweep folder of the machine that ran it: the
    interpreter is left out and that folder is read as this sweep's before the two are compared.
    """
    try:
        recorded = json.loads((kept / "sweep_point.json").read_text())
        argv, out_dir = recorded["argv"], recorded["out_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no record of its command: it cannot be told apart from another configuration's run
    there, here = str(Path(out_dir).parents[1]), str(Path(point.out_dir).parents[1])
    return [arg.replace(there, here) for arg in argv[1:]] == point.argv[1:]


def changed_command(points: list[Point]) -> list[Point]:
    """The finished points of the sweep folder whose recorded command is not the one the sweep runs today
    (the sweep YAML was edited since): their results belong to another configuration."""
    return [
        p
        for p in points
        if p.done() and (Path(p.out_dir) / "sweep_point.json").is_file() and not made_by(Path(p.out_dir), p)
    ]


def restore(points: list[Point], into: Path) -> tuple[list[str], list[str]]:
    """Copy kept runs back into the sweep folder where that run has not finished.

    Returns the names restored and the names refused: kept runs made with another command (`made_by`),
    which the sweep runs again and whose kept folder the new result then replaces. The summary goes in
    last, so a restore cut short leaves an unfinished run that the sweep reruns. A kept sweep_point.json is
    not copied back: `made_by` has compared it already, and a run folder's own one records only a command
    started there.
    """
    restored, refused = [], []
    for point in points:
        kept = kept_dir(point, into)
        if point.done() or not (kept / SUMMARY_FILE).is_file():
            continue
        if not made_by(kept, point):
            refused.append(point.name)
            continue
        run = Path(point.out_dir)
        run.mkdir(parents=True, exist_ok=True)
        for path in sorted(kept.iterdir()):
            if path.name in (SUMMARY_FILE, "sweep_point.json"):
                continue
            if path.is_dir():
                shutil.rmtree(run / path.name, ignore_errors=True)
                shutil.copytree(path, run / path.name)
            elif path.name.endswith(GZ):
                with gzip.open(path, "rb") as src, atomic_path(run / path.name[: -len(GZ)]) as tmp:
                    with open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(path, run / path.name)
        with atomic_path(point.summary) as tmp:
            shutil.copyfile(kept / SUMMARY_FILE, tmp)
        restored.append(point.name)
    return restored, refused
