"""Checkpoints: `<out>/checkpoints/step-XXXXXXXX/`, atomic, with our own `latest` and `best` pointers.

A save writes the backend's files plus `meta.json` into a temp tag `.tmp-step-XXXXXXXX`, waits for every
rank, and only then rank 0 renames it to `step-XXXXXXXX` and rewrites the `latest` pointer (itself an
atomic file write). A crash or a full disk at any moment therefore leaves `latest` naming a complete
checkpoint. Retention keeps the last `keep` checkpoints plus the one `best` names.

`meta.json` and `hf_config.json` beside the backend's files, and the check a resume makes on them, are
dist_forget/checkpoint/meta.py; the backends' file layouts are dist_forget/checkpoint/ too (zero.py,
megatron_train.py). This module is the engine's side: tags, pointers, retention and the choice of checkpoint.

Startup (rank 0, `prepare_resume`) tidies what a killed save left: a `.tmp-step-*` folder or a `.latest.*.tmp`
pointer temp is dropped, an `.old-step-*` copy is restored if its replacement never arrived (else dropped),
and retention runs again. `--resume auto` then checks the checkpoint `latest` names by loading every file
weights-only (`verify_checkpoint`); a damaged or incomplete one is reported in one line and the newest
intact checkpoint is used instead (broken newer ones are set aside as `.broken-step-*`), or the run stops
listing every candidate and what is wrong with it. A file refused as unsafe (it asks to import code) stops
the run: that is never silently skipped. Checkpoint folders are owner-only (0700).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dist_forget.checkpoint import megatron, megatron_train, zero
from dist_forget.checkpoint.meta import META, read_meta, write_hf_config, write_meta
from dist_forget.engine.backend import Backend
from dist_forget.errors import UserError
from dist_forget.io import write_text_atomic
from dist_forget.safeload import UnsafeCheckpoint, verify_pt_files

TAG = re.compile(r"step-\d{8}")


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("-", 1)[1])


class CheckpointManager:
    def __init__(self, root: Path, backend: Backend, keep: int):
        self.root = Path(root)
        self.backend = backend
        self.keep = keep

    def read_pointer(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text().strip() if path.is_file() else None

    def save(
        self,
        step: int,
        client_state: dict[str, Any],
        meta: dict[str, Any],
        is_best: bool,
        hf_config: dict[str, Any] | None = None,
    ) -> Path:
        tag, tmp = tag_of(step), f".tmp-{tag_of(step)}"
        rank0 = self.backend.rank == 0
        if rank0:
            self.root.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)  # checkpoints hold the config and data state: owner only
            shutil.rmtree(self.root / tmp, ignore_errors=True)
            (self.root / tmp).mkdir(mode=0o700)
        self.backend.barrier()
        error = ""
        try:
            self.backend.save(self.root, tmp, client_state)
            if rank0:
                if hf_config is not None:
                    write_hf_config(self.root / tmp, hf_config)
                write_meta(self.root / tmp, {**meta, "step": step, "tag": tag})
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            error = _first_line(exc)
        self._raise_if_failed(error, tag, tmp)
        if rank0:
            try:
                self._publish(tag, tmp, is_best)
            except OSError as exc:  # e.g. no room left for the new `latest` pointer
                error = _first_line(exc)
        self._raise_if_failed(error, tag, tmp)  # also the final barrier: every rank waits for the rename
        return self.root / tag

    def _publish(self, tag: str, tmp: str, is_best: bool) -> None:
        """Rank 0: the temp tag becomes `tag`, then the pointers name it (last: `latest` is the commit)."""
        final, old = self.root / tag, self.root / f".old-{tag}"
        if final.exists():  # re-saving a step after a resume: keep the old copy until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        (self.root / tmp).rename(final)
        if is_best:
            write_text_atomic(self.root / "best", tag + "\n")
        write_text_atomic(self.root / "latest", tag + "\n")
        shutil.rmtree(old, ignore_errors=True)
        self._retain()

    def _raise_if_failed(self, error: str, tag: str, tmp: str) -> None:
        """Collective: if any rank failed, drop the temp tag and raise the same one-line error everywhere."""
        (failed,) = self.backend.all_reduce_sum([1.0 if error else 0.0])
        if not failed:
            return
        if self.backend.rank == 0:
            shutil.rmtree(self.root / tmp, ignore_errors=True)
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
    """Keep the last `keep` checkpoints plus the one `best` names; remove the others."""
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


def verify_checkpoint(path: Path) -> str | None:
    """None if `path` is a complete checkpoint whose every file loads weights-only, else what is wrong.

    Raises UnsafeCheckpoint when a file asks to import code: that is never a reason to fall back."""
    if not path.is_dir():
        return "missing"
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        return f"incomplete: no {META}"
    except (OSError, ValueError):
        return f"{META} is damaged"
    engine, world, stage = meta.get("engine"), meta.get("world_size"), meta.get("zero_stage")
    if engine == "megatron":
        return _megatron_problem(path)
    files = sorted(path.rglob("*.pt"))
    expected = zero.expected_files(path, engine, stage, world)
    missing = [name for name in expected if not (path / name).exists()]
    if missing or not files:
        return f"incomplete: {(missing or ['*.pt'])[0]} is missing"
    allow: list[Any] = []
    if engine == "deepspeed":
        from dist_forget.safeload import deepspeed_safe_globals

        allow = deepspeed_safe_globals()
    try:
        verify_pt_files(files, allow=allow)
    except UnsafeCheckpoint:
        raise
    except UserError as exc:
        return str(exc).split("; ")[0].replace(f"{path}/", "")
    return None


def _megatron_problem(path: Path) -> str | None:
    """verify_checkpoint of an engine=megatron checkpoint (megatron-core's format)."""
    if (path / megatron.META_FILE).is_file():
        return (
            "written in the dist-forget-megatron-v1 layout, which engine=megatron no longer resumes: convert "
            "its weights with `dist-forget convert megatron-to-hf` and start from them with model.init_from"
        )
    try:
        megatron_train.check(path)
    except UnsafeCheckpoint:
        raise
    except UserError as exc:
        return str(exc).split("; ")[0].replace(f"{path}/", "")
    return None


def prepare_resume(resume: str, root: Path, keep: int, say: Callable[[str], Any] = print) -> None:
    """Rank 0, before any rank resolves `--resume`: tidy leftovers, check the checkpoint to resume from
    and, for `auto`, fall back to the newest intact one (rewriting `latest`) or stop listing candidates."""
    done = clean_leftovers(root)
    if done:
        say(f"checkpoints: tidied what an interrupted save left in {root}: {', '.join(done)}")
    if resume == "none":
        return
    if resume != "auto":
        problem = verify_checkpoint(Path(resume))
        if problem:
            raise UserError(
                f"--resume {resume}: the checkpoint is not usable ({problem}); "
                "pass --resume auto or another checkpoints/step-XXXXXXXX folder"
            )
        return
    pointer = root / "latest"
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else None
    tags = _tags(root)
    if named is None and not tags:
        return  # nothing to resume: a fresh start
    problems: list[str] = []
    if named is not None and TAG.fullmatch(named):
        problem = verify_checkpoint(root / named)
        if problem is None:
            retain(root, keep)
            return
        first = f"{root / named} ({problem})"
    elif named is not None:
        first = f"{pointer} (it names {named[:40]!r}, not a step-XXXXXXXX checkpoint)"
    else:
        first = f"{pointer} (missing)"
    problems.append(first)
    chosen = None
    for tag in reversed(tags):
        if tag == named:
            continue
        problem = verify_checkpoint(root / tag)
        if problem is None:
            chosen = tag
            break
        problems.append(f"{tag} ({problem})")
    if chosen is None:
        raise UserError(
            f"--resume auto: no intact checkpoint in {root}: {'; '.join(problems)}; delete the broken "
            "ones (or the whole folder to start over) or pass --resume PATH"
        )
    aside = [t for t in tags if step_of(t) > step_of(chosen)]
    for tag in aside:  # else retention would count them as the newest and delete intact ones
        shutil.rmtree(root / f".broken-{tag}", ignore_errors=True)
        (root / tag).rename(root / f".broken-{tag}")
    write_text_atomic(pointer, chosen + "\n")
    retain(root, keep)
    moved = f"; set aside {', '.join('.broken-' + t for t in aside)}" if aside else ""
    say(
        f"resume: latest checkpoint {first} is not usable; resuming from {root / chosen}, the newest "
        f"intact checkpoint{moved}"
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
