"""`model.init_from` resolved to a Hugging Face folder before any model is built (models/ reads HF folders
only): a Megatron folder, ours or megatron-core's, is converted once into the model cache; everything
else (smollm2, an HF folder, a run folder) is models/hf.resolve_init's."""

from __future__ import annotations

from pathlib import Path

from dist_forget.checkpoint.megatron import hf_folder_for_init, is_megatron_folder
from dist_forget.checkpoint.meta import is_training_checkpoint
from dist_forget.errors import UserError
from dist_forget.models import hf


def resolve(init_from: str, cache_dir: str | Path) -> Path:
    """The HF folder `model.init_from` names: smollm2, an HF folder, one of our run folders (its `model/`),
    or a Megatron folder, ours or megatron-core's torch_dist (converted once into `cache_dir`)."""
    path = Path(init_from)
    has_config = any((c / "config.json").is_file() for c in (path / "model", path))
    if init_from != "smollm2" and not has_config:
        # ours (hf-to-megatron, engine=megatron; any tp/pp) or megatron-core's (Megatron-LM, NeMo, --format dist)
        if is_megatron_folder(path):
            return hf_folder_for_init(path, cache_dir)
        if is_training_checkpoint(path):
            raise UserError(
                f"model.init_from = {init_from} is a training checkpoint; export it first with "
                f"`dist-forget convert zero-to-hf`, or point at the run folder's model/ export"
            )
    return hf.resolve_init(init_from, cache_dir)
