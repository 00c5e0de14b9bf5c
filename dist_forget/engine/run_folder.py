"""The run folder's checkpoints: `<out>/checkpoints/step-XXXXXXXX/`, atomic, with our own `latest`
pointer, retention, one lineage per folder (abandoned branches set aside) and the resume choice.

A save writes the backend's files plus `meta.json` into a temp tag `.tmp-step-XXXXXXXX`, waits for every
rank, and only then rank 0 renames it to `step-XXXXXXXX` and rewrites the `latest` pointer (an atomic file
write: the commit; if it fails the rename is undone). A crash or a full disk at any moment therefore leaves
`latest` naming a complete checkpoint, and a full disk ends the run in one line naming the checkpoint and
"no space left on device". Retention keeps the last `keep` checkpoints (the best step's model is the run's
`best/` export, saving.py; a `best` pointer left by an older version still pins the checkpoint it names).

One lineage per folder: every resume first moves the checkpoints that come after its resume point (all of
them when it resumes from a checkpoint outside the folder) into `abandoned-<UTC time>/`, with the summary,
report and `model/` they produced, saying so in one line; they are never resumed from nor deleted. So the
steps in the folder always run in the order they were saved in this lineage: retention by step, `latest`
and `--resume auto` never reach back into an abandoned branch (`--resume checkpoints/step-40` of a run that
reached 120 starts a branch at 40; a kill at 95 then resumes at 90, not at the old 120). A `best` pointer
or `best/` export of a step past the resume point goes with them (each checkpoint's meta.json records the
step its run's best is at); the resumed run exports its own best at its next new best, or at once when the
resumed checkpoint is its best (saving.py).

`meta.json` and `hf_config.json` beside the backend's files, and the check a resume makes on them, are
dist_forget/checkpoint/meta.py; each engine's file layout, and checking a checkpoint of it, is a format
of dist_forget/checkpoint/formats.py. This module is the engine's side: tags, pointers, retention and the
choice of checkpoint.

Startup (rank 0, `prepare_resume`) tidies what a killed save left: a `.tmp-step-*` folder or a `.latest.*.tmp`
pointer temp is dropped, an `.old-step-*` copy is restored if its replacement never arrived (else dropped),
and retention runs again. `--resume auto` then checks the checkpoint `latest` names by loading every file
weights-only (`verify_checkpoint`, checkpoint/formats.py); a damaged or incomplete one is reported in one line and the newest
intact checkpoint before it is used instead (broken ones are set aside as `.broken-step-*`), or the run
stops listing every candidate and what is wrong with it. A file refused as unsafe (it asks to import code)
stops the run: that is never silently skipped. Checkpoint folders are owner-only (0700).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_forget.checkpoint.formats import verify_checkpoint
from dist_forget.checkpoint.meta import META, read_meta, write_hf_config, write_meta
from dist_forget.engine.backend import Backend
from dist_forget.errors import UserError
from dist_forget.io import write_failure, write_text_atomic

TAG = re.compile(r"step-\d{8}")


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("-", 1)[1])


class CheckpointManager:
    def __init__(self, root: Path, backend: Backend, keep: int, guard: Callable[[], None] | None = None):
        self.root = Path(root)
        self.backend = backend
        self.keep = keep
        self.guard = guard  # rank 0, before each save: raises if this run may no longer write here (run lock)

    def read_pointer(self, name: str) -> str | None:
        return read_pointer(self.root, name)

    def save(
        self,
        step: int,
        client_state: dict[str, Any],
        meta: dict[str, Any],
        hf_config: dict[str, Any] | None = None,
    ) -> Path:
        tag, tmp = tag_of(step), f".tmp-{tag_of(step)}"
        rank0 = self.backend.rank == 0
        error, lost = "", ""
        if rank0:
            try:
                if self.guard is not None:
                    self.guard()
                self.root.mkdir(parents=True, exist_ok=True)
                os.chmod(self.root, 0o700)  # checkpoints hold the config and data state: owner only
                shutil.rmtree(self.root / tmp, ignore_errors=True)
                (self.root / tmp).mkdir(mode=0o700)
            except UserError as exc:  # another run holds out_dir now: write nothing more into it
                lost = str(exc)
            except OSError as exc:
                error = write_failure(exc, self.root / tmp)
        self._raise_if_failed(error or lost, tag, tmp, verbatim=bool(lost))  # also the barrier
        try:
            self.backend.save(self.root, tmp, client_state)
            if rank0:
                if hf_config is not None:
                    write_hf_config(self.root / tmp, hf_config)
                write_meta(self.root / tmp, {**meta, "step": step, "tag": tag})
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            error = write_failure(exc, self.root / tmp)  # before the temp tag goes: it holds the space
        self._raise_if_failed(error, tag, tmp)
        if rank0:
            try:
                self._publish(tag, tmp)
            except OSError as exc:  # e.g. no room left for the new `latest` pointer
                error = write_failure(exc, self.root)
        self._raise_if_failed(error, tag, tmp)  # also the final barrier: every rank waits for the rename
        return self.root / tag

    def _publish(self, tag: str, tmp: str) -> None:
        """Rank 0: the temp tag becomes `tag`, then `latest` names it (the commit)."""
        final, old = self.root / tag, self.root / f".old-{tag}"
        if final.exists():  # re-saving a step after a resume: keep the old copy until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        (self.root / tmp).rename(final)
        try:
            write_text_atomic(self.root / "latest", tag + "\n")  # the commit
        except OSError:  # not committed: back to how it was before this save (the temp tag is dropped)
            final.rename(self.root / tmp)
            if old.exists():
                old.rename(final)
            raise
        shutil.rmtree(old, ignore_errors=True)
        self._retain()

    def _raise_if_failed(self, error: str, tag: str, tmp: str, verbatim: bool = False) -> None:
        """Collective: if any rank failed, drop the temp tag and raise the same one-line error everywhere."""
        (failed,) = self.backend.all_reduce_sum([1.0 if error else 0.0])
        if not failed:
            return
        if self.backend.rank == 0:
            shutil.rmtree(self.root / tmp, ignore_errors=True)
        if verbatim:
            raise UserError(error)
        prev = self.read_pointer("latest")
        still = f"the previous checkpoint {self.root / prev} still loads" if prev else "no earlier checkpoint"
        raise UserError(
            f"saving checkpoint {self.root / tag} failed ({error or 'on another rank'}); "
            f"{still}; free disk space and rerun with --resume auto"
        )

    def _retain(self) -> None:
        retain(self.root, self.keep)


def _tags(root: Path) -> list[str]:
    """The published checkpoints under `root`, oldest first."""
    return sorted((p.name for p in root.glob("step-*") if p.is_dir() and TAG.fullmatch(p.name)), key=step_of)


def retain(root: Path, keep: int) -> None:
    """Keep the last `keep` checkpoints (plus the one a `best` pointer names: folders of older versions,
    which pinned the best step's checkpoint; the best model now lives once, in the run's `best/`)."""
    tags = _tags(root)
    kept = set(tags[-keep:])
    best = root / "best"
    if best.is_file():
        kept.add(best.read_text().strip())
    for t in tags:
        if t not in kept:
            shutil.rmtree(root / t, ignore_errors=True)


def clean_leftovers(root: Path) -> list[str]:
    """Rank 0 at startup: finish or drop what killed saves left behind; returns what it did."""
    done: list[str] = []
    if not root.is_dir():
        return done
    for old in sorted(root.glob(".old-step-*")):
        final = root / old.name[len(".old-") :]
        if old.is_dir() and not final.exists():  # killed between the two renames of _publish: put it back
            old.rename(final)
            done.append(f"restored {final.name}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
    for tmp in sorted(root.glob(".tmp-step-*")):  # a save that never completed
        shutil.rmtree(tmp, ignore_errors=True)
        done.append(f"removed {tmp.name}")
    for tmp in sorted(root.glob(".*.tmp")):  # atomic pointer writes (`.latest.XXXX.tmp`) cut short
        if tmp.is_file():
            tmp.unlink()
            done.append(f"removed {tmp.name}")
    return done


def prepare_resume(resume: str, root: Path, keep: int, say: Callable[[str], Any] = print) -> None:
    """Rank 0, before any rank resolves `--resume`: tidy leftovers, check the checkpoint to resume from
    (for `auto`, fall back to the newest intact one before a broken `latest`, or stop listing candidates),
    and move the checkpoints after it aside: the run continues one lineage from there."""
    done = clean_leftovers(root)
    if done:
        say(f"checkpoints: tidied what an interrupted save left in {root}: {', '.join(done)}")
    if resume == "none":
        return
    if resume == "auto":
        chosen = _auto_point(root, say)
        if chosen is None:
            return  # nothing to resume: a fresh start
        point = root / chosen
    else:
        point = Path(resume)
        problem = verify_checkpoint(point)
        if problem:
            raise UserError(
                f"--resume {resume}: the checkpoint is not usable ({problem}); "
                "pass --resume auto or another checkpoints/step-XXXXXXXX folder"
            )
        if _is_in(point, root) and read_pointer(root, "latest") != point.name:
            write_text_atomic(root / "latest", point.name + "\n")  # commit the branch before moving anything
    # a checkpoint from elsewhere (e.g. a resharded copy) starts the lineage anew: all of this folder's go aside
    step = _step(point) if _is_in(point, root) else -1
    _abandon_after(root, point, step, say)
    retain(root, keep)


def _is_in(point: Path, root: Path) -> bool:
    """Whether checkpoint `point` is one of `root`'s own (not a folder elsewhere, e.g. a resharded copy)."""
    return bool(TAG.fullmatch(point.name)) and point.resolve().parent == root.resolve()


