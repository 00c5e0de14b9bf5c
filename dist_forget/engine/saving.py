"""Checkpoint + export for one run: what goes into each checkpoint beside the backend's files (client
state: each stateful part's `state_dict()` at save time, by the name the Saver was given it under, and the
config; meta.json), restoring it (each part's `load_state_dict()`), and the HF folder exports (`best/` at
every new best evaluation, `model/` at the end). Tags, pointers and retention: run_folder.py.

The best step is kept once, as the `best/` export (weights + tokenizer: what the runs table's row was
measured on). The checkpoint saved with it is an ordinary resume point that `checkpoint.keep` retires like
any other: pinning it too would keep a second copy of those weights plus the optimizer state (Adam moments
and the anchor θ₀: three more copies of the model), 2.1 GB beside best/'s 0.5 GB for SmolLM2-135M in fp32,
which only a resume from that exact step could use. What each save costs on disk is printed at every new
best and kept in report.json (`disk_bytes`).

An export that fails (a full disk) stops every rank with one line naming the folder; the checkpoint of that
step is complete, and `--resume auto` exports again: `model/` at the end, `best/` when the resumed
checkpoint is the best one and `best/` is missing (a failed export of `best/` removes the previous one,
which no longer matches `best`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from dist_forget.checkpoint.meta import CONTROL, TRAIN, pack_client, train_record, unpack_client
from dist_forget.engine.run_folder import CheckpointManager
from dist_forget.engine.run_state import RunState
from dist_forget.errors import UserError
from dist_forget.io import DISK_FULL, disk_full
from dist_forget.models import hf


class Stateful(Protocol):
    """A part of the run that a restart restores: plain data out, the same data back in."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Saver:
    def __init__(
        self,
        ckpt: CheckpointManager,
        states: Mapping[str, Stateful],
        meta: dict[str, Any],
        hf_config: Any,
        every: int,
        out: Path,
        tokenizer_dir: Path | None,
    ):
        """`states`: every part a restart restores, by its client-state name (checkpoint/meta.py: DATA,
        TRAIN the RunState, CONTROL); each is read at save time and loaded at restore, nothing copied."""
        self.ckpt, self.backend, self.states = ckpt, ckpt.backend, dict(states)
        state = self.states[TRAIN]
        assert isinstance(state, RunState)
        self.state = state  # the step and best step each save and export are of
        self.meta, self.hf_config, self.every = meta, hf_config, every
        self.out, self.tokenizer_dir = out, tokenizer_dir
        self.last_saved = -1  # the step of the newest checkpoint this run wrote or resumed from
        self.disk: dict[str, int] = {}  # bytes of the newest checkpoint and of each export (report.json)

    def restore(self, path: Path) -> None:
        """Load checkpoint `path` (collective): weights, optimizer and every part's state it holds (a part it
        holds none for keeps the state it starts with)."""
        saved = unpack_client(self.backend.load(path.parent, path.name))
        for name, part in self.states.items():
            if name in saved:
                part.load_state_dict(saved[name])
        self.last_saved = self.state.step
        s = self.state
        # the resumed step is the best one but its export is missing (abandoned with its branch, or a failed
        # or killed export): it is exported now, from the weights just loaded. Rank 0 decides for all.
        missing = self.backend.rank == 0 and 0 < s.best_step == s.step and not (self.out / "best").is_dir()
        (again,) = self.backend.all_reduce_sum([1.0 if missing else 0.0])
        if again:
            self.export("best")

    def due(self, step: int) -> bool:
        return bool(self.every and step % self.every == 0)

    def save(self) -> None:
        """A checkpoint of the current step (collective): a resume point, never pinned (module docstring)."""
        config = json.dumps(self.meta["config"])  # a string: converters rewrite it (checkpoint/meta.py)
        client = pack_client(self._state_dicts(), config)
        hf_config = self.hf_config.to_dict()
        hf_config.pop("_name_or_path", None)  # the init folder, a path of this machine
        # best_step: which step the best/ export is of, for a resume that abandons this branch (run_folder.py)
        meta = {**self.meta, "best_step": self.state.best_step}
        path = self.ckpt.save(self.state.step, client, meta, hf_config=hf_config)
        self.last_saved = self.state.step
        if self.backend.rank == 0:
            self.disk["checkpoint"] = folder_bytes(path)

    def _state_dicts(self) -> dict[str, dict[str, Any]]:
        return {name: part.state_dict() for name, part in self.states.items()}

    def run_record(self) -> dict[str, Any]:
        """The run state as the checkpoints hold it (controller state included): report.json starts with it."""
        return train_record(
            {name: self.states[name].state_dict() for name in (TRAIN, CONTROL) if name in self.states}
        )

    def export(self, folder: str) -> None:
        """The model as an HF folder `out/folder`, with its tokenizer (collective; rank 0 writes)."""
        sd, path = self.backend.full_state_dict(), self.out / folder
        failure: Exception | None = None
        full = False
        if self.backend.rank == 0:
            try:
                hf.save_folder(sd, self.hf_config, path, self.tokenizer_dir)
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it, whatever the writer raised
                failure, full = exc, disk_full(exc, path)
                if folder == "best":  # the previous export no longer matches `best`: a resume redoes it
                    shutil.rmtree(path, ignore_errors=True)
        (failed,) = self.backend.all_reduce_sum([1.0 if failure is not None else 0.0])
        if failed:
            if failure is not None and not full and not isinstance(failure, UserError):
                raise failure  # a bug, with its traceback
            last = self.ckpt.read_pointer("latest")
            why = DISK_FULL if full else str(failure) if failure is not None else "on rank 0"
            raise UserError(
                f"exporting {path} failed ({why}); the checkpoint {self.ckpt.root / str(last)} is complete: free "
                "disk space and rerun with --resume auto, which exports it again"
            )
        if self.backend.rank == 0:
            self.disk[folder] = folder_bytes(path)
            if folder == "best":
                print(
                    f"saved: best/ {_size(self.disk['best'])} (the step-{self.state.step} model); its "
                    f"checkpoint {_size(self.disk.get('checkpoint', 0))}, kept while among the last "
                    f"{self.ckpt.keep} (checkpoint.keep)",
                    flush=True,
                )

    def finish(self) -> None:
        """The last checkpoint (unless a resume found the run already at its end) and the `model/` export."""
        if self.last_saved != self.state.step:
            self.save()
        self.export("model")

    def diverged(self, loss: float) -> UserError:
        """The error for a non-finite loss in the step after `state.step`, naming where to resume from."""
        last = self.ckpt.read_pointer("latest")
        return UserError(
            f"training loss became {loss} at step {self.state.step + 1}; the last good "
            f"checkpoint is {self.ckpt.root / last if last else 'none'}; lower optim.lr or raise "
            "schedule.warmup, then --resume auto"
        )


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (what a checkpoint or an export costs on disk)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
