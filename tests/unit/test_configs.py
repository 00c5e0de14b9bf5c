"""Every YAML under configs/ loads into its dataclass, so a shipped config never rots."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from dist_forget.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# configs/<folder>/ -> the dataclass its files are views of ("module:Class")
CLASSES = {
    "model": "dist_forget.engine.config:ModelConfig",
    "pretrain": "dist_forget.engine.config:RunConfig",
    "finetune": "dist_forget.engine.config:RunConfig",
    "sweep": "dist_forget.sweep.config:SweepConfig",
}


def _class_for(folder: str) -> type:
    """The config class of a folder; an unknown folder or a failing import fails the test (never skips it)."""
    assert folder in CLASSES, f"configs/{folder}/ has no config class; add it to CLASSES in {__file__}"
    module, _, name = CLASSES[folder].partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path: Path):
    load_config(_class_for(path.relative_to(CONFIGS).parts[0]), path)


def test_every_ladder_size_has_a_model_config():
    from dist_forget.models.ladder import LADDER

    assert {p.stem for p in (CONFIGS / "model").glob("*.yaml")} >= set(LADDER)
