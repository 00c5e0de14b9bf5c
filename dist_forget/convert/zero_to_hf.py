"""A DeepSpeed ZeRO checkpoint (stage 1, 2 or 3, any world size) as a Hugging Face folder.

The checkpoint is read by `dist_forget.checkpoint.zero.ZeroCheckpoint` (whole per-parameter tensors, the
optimizer state with the AnchoredAdamW anchor included); `zero_to_hf_folder` writes the result as a
Hugging Face model folder (+ tokenizer, + our named optimizer.pt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.hf import OPTIM_FILE, find_tokenizer, named_optimizer_state
from dist_forget.checkpoint.zero import MODEL_FILE, ZeroCheckpoint, read_single
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir
from dist_forget.models.hf import with_tokenizer


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
    """Write `out/` = model.safetensors + config.json + the tokenizer (`tokenizer`, else the one the run
    used: checkpoint/hf.find_tokenizer) (+ optimizer.pt). Returns a summary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"output folder {out} exists and is not empty; pass --overwrite or another --out")
    source = _read(checkpoint)
    cfg = AutoConfig.for_model(**_find_hf_config(checkpoint, hf_config))
    tok = find_tokenizer(checkpoint, tokenizer)
    sd = source.weights()
    model = AutoModelForCausalLM.from_config(cfg)
    expected = model.state_dict()
    for name, tensor in sd.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"checkpoint parameter {name!r} has shape {tuple(tensor.shape)} but the config "
                f"builds {tuple(expected[name].shape)}; pass the config the run was trained with"
            )
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = set(source.shared_params())
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
        "checkpoint": checkpoint.name,
        "stage": source.stage,
        "world_size": source.world,
        "parameters": sum(p.numel() for p in model.parameters()),  # tied weights once
    }
    with atomic_dir(out, overwrite=True) as tmp:
        if tok is not None:
            model.config = with_tokenizer(tmp, model.config, tok)
            summary["tokenizer_files"] = sorted(p.name for p in tmp.iterdir())
        model.save_pretrained(tmp, safe_serialization=True)
        if with_optimizer:
            named = (
                source.named_optimizer_state(model)
                if isinstance(source, SingleCheckpoint)
                else source.named_optimizer_state()
            )
            torch.save(named, tmp / OPTIM_FILE)
            summary["optimizer_keys"] = source.state_keys()
            summary["step"] = float(source.scalar_state().get("step", 0))
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _read(checkpoint: Path) -> ZeroCheckpoint | SingleCheckpoint:
    """A DeepSpeed ZeRO checkpoint, or one of engine=single (DeepSpeed's stage-0 layout: one model file)."""
    if (
        checkpoint.is_dir()
        and (checkpoint / MODEL_FILE).is_file()
        and not any(checkpoint.glob("*optim_states.pt"))
    ):
        return SingleCheckpoint.load(checkpoint)
    return ZeroCheckpoint.load(checkpoint)


class SingleCheckpoint:
    """An engine=single checkpoint read like a ZeroCheckpoint: whole tensors already, the optimizer's
    state named through the param groups the trainer built (optim.param_groups, in the model's order)."""

    stage, world = 0, 1

    def __init__(self, module: dict[str, torch.Tensor], optimizer: dict[str, Any]):
        self.module, self.optimizer = module, optimizer

    @classmethod
    def load(cls, path: Path) -> SingleCheckpoint:
        module, optimizer, _ = read_single(path)
        return cls(module, optimizer)

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.module)

    def shared_params(self) -> dict[str, str]:
        return {}

    def state_keys(self) -> list[str]:
        first = next(iter(self.optimizer.get("state", {}).values()), {})
        return [k for k, v in first.items() if torch.is_tensor(v) and v.dim() > 0]

    def scalar_state(self) -> dict[str, Any]:
        first = next(iter(self.optimizer.get("state", {}).values()), {})
        return {k: v for k, v in first.items() if k not in self.state_keys()}

    def named_optimizer_state(self, model: torch.nn.Module) -> dict[str, Any]:
        """Our named format (checkpoint/hf.py) for `model`, the architecture the run trained."""
        from dist_forget.optim import param_groups

        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in param_groups(model, 0.0, 0.0) for p in g["params"]]
        return named_optimizer_state(self.optimizer, order)
