"""Checkpoint + export for one run: what goes into each checkpoint beside the backend's files (client
state: data-stream position, run state, config; meta.json), restoring it, and the HF folder exports
(`best/` at every new best evaluation, `model/` at the end). Tags, pointers and retention: checkpoint.py.

An export that fails (a full disk) stops every rank with one line naming the folder; the checkpoint of that
step is complete, and `--resume auto` exports again: `model/` at the end, `best/` when the resumed
checkpoint is the best one and `best/` is missing (a failed export of `best/` removes the previous one,
which no longer matches `best`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from dist_forget.checkpoint.meta import pack_client, unpack_client
from dist_forget.data.mixture import MixedStream
from dist_forget.engine.checkpoint import CheckpointManager
from dist_forget.engine.run_state import RunState
from dist_forget.errors import UserError
from dist_forget.io import DISK_FULL, disk_full
from dist_forget.models import hf


class Saver:
    def __init__(
        self,
        ckpt: CheckpointManager,
        state: RunState,
        stream: MixedStream,
        meta: dict[str, Any],
        hf_config: Any,
        every: int,
        out: Path,
        tokenizer_dir: Path | None,
    ):
        self.ckpt, self.backend, self.state, self.stream = ckpt, ckpt.backend, state, stream
        self.meta, self.hf_config, self.every = meta, hf_config, every
        self.out, self.tokenizer_dir = out, tokenizer_dir
        self.last_saved = -1  # the step of the newest checkpoint this run wrote or resumed from

    def restore(self, path: Path) -> None:
        """Load checkpoint `path` (collective): weights, optimizer, stream position and run state."""
        data, train = unpack_client(self.backend.load(path.parent, path.name))
        self.stream.load_state_dict(data)
        self.state.load_state_dict(train)
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

    def save(self, is_best: bool) -> None:
        """A checkpoint of the current step (collective); `is_best` points `best` at it."""
        config = json.dumps(self.meta["config"])  # a string: converters rewrite it (checkpoint/meta.py)
        client = pack_client(self.stream.state_dict(), self.state.state_dict(), config)
        # best_step: which step the best/ export is of, for a resume that abandons this branch (checkpoint.py)
        meta = {**self.meta, "best_step": self.state.best_step}
        self.ckpt.save(self.state.step, client, meta, is_best=is_best, hf_config=self.hf_config.to_dict())
        self.last_saved = self.state.step

    def export(self, folder: str) -> None:
        """The model as an HF folder `out/folder`, with the shards' tokenizer (collective; rank 0 writes)."""
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
        if not failed:
            return
        if failure is not None and not full and not isinstance(failure, UserError):
            raise failure  # a bug, with its traceback
        last = self.ckpt.read_pointer("latest")
        why = DISK_FULL if full else str(failure) if failure is not None else "on rank 0"
        raise UserError(
            f"exporting {path} failed ({why}); the checkpoint {self.ckpt.root / str(last)} is complete: free "
            "disk space and rerun with --resume auto, which exports it again"
        )

    def finish(self) -> None:
        """The last checkpoint (unless a resume found the run already at its end) and the `model/` export."""
        if self.last_saved != self.state.step:
            self.save(is_best=False)
        self.export("model")

    def diverged(self, loss: float) -> UserError:
        """The error for a non-finite loss in the step after `state.step`, naming where to resume from."""
        last = self.ckpt.read_pointer("latest")
        return UserError(
            f"training loss became {loss} at step {self.state.step + 1}; the last good "
            f"checkpoint is {self.ckpt.root / last if last else 'none'}; lower optim.lr or raise "
            "schedule.warmup, then --resume auto"
        )