def read_pointer(root: Path, name: str) -> str | None:
    path = root / name
    return path.read_text(errors="replace").strip() if path.is_file() else None


def _auto_point(root: Path, say: Callable[[str], Any]) -> str | None:
    """`--resume auto`: the checkpoint `latest` names if it is intact, else the newest intact one before it
    (rewriting `latest`; broken ones set aside as `.broken-step-*`); None when there is none at all."""
    pointer = root / "latest"
    named = read_pointer(root, "latest")
    tags = _tags(root)
    if named is None and not tags:
        return None
    broken: list[str] = []
    if named is not None and TAG.fullmatch(named):
        problem = verify_checkpoint(root / named)
        if problem is None:
            return named
        first = f"{root / named} ({problem})"
        broken = [named] if (root / named).is_dir() else []
        # what comes after `latest` was never committed: only the checkpoints before it are its lineage
        tags = [t for t in tags if step_of(t) < step_of(named)]
    elif named is not None:
        first = f"{pointer} (it names {named[:40]!r}, not a step-XXXXXXXX checkpoint)"
    else:
        first = f"{pointer} (missing)"
    problems = [first]
    chosen = None
    for tag in reversed(tags):
        problem = verify_checkpoint(root / tag)
        if problem is None:
            chosen = tag
            break
        problems.append(f"{tag} ({problem})")
        broken.append(tag)
    if chosen is None:
        raise UserError(
            f"--resume auto: no intact checkpoint in {root}: {'; '.join(problems)}; delete the broken "
            "ones (or the whole folder to start over) or pass --resume PATH"
        )
    for tag in broken:  # kept for inspection, out of retention's and the next resume's way
        shutil.rmtree(root / f".broken-{tag}", ignore_errors=True)
        (root / tag).rename(root / f".broken-{tag}")
    write_text_atomic(pointer, chosen + "\n")
    moved = f"; set aside {', '.join('.broken-' + t for t in broken)}" if broken else ""
    say(
        f"resume: latest checkpoint {first} is not usable; resuming from {root / chosen}, the newest "
        f"intact checkpoint{moved}"
    )
    return chosen


