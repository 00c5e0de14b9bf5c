"""Checkpoints: `<out>/checkpoints/step-XXXXXXXX/`, atomic, with our own `latest` and `best` pointers.

A save writes the backend's files plus `meta.json` into a temp tag `.tmp-step-XXXXXXXX`, waits for every
rank, and only then rank 0 renames it to `step-XXXXXXXX` and rewrites the `latest` pointer (itself an
atomic file write). A crash or a full disk at any moment therefore leaves `latest` naming a complete
checkpoint. Retention keeps the last `keep` checkpoints plus the one `best` names.

`meta.json` (plain JSON, readable without torch) lets a resume refuse a mismatch — another model, another
data stream, another world size — before any backend touches the files. `hf_config.json` beside it is the
transformers config of the model, where `dist-forget convert zero-to-hf` looks for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dist_forget.engine.backend import Backend
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic, write_text_atomic

META = "meta.json"
HF_CONFIG = "hf_config.json"


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

    def save(self, step: int, client_state: dict[str, Any], meta: dict[str, Any], is_best: bool,
             hf_config: dict[str, Any] | None = None) -> Path:
        tag, tmp = tag_of(step), f".tmp-{tag_of(step)}"
        rank0 = self.backend.rank == 0
        if rank0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.root / tmp, ignore_errors=True)
        self.backend.barrier()
        error = ""
        try:
            self.backend.save(self.root, tmp, client_state)
            if rank0:
                if hf_config is not None:
                    write_json_atomic(self.root / tmp / HF_CONFIG, hf_config)
                write_json_atomic(self.root / tmp / META, {**meta, "step": step, "tag": tag})
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
        raise UserError(f"saving checkpoint {self.root / tag} failed ({error or 'on another rank'}); "
                        f"{still}; free disk space and rerun with --resume auto")

    def _retain(self) -> None:
        tags = sorted((p.name for p in self.root.glob("step-*") if p.is_dir()), key=step_of)
        keep = set(tags[-self.keep:])
        best = self.read_pointer("best")
        if best:
            keep.add(best)
        for t in tags:
            if t not in keep:
                shutil.rmtree(self.root / t, ignore_errors=True)


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
        raise UserError(f"--resume {resume}: {path} is not a complete checkpoint (no {META}); "
                        "pass auto or a checkpoints/step-XXXXXXXX folder")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META).read_text())


def check_compatible(meta: dict[str, Any], path: Path, *, model: dict[str, Any], fingerprint: str,
                     world_size: int, engine: str, zero_stage: int) -> None:
    """Refuse to resume from a checkpoint that another model, data stream or world size wrote."""
    if meta.get("model") != model:
        raise UserError(f"checkpoint {path} holds another model ({_describe(meta.get('model'))}) than this "
                        f"config ({_describe(model)}); use that model's config or another out_dir")
    if meta.get("world_size") != world_size:
        raise UserError(f"checkpoint {path} was written by {meta.get('world_size')} ranks, this run has "
                        f"{world_size}; run `dist-forget convert reshard --checkpoint {path} --out DIR "
                        f"--world-size {world_size}` and resume from DIR, or launch {meta.get('world_size')} ranks")
    if meta.get("data_fingerprint") != fingerprint:
        raise UserError(f"checkpoint {path} was trained on data stream {meta.get('data_fingerprint')}, this "
                        f"config gives {fingerprint} (data, p, D, seed or shards changed); restore the data "
                        "settings or start a new out_dir")
    if meta.get("engine") != engine or meta.get("zero_stage") != zero_stage:
        raise UserError(f"checkpoint {path} was written by engine={meta.get('engine')} "
                        f"zero_stage={meta.get('zero_stage')}, this run uses engine={engine} "
                        f"zero_stage={zero_stage}; resume with the same engine settings")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _describe(sig: Any) -> str:
    if not isinstance(sig, dict):
        return "unknown"
    return (f"{sig.get('size') or sig.get('architecture')}: hidden {sig.get('hidden')}, layers {sig.get('layers')}, "
            f"vocab {sig.get('vocab')}, N {sig.get('non_embedding_params')}")
