"""A DeepSpeed ZeRO checkpoint (stage 1, 2 or 3, any world size) as a Hugging Face folder.

The checkpoint is read by `dist_forget.checkpoint.zero.ZeroCheckpoint` (whole per-parameter tensors, the
optimizer state with the AnchoredAdamW anchor included); `zero_to_hf_folder` writes the result as a
Hugging Face model folder (+ tokenizer, + our named optimizer.pt).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.hf import OPTIM_FILE
from dist_forget.checkpoint.zero import ZeroCheckpoint
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir


def _find_hf_config(ckpt: Path, hf_config: Path | None) -> dict[str, Any]:
    candidates = (
        [hf_config]
        if hf_config is not None
        else [
            d / name
            for d in (ckpt, ckpt.parent, ckpt.parent.parent)
            for name in ("hf_config.json", "config.json")
        ]
    )
    for cand in candidates:
        path = cand / "config.json" if cand.is_dir() else cand
        if path.is_file():
            data = json.loads(path.read_text())
            if "model_type" in data:  # a run's own config.json is not a transformers config
                return data
            if hf_config is not None:
                raise UserError(f"--hf-config {path}: no 'model_type' key, not a transformers config.json")
    raise UserError(
        f"no transformers config.json found for {ckpt} (looked in it and its two parents); "
        "pass --hf-config PATH (a config.json or a model folder)"
    )


def zero_to_hf_folder(
    checkpoint: Path,
    out: Path,
    hf_config: Path | None = None,
    tokenizer: Path | None = None,
    with_optimizer: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `out/` = model.safetensors + config.json (+ tokenizer, + optimizer.safetensors). Returns a summary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} exists and is not empty; pass --overwrite or another --out")
    ckpt = ZeroCheckpoint.load(checkpoint)
    cfg_dict = _find_hf_config(checkpoint, hf_config)
    cfg = AutoConfig.for_model(**cfg_dict)
    sd = ckpt.weights()
    model = AutoModelForCausalLM.from_config(cfg)
    expected = model.state_dict()
    for name, tensor in sd.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"checkpoint parameter {name!r} has shape {tuple(tensor.shape)} but the config "
                f"builds {tuple(expected[name].shape)}; pass the config the run was trained with"
            )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(ckpt.shared_params())
    missing = [
        m
        for m in missing
        if m not in tied and not (getattr(cfg, "tie_word_embeddings", False) and m == "lm_head.weight")
    ]
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise UserError(
            f"checkpoint and config disagree on parameter {bad!r} "
            f"({'missing from' if missing else 'unknown to'} the checkpoint); pass the matching --hf-config"
        )
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "stage": ckpt.stage,
        "world_size": ckpt.world,
        "parameters": sum(t.numel() for n, t in sd.items() if n not in tied),
    }
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tok_dir = tokenizer if tokenizer.is_dir() else tokenizer.parent
            copied = [
                f
                for f in tok_dir.iterdir()
                if f.is_file()
                and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens"))
            ]
            if not copied:
                raise UserError(
                    f"--tokenizer {tokenizer}: no tokenizer files (tokenizer.json, vocab, ...) there"
                )
            for f in copied:
                shutil.copy2(f, tmp / f.name)
            summary["tokenizer_files"] = sorted(f.name for f in copied)
        if with_optimizer:
            torch.save(ckpt.named_optimizer_state(), tmp / OPTIM_FILE)
            summary["optimizer_keys"] = ckpt.state_keys()
            summary["step"] = float(ckpt.scalar_state().get("step", 0))
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