# what a finished branch left in out_dir: it goes with its checkpoints
REPORTED = ("summary.json", "report.json", "model", "loss_curves.png")


def _step(point: Path) -> int:
    """The step of checkpoint `point`, as its meta.json says (its tag's otherwise)."""
    return int(read_meta(point).get("step", step_of(point.name)))


def _abandon_after(root: Path, point: Path, step: int, say: Callable[[str], Any]) -> None:
    """Move the checkpoints after `step` (where the run continues from `point`) into `abandoned-<UTC time>/`,
    with what that branch reported: summary, report, `model/`, and `best/` unless it is of a step up to
    `step` (then it is also the best the resumed state knows: the lowest loss up to `step` is the lowest
    over all steps when it lies there)."""
    later = [t for t in _tags(root) if step_of(t) > step]
    if not later:
        return
    # the step of the abandoned branch's best/ export, as its newest checkpoint records it (None: unknown)
    best_step = read_meta(root / later[-1]).get("best_step") if (root / later[-1] / META).is_file() else None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = root / f"abandoned-{stamp}"
    n = 1
    while aside.exists():
        n += 1
        aside = root / f"abandoned-{stamp}-{n}"
    aside.mkdir(mode=0o700)
    for tag in later:
        (root / tag).rename(aside / tag)
    out, outputs = root.parent, list(REPORTED)
    if best_step is None or best_step > step or read_pointer(root, "best") in later:
        outputs.append("best")  # the export of a best this run no longer reaches
    if read_pointer(root, "best") in later:
        (root / "best").unlink()
    moved = [name for name in outputs if (out / name).exists()]
    for name in moved:
        (out / name).rename(aside / name)
    if read_pointer(root, "latest") in later:  # resumed from elsewhere: the first save here commits anew
        (root / "latest").unlink()
    with_them = f" with {', '.join(moved)}" if moved else ""
    which = "saved after it" if step >= 0 else "of another lineage"
    say(
        f"resume: continuing from {point} (step {_step(point)}); the checkpoints {which} in this folder "
        f"({', '.join(later)}) are an abandoned branch, moved to {aside}{with_them}: never resumed from, "
        "delete it when it is not needed"
    )


def resolve_resume(resume: str, root: Path) -> Path | None:
    """`none` → None; `auto` → the checkpoint `latest` names (None if there is none); else a checkpoint dir."""
    if resume == "none":
        return None
    if resume == "auto":
        pointer = root / "latest"
        if not pointer.is_file():
            return None
        path = root / pointer.read_text().strip()
    else:
        path = Path(resume)
    if not (path / META).is_file():
        raise UserError(
            f"--resume {resume}: {path} is not a complete checkpoint (no {META}); "
            "pass auto or a checkpoints/step-XXXXXXXX folder"
        )
    return path
