"""Read a DeepSpeed ZeRO checkpoint (stage 1, 2 or 3, any world size) into whole per-parameter tensors.

DeepSpeed stores the fp32 master weights and every optimizer state tensor as flat per-rank partitions:
- stage 1/2: per param group, the parameters (each followed by its alignment padding) are concatenated
  and the flat vector is cut into `world` equal slices (zero padding at the end of the last one);
- stage 3: every parameter is padded to a multiple of `world` and cut on its own; a rank's flat group
  is its slice of each parameter in turn.
`ZeroCheckpoint` undoes that for the weights *and* for every state key the optimizer made (so the
AnchoredAdamW anchor comes back too, which DeepSpeed's own `zero_to_fp32` and universal checkpoint drop).
`zero_to_hf_folder` writes the result as a Hugging Face model folder.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir
from dist_forget.safeload import deepspeed_safe_globals, load_pt

OPTIM = "optimizer_state_dict"


def load_ds_file(path: Path) -> dict[str, Any]:
    # weights only, plus the three small classes DeepSpeed pickles into its files (dist_forget/safeload.py)
    return load_pt(path, allow=deepspeed_safe_globals())


def _rank_files(ckpt: Path, kind: str) -> list[Path]:
    files = sorted(
        ckpt.glob(f"*zero_pp_rank_*_mp_rank_00_{kind}.pt"),
        key=lambda p: int(p.name.split("zero_pp_rank_")[1].split("_")[0]),
    )
    return files


@dataclass
class ZeroCheckpoint:
    path: Path
    stage: int
    world: int
    model_states: list[dict[str, Any]]  # stage 1/2: one file; stage 3: one per rank
    optim: list[dict[str, Any]]  # the `optimizer_state_dict` of each rank's optim file
    optim_files: list[dict[str, Any]]  # each rank's whole optim file (ds_config, ds_version, ...)

    @classmethod
    def load(cls, path: str | Path) -> ZeroCheckpoint:
        path = Path(path)
        if not path.is_dir():
            raise UserError(
                f"checkpoint {path} is not a directory; pass a DeepSpeed tag folder "
                "such as <run>/checkpoints/step-00000100"
            )
        optim_paths = _rank_files(path, "optim_states")
        if not optim_paths:
            raise UserError(
                f"checkpoint {path} has no *_optim_states.pt files; it is not a ZeRO checkpoint "
                "(or was saved without optimizer states)"
            )
        optim_files = [load_ds_file(p) for p in optim_paths]
        optim = [f[OPTIM] for f in optim_files]
        stage = int(optim[0]["zero_stage"])
        count = optim[0]["partition_count"]
        world = max(count) if isinstance(count, list) else int(count)
        if world != len(optim_paths):
            raise UserError(
                f"checkpoint {path}: partition count {world} but {len(optim_paths)} optim files; "
                "the save was incomplete, use an earlier checkpoint"
            )
        if stage == 3:
            model_paths = _rank_files(path, "model_states")
        else:
            model_paths = [path / "mp_rank_00_model_states.pt"]
        missing = [p for p in model_paths if not p.is_file()]
        if missing or not model_paths:
            raise UserError(
                f"checkpoint {path}: model states file missing ({missing[0] if missing else '*'}); "
                "the save was incomplete, use an earlier checkpoint"
            )
        model_states = [load_ds_file(p) for p in model_paths]
        return cls(path, stage, world, model_states, optim, optim_files)

    # --- layout -------------------------------------------------------------------------------------
    @property
    def param_shapes(self) -> list[OrderedDict[str, torch.Size]]:
        return self.model_states[0]["param_shapes"]

    def group_paddings(self, group: int) -> list[int]:
        """Stage 1/2 alignment padding after each parameter of `group` (world-size independent)."""
        paddings = self.optim[0].get("param_alignment_paddings")
        n = len(self.param_shapes[group])
        return list(paddings[group]) if paddings is not None else [0] * n

    def state_keys(self) -> list[str]:
        """Tensor state keys the optimizer keeps per parameter (e.g. exp_avg, exp_avg_sq, anchor)."""
        state = self._base_state(0, 0)
        return [k for k, v in state.items() if torch.is_tensor(v) and v.dim() == 1 and v.numel() > 1]

    def _base_state(self, rank: int, group: int) -> dict[str, Any]:
        base = self.optim[rank]["base_optimizer_state"] if self.stage <= 2 else self.optim[rank][OPTIM]
        if isinstance(base, list):  # stage 1/2 "elastic" layout: a list of per-group states
            return base[group]
        pid = base["param_groups"][group]["params"][0] if self.stage <= 2 else group
        return base["state"].get(pid, {})

    def scalar_state(self) -> dict[str, Any]:
        """Non-partitioned state (the step counter), identical on every rank."""
        state = self._base_state(0, 0)
        return {k: v for k, v in state.items() if k not in self.state_keys()}

    # --- consolidation ------------------------------------------------------------------------------
    def _stage12_flat(self, key: str, group: int) -> torch.Tensor:
        parts = []
        for rank in range(self.world):
            if key == "fp32":
                t = self.optim[rank]["single_partition_of_fp32_groups"][group]  # saved without padding
            else:
                state = self._base_state(rank, group)
                if key not in state:
                    raise UserError(
                        f"checkpoint {self.path}: rank {rank} group {group} has no {key!r} "
                        "optimizer state; it was not written by AnchoredAdamW"
                    )
                t = state[key]
                base = self.optim[rank]["base_optimizer_state"]
                if isinstance(base, dict):  # rigid layout keeps the last rank's padding: drop it
                    t = t[: t.numel() - int(self.optim[rank]["group_paddings"][group])]
            parts.append(t.reshape(-1))
        return torch.cat(parts)

    def _stage3_rank_flat(self, key: str, rank: int) -> torch.Tensor:
        if key == "fp32":
            return torch.cat([t.reshape(-1) for t in self.optim[rank]["fp32_flat_groups"]])
        base = self.optim[rank][OPTIM]
        parts = []
        for sub in sorted(base["state"]):
            if key not in base["state"][sub]:
                raise UserError(
                    f"checkpoint {self.path}: rank {rank} sub-group {sub} has no {key!r} "
                    "optimizer state; it was not written by AnchoredAdamW"
                )
            parts.append(base["state"][sub][key].reshape(-1))
        return torch.cat(parts)

    def consolidate(self, key: str = "fp32") -> OrderedDict[str, torch.Tensor]:
        """Whole tensors by parameter name: key "fp32" gives the master weights, else that state key."""
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        if self.stage <= 2:
            for g, shapes in enumerate(self.param_shapes):
                flat = self._stage12_flat(key, g)
                offset = 0
                for (name, shape), pad in zip(shapes.items(), self.group_paddings(g)):
                    n = math.prod(shape)
                    out[name] = flat[offset : offset + n].view(shape).clone()
                    offset += n + pad
                if offset - (self.group_paddings(g)[-1] if shapes else 0) > flat.numel():
                    raise UserError(
                        f"checkpoint {self.path}: group {g} holds {flat.numel()} values, fewer than "
                        "its parameters need; the files do not belong together"
                    )
        else:
            flats = [self._stage3_rank_flat(key, r) for r in range(self.world)]
            offset = 0
            for shapes in self.param_shapes:
                for name, shape in shapes.items():
                    n = math.prod(shape)
                    part = math.ceil(n / self.world)
                    whole = torch.cat([f[offset : offset + part] for f in flats])
                    out[name] = whole[:n].view(shape).clone()
                    offset += part
        return out

    def named_optimizer_state(self) -> dict[str, Any]:
        """Whole per-parameter optimizer state in the shared HF-side format (see convert/megatron_hf.py)."""
        per_key = {key: self.consolidate(key) for key in self.state_keys()}
        scalars = self.scalar_state()
        state = {
            name: {
                **{k: v.clone() if torch.is_tensor(v) else v for k, v in scalars.items()},
                **{key: per_key[key][name] for key in per_key},
            }
            for shapes in self.param_shapes
            for name in shapes
        }
        base = self.optim[0]["base_optimizer_state"] if self.stage <= 2 else self.optim[0][OPTIM]
        hyper = base["param_groups"] if isinstance(base, dict) else [{} for _ in self.param_shapes]
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(shapes)}
            for g, shapes in zip(hyper, self.param_shapes)
        ]
        return {"format": "dist-forget-named-optim-v1", "state": state, "param_groups": groups}

    def shared_params(self) -> dict[str, str]:
        """Tied weights: alias name -> stored name (e.g. lm_head.weight -> model.embed_tokens.weight)."""
        return dict(self.model_states[0].get("shared_params") or {})

    def weights(self) -> OrderedDict[str, torch.Tensor]:
        sd = self.consolidate("fp32")
        frozen = self.model_states[0].get("frozen_param_shapes")
        if frozen:
            if self.stage == 3:
                raise UserError(
                    f"checkpoint {self.path}: frozen parameters under ZeRO-3 are not supported; "
                    "unfreeze them or convert with DeepSpeed's zero_to_fp32"
                )
            module = self.model_states[0]["module"]
            for name in frozen:
                sd[name] = module[name].float().clone()
        for buffer in self.model_states[0].get("buffer_names", []):
            sd[buffer] = self.model_states[0]["module"][buffer].clone()
        for alias, source in self.shared_params().items():
            sd[alias] = sd[source]
        return sd


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
            torch.save(ckpt.named_optimizer_state(), tmp / "optimizer.pt")
            summary["optimizer_keys"] = ckpt.state_keys()
            summary["step"] = float(ckpt.scalar_state().get("step", 0))
        (tmp / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
