"""The single-process and DeepSpeed (ZeRO stage 0-3) checkpoint layout: its file names, the single
backend's writer and reader, and the reader of DeepSpeed's partitioned files (`ZeroCheckpoint`).

A tag folder holds DeepSpeed's names (the single backend mirrors a stage-0 save):

    mp_rank_00_model_states.pt                  {"module", "optimizer" (single), ..., client state}
    zero_pp_rank_R_mp_rank_00_model_states.pt   per rank under ZeRO-3 (module partitions)
    [bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt   per rank under ZeRO 1-3: {"optimizer_state_dict"}

DeepSpeed stores the fp32 master weights and every optimizer state tensor as flat per-rank partitions:
- stage 1/2: per param group, the parameters (each followed by its alignment padding) are concatenated
  and the flat vector is cut into `world` equal slices (zero padding at the end of the last one);
- stage 3: every parameter is padded to a multiple of `world` and cut on its own; a rank's flat group
  is its slice of each parameter in turn.
`ZeroCheckpoint` undoes that for the weights *and* for every state key the optimizer made (so the
AnchoredAdamW anchor comes back too, which DeepSpeed's own `zero_to_fp32` and universal checkpoint drop).
DeepSpeed itself writes these files in training; `convert/reshard.py` writes them for another world size
with the names below.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.hf import OPTIM_FORMAT
from dist_forget.errors import UserError
from dist_forget.safeload import deepspeed_safe_globals, load_pt

MODEL_FILE = "mp_rank_00_model_states.pt"  # stage 0-2 (and the single backend): the one model file


def zero_model_file(rank: int) -> str:
    """ZeRO-3: each rank's model-states file."""
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


def zero_optim_file(rank: int, bf16: bool = False) -> str:
    """ZeRO 1-3: each rank's optimizer partition (`bf16_` prefixed when DeepSpeed's bf16 optimizer wrote it)."""
    return f"{'bf16_' if bf16 else ''}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"


def write_single(
    folder: Path, module: dict[str, Any], optimizer: dict[str, Any], client: dict[str, Any]
) -> None:
    """The single backend's save: DeepSpeed's stage-0 model file, the client state at its top level."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"module": module, "optimizer": optimizer, **client}, folder / MODEL_FILE)


def read_single(folder: Path, device: Any = "cpu") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(model state, optimizer state, client state) of a `write_single` folder, weights-only."""
    path = Path(folder) / MODEL_FILE
    if not path.is_file():
        raise UserError(
            f"checkpoint {path.parent} has no {MODEL_FILE}; was it written by engine=single? "
            "resume with the engine that wrote it"
        )
    state = load_pt(path, map_location=device)
    return state.pop("module"), state.pop("optimizer"), state


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
            model_paths = [path / MODEL_FILE]
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
        """Whole per-parameter optimizer state in our named format (checkpoint/hf.py: OPTIM_FORMAT)."""
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
        return {"format": OPTIM_FORMAT, "state": state, "param_groups": groups}

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
