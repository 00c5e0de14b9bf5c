"""Where a megatron-core checkpoint folder is, and what its small files say (discovery; no tensor is read).

A folder holds `metadata.json` (the backends: torch_dist and torch), `common.pt` (what is not sharded:
Megatron-LM's `args`, `iteration`, `checkpoint_version`; ours add {"dist_forget": {"format",
"hf_config"}}), DCP's `.metadata` and the `.distcp` tensor files (checkpoint/dcp_io.py). A Megatron-LM save
dir holds it as `iter_NNNNNNN/` or `release/`, named by `latest_checkpointed_iteration.txt`; a NeMo
checkpoint under `weights/` (NeMo 2) or `model_weights/` (NeMo 1, unpacked). `common.pt` is read
weights-only, allowing only Megatron-LM's Namespace and megatron-core's own safe classes and enums.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.models.mcore_map import hf_config_from_args, megatron_lm_args
from dist_forget.safeload import load_pt_permitting

FORMAT = "dist-forget-mcore-v1"  # our entry in common.pt; the layout itself is megatron-core's
BACKEND = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
METADATA_JSON, COMMON = "metadata.json", "common.pt"
TRACKER = "latest_checkpointed_iteration.txt"  # Megatron-LM's save dir: names iter_NNNNNNN or release
RELEASE = "release"  # the iteration name of a converted (not trained) checkpoint in Megatron-LM
NEMO_WEIGHTS = ("weights", "model_weights")  # NeMo 2 checkpoint dir; NeMo 1 .nemo archive, unpacked


# ---------------------------------------------------------------------------------------------------
# where a folder is


def find_folder(path: str | Path) -> Path | None:
    """The torch_dist folder `path` is or names (a Megatron-LM save dir via its tracker file, a NeMo
    checkpoint's weights folder), else None."""
    path = Path(path)
    if (path / METADATA_JSON).is_file():
        return path
    for sub in NEMO_WEIGHTS:
        if (path / sub / METADATA_JSON).is_file():
            return path / sub
    tracker = path / TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        sub = path / (RELEASE if text == RELEASE else f"iter_{int(text):07d}" if text.isdigit() else text)
        if (sub / METADATA_JSON).is_file():
            return sub
    return None


def resolve(path: str | Path) -> Path:
    """`find_folder`, or a one-line error saying what a folder of this format holds."""
    folder = find_folder(path)
    if folder is None:
        raise UserError(
            f"{path} is not a megatron-core checkpoint (no {METADATA_JSON}, no {TRACKER}); pass a folder "
            "written by `convert hf-to-megatron --format dist`, Megatron-LM/NeMo (--ckpt-format torch_dist) "
            "or megatron-core's dist_checkpointing.save"
        )
    meta_path = folder / METADATA_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise UserError(f"{meta_path}: not valid JSON; the checkpoint is damaged") from None
    if meta.get("sharded_backend") != "torch_dist" or meta.get("common_backend", "torch") != "torch":
        raise UserError(
            f"{meta_path}: sharded_backend={meta.get('sharded_backend')!r}, "
            f"common_backend={meta.get('common_backend')!r}; only torch_dist/torch reads here (re-save it "
            "with Megatron-LM --ckpt-format torch_dist, or convert it with megatron-core's "
            "dist_checkpointing first)"
        )
    return folder


# ---------------------------------------------------------------------------------------------------
# common.pt and the architecture


def common_state(cfg: dict[str, Any], tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """common.pt of a folder we write: Megatron-LM's entries plus ours (the exact HF config)."""
    return {
        "args": megatron_lm_args(cfg, tp, pp),
        "checkpoint_version": 3.0,
        "iteration": 0,
        "dist_forget": {"format": FORMAT, "hf_config": cfg},
    }


def permit_common(name: str) -> Any | None:
    """What a Megatron-LM common.pt (or a pickled object of its .distcp files) may hold beyond plain data:
    the classes megatron-core itself allows for weights-only loading (`megatron.core.safe_globals`: its
    args Namespace, numpy arrays of the RNG state, BytesIO, its enums...) and any other enum of megatron's.
    Weights-only loading only constructs such a class from its value; nothing else is allowed."""
    if name == "argparse.Namespace":
        return argparse.Namespace
    try:
        from megatron.core.safe_globals import SAFE_GLOBALS
    except ImportError:  # megatron-core absent: Megatron-LM files need it anyway
        SAFE_GLOBALS = []  # noqa: N806 - megatron's name
    for cls in SAFE_GLOBALS:
        if f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}" == name:
            return cls
    module, _, attr = name.rpartition(".")
    if not module.startswith("megatron."):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, enum.Enum) else None


def load_common(folder: Path) -> dict[str, Any]:
    """common.pt, weights-only (see `permit_common`); {} when the folder has none of it."""
    path = folder / COMMON
    if not path.is_file():
        return {}
    common = load_pt_permitting(path, permit_common)
    if not isinstance(common, dict):
        raise UserError(f"{path}: holds a {type(common).__name__}, not megatron-core's common state dict")
    return common


def architecture(
    folder: Path, common: dict[str, Any], hf_config: dict[str, Any] | None, vocab: int
) -> dict[str, Any]:
    """The HF config of a folder: given, ours (common.pt), or from Megatron-LM's args (common.pt)."""
    if hf_config is not None:
        return hf_config
    ours = common.get("dist_forget")
    if isinstance(ours, dict) and ours.get("format") == FORMAT:
        return dict(ours["hf_config"])
    if common.get("args") is not None:
        return hf_config_from_args(common["args"], vocab, str(folder / COMMON))
    raise UserError(
        f"{folder}: the checkpoint says nothing of its architecture (no args or dist_forget entry in "
        f"{COMMON}); pass --hf-config with the model's transformers config.json"
    )
