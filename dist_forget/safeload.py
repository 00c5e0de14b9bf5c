"""Loading `.pt` files without running code: the one way this package (and DeepSpeed, through us) reads them.

A `.pt` file is a pickle. Unpickling with `torch.load(weights_only=False)` lets the file call any
Python function (`os.system` included), so a checkpoint copied from another user or cluster could run
code. `load_pt` always uses `weights_only=True`, which accepts tensors, plain containers, numbers and
strings plus an explicit allow-list of classes, and turns a refusal or a damaged file into a one-line
`UserError` naming the file. DeepSpeed's own files need three small classes on that list
(`deepspeed_safe_globals`); `SafeCheckpointEngine` replaces DeepSpeed's `TorchCheckpointEngine` (which
loads with `weights_only=False`) so that `engine.load_checkpoint` goes through `load_pt` too.
"""

from __future__ import annotations

import importlib
import pickle
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dist_forget.errors import UserError

# torch words the refusal in several ways across versions; each names the global the file wants
_UNSUPPORTED = re.compile(r"(?:[Uu]nsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")


class UnsafeCheckpoint(UserError):
    """A file asked to import something weights-only loading refuses: possibly crafted, never a fallback."""


def deepspeed_safe_globals() -> list[Any]:
    """The classes DeepSpeed pickles into its checkpoint files (none of them runs code on load)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def load_pt(
    path: str | Path | BinaryIO, map_location: Any = "cpu", allow: Sequence[Any] = (), where: str = ""
) -> Any:
    """`torch.load(path, weights_only=True)` allowing only the classes in `allow`; a file that holds
    anything else (code, foreign objects) or cannot be read is a one-line UserError naming it.
    `path` may be an open binary stream (bytes stored inside another file); `where` then names it."""
    source = path if hasattr(path, "read") else Path(path)
    path = where or source
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSUPPORTED.search(str(exc))
        what = found.group(1) if found else "an object weights-only loading does not allow"
        raise UnsafeCheckpoint(
            f"{path}: refused to load: the file asks to import {what}, and a checkpoint may only "
            "hold tensors and plain data (loading it could run code); do not use this file, "
            "take the checkpoint from a source you trust"
        ) from None
    except FileNotFoundError:
        raise UserError(
            f"{path}: file is missing; the checkpoint is incomplete, use an earlier one"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which one
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"{path}: cannot be read as a torch checkpoint file ({type(exc).__name__}"
            f"{': ' + first if first else ''}); the file is damaged or truncated, "
            "use an earlier checkpoint or re-save it"
        ) from None


def load_pt_permitting(
    path: str | Path | BinaryIO,
    permit: Callable[[str], Any | None],
    map_location: Any = "cpu",
    where: str = "",
    limit: int = 32,
) -> Any:
    """`load_pt` for files whose extra classes are not known beforehand (a Megatron-LM `common.pt` holds
    `argparse.Namespace` and megatron's enums): each global weights-only loading refuses is shown to
    `permit` (its dotted name); what `permit` returns is allowed and the load retried, None stops it
    with load_pt's UnsafeCheckpoint. Still weights_only=True: an allowed class is only constructed."""
    allow: list[Any] = []
    for _ in range(limit):
        try:
            if hasattr(path, "seek"):
                path.seek(0)
            return load_pt(path, map_location=map_location, allow=allow, where=where)
        except UnsafeCheckpoint as exc:
            found = re.search(r"asks to import ([\w.]+)", str(exc))
            obj = permit(found.group(1)) if found else None
            if obj is None or obj in allow:
                raise
            allow.append(obj)
    raise UnsafeCheckpoint(f"{where or path}: refused to load: it asks for more than {limit} extra classes")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, allowed: Callable[[str, str], bool], where: Path):
        super().__init__(file)
        self._allowed, self._where = allowed, where

    def find_class(self, module: str, name: str) -> Any:
        if not self._allowed(module, name):
            raise UnsafeCheckpoint(
                f"{self._where}: refused to load: the file asks to import {module}.{name}, which this "
                "metadata file never holds (loading it could run code); do not use this file, take the "
                "checkpoint from a source you trust"
            )
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpoint(f"{self._where}: refused to load: unexpected persistent id in a metadata file")


def load_pickle_restricted(path: str | Path, allowed: Callable[[str, str], bool]) -> Any:
    """Unpickle a plain (non-torch) pickle, importing only the globals `allowed(module, name)` accepts.

    For files torch itself reads with bare `pickle.load` (PyTorch DCP's `.metadata`): with an allow-list
    of plain data classes nothing in the file can call code. A refusal or a damaged file is one line."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _RestrictedUnpickler(fh, allowed, path).load()
    except UnsafeCheckpoint:
        raise
    except FileNotFoundError:
        raise UserError(f"{path}: file is missing; the checkpoint is incomplete") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign: say which file
        raise UserError(
            f"{path}: cannot be read ({type(exc).__name__}: {str(exc)[:120]}); the file is damaged "
            "or truncated, re-save the checkpoint"
        ) from None


def verify_pt_files(files: Iterable[Path], allow: Sequence[Any] = ()) -> None:
    """Load every file weights-only (and drop it): raises load_pt's UserError on the first bad one."""
    for file in sorted(files):
        load_pt(file, allow=allow)


def make_safe_checkpoint_engine(current: Any) -> Any:
    """A DeepSpeed checkpoint engine that saves like `current` but loads through `load_pt`.

    Only DeepSpeed's plain `TorchCheckpointEngine` is replaced; any other engine is refused, because
    DeepSpeed's other engines (fast, decoupled, nebula) also unpickle without weights_only.
    """
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    if isinstance(current, SafeCheckpointEngineMixin):
        return current
    if type(current) is not TorchCheckpointEngine:
        raise UserError(
            f"DeepSpeed checkpoint engine {type(current).__name__} loads checkpoints without "
            "weights_only; use DeepSpeed's default torch checkpoint engine"
        )
    safe = _safe_engine_class(TorchCheckpointEngine).__new__(_safe_engine_class(TorchCheckpointEngine))
    safe.__dict__.update(current.__dict__)
    return safe


class SafeCheckpointEngineMixin:
    """`load` through `load_pt` with DeepSpeed's allow-list (see make_safe_checkpoint_engine)."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_pt(path, map_location=map_location, allow=deepspeed_safe_globals())


_SAFE_CLASSES: dict[type, type] = {}


def _safe_engine_class(base: type) -> type:
    if base not in _SAFE_CLASSES:
        _SAFE_CLASSES[base] = type(f"Safe{base.__name__}", (SafeCheckpointEngineMixin, base), {})
    return _SAFE_CLASSES[base]
