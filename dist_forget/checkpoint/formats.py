"""Each engine's training-checkpoint format behind one interface, keyed by engine (`FORMATS`).

A format knows the files a complete checkpoint of its engine holds (`expected_files`) and how to check one
(`verify`: every file loads weights-only); beyond that it offers the save and load entry points its
backend calls, whose arguments are the format's own (a state dict, DeepSpeed's engine, a Megatron layout):

    single      SINGLE.save / SINGLE.load: DeepSpeed's stage-0 model file (zero.py)
    deepspeed   DeepSpeed's engine writes and reads its files itself; DEEPSPEED.check_files first
    megatron    MEGATRON.run_common / save / load: megatron-core's torch_dist folder (megatron_train.py)

`verify_checkpoint(path)` reads the engine from the checkpoint's meta.json and asks that format, so a
new engine is one more entry here, not one more branch in each caller (engine/run_folder.py resumes).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dist_forget.checkpoint import megatron, megatron_train, zero
from dist_forget.checkpoint.meta import META, read_meta
from dist_forget.errors import UserError
from dist_forget.safeload import UnsafeCheckpoint, deepspeed_safe_globals, verify_pt_files


class Format(ABC):
    """One engine's checkpoint layout inside a `step-XXXXXXXX/` folder (beside meta.json)."""

    engine: str

    @abstractmethod
    def expected_files(self, path: Path, meta: dict[str, Any]) -> list[str]:
        """The files a complete checkpoint `path` of this format holds (beyond meta.json), as the names
        that must be there before anything is read (a format with an index adds the files it names)."""

    @abstractmethod
    def verify(self, path: Path, meta: dict[str, Any]) -> str | None:
        """None if `path` is complete and every file loads weights-only, else what is wrong (one phrase,
        paths relative to `path`). Raises UnsafeCheckpoint when a file asks to import code."""


class _PtFiles(Format):
    """A format of whole `.pt` files, each loaded weights-only with the classes `safe_globals` allows."""

    def safe_globals(self) -> Sequence[Any]:
        return ()

    def verify(self, path: Path, meta: dict[str, Any]) -> str | None:
        files = sorted(path.rglob("*.pt"))
        missing = [name for name in self.expected_files(path, meta) if not (path / name).exists()]
        if missing or not files:
            return f"incomplete: {(missing or ['*.pt'])[0]} is missing"
        return _problem(path, lambda: verify_pt_files(files, allow=self.safe_globals()))


class SingleFormat(_PtFiles):
    """engine=single: DeepSpeed's stage-0 model file, written and read by us (zero.py)."""

    engine = "single"
    save = staticmethod(zero.write_single)
    load = staticmethod(zero.read_single)

    def expected_files(self, path: Path, meta: dict[str, Any]) -> list[str]:
        return [zero.MODEL_FILE]


class DeepSpeedFormat(_PtFiles):
    """engine=deepspeed: DeepSpeed's own files for ZeRO stage 0-3, written and read by its engine."""

    engine = "deepspeed"

    def expected_files(self, path: Path, meta: dict[str, Any]) -> list[str]:
        stage, ranks = meta.get("zero_stage"), range(int(meta.get("world_size") or 1))
        names = [zero.zero_model_file(r) for r in ranks] if stage == 3 else [zero.MODEL_FILE]
        if stage:
            bf16 = (Path(path) / zero.zero_optim_file(0, bf16=True)).exists()
            names += [zero.zero_optim_file(r, bf16) for r in ranks]
        return names

    def safe_globals(self) -> Sequence[Any]:
        return deepspeed_safe_globals()  # imports deepspeed: only when its files are read

    def check_files(self, folder: Path) -> None:
        """Load every file of `folder` weights-only before DeepSpeed opens it: a bad file raises the same
        one-line UserError on every rank that calls this."""
        verify_pt_files(Path(folder).glob("*.pt"), allow=self.safe_globals())


class MegatronFormat(Format):
    """engine=megatron: megatron-core's torch_dist folder with our run state in common.pt
    (megatron_train.py)."""

    engine = "megatron"
    run_common = staticmethod(megatron_train.run_common)
    save = staticmethod(megatron_train.save)
    load = staticmethod(megatron_train.load)

    def expected_files(self, path: Path, meta: dict[str, Any]) -> list[str]:
        return list(megatron_train.REQUIRED)

    def verify(self, path: Path, meta: dict[str, Any]) -> str | None:
        if (path / megatron.META_FILE).is_file():
            return (
                "written in the dist-forget-megatron-v1 layout, which engine=megatron no longer resumes: "
                "convert its weights with `dist-forget convert megatron-to-hf` and start from them with "
                "model.init_from"
            )
        return _problem(path, lambda: megatron_train.check(path))


SINGLE, DEEPSPEED, MEGATRON = SingleFormat(), DeepSpeedFormat(), MegatronFormat()
FORMATS: dict[str, Format] = {f.engine: f for f in (SINGLE, DEEPSPEED, MEGATRON)}


def format_of(meta: dict[str, Any]) -> Format:
    """The format of a checkpoint whose meta.json is `meta`. An engine this version does not know is
    checked as the single layout, the model file every other layout also starts from; the resume's
    compatibility check (meta.py) names the engine that differs."""
    return FORMATS.get(meta.get("engine"), SINGLE)


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
    return format_of(meta).verify(path, meta)


def _problem(path: Path, check: Callable[[], Any]) -> str | None:
    """What `check()` found wrong with checkpoint `path` (its UserError's first clause, paths relative to
    `path`), None if nothing; a file that asks to import code is raised, never reported."""
    try:
        check()
    except UnsafeCheckpoint:
        raise
    except UserError as exc:
        return str(exc).split("; ")[0].replace(f"{path}/", "")
    return None
