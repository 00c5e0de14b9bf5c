"""Every YAML under configs/ loads into its dataclass, so a shipped config never rots."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from dist_forget.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# configs/<folder>/ -> the dataclass its files are views of ("module:Class"; tried in order)
CLASSES = {
    "model": ["dist_forget.engine.config:ModelConfig"],
    "pretrain": ["dist_forget.engine.config:RunConfig"],
    "finetune": ["dist_forget.engine.config:RunConfig"],
    "sweep": ["dist_forget.sweep.config:SweepConfig", "dist_forget.sweep:SweepConfig"],
}


def _class_for(folder: str) -> type | None:
    for target in CLASSES.get(folder, []):
        module, _, name = target.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    return None


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path: Path):
    folder = path.relative_to(CONFIGS).parts[0]
    cls = _class_for(folder)
    if cls is None:
        pytest.skip(f"no config class known for configs/{folder}/")
    load_config(cls, path)


def test_every_ladder_size_has_a_model_config():
    from dist_forget.models.ladder import LADDER

    assert {p.stem for p in (CONFIGS / "model").glob("*.yaml")} >= set(LADDER)
