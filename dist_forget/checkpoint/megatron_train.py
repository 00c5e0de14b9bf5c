"""engine=megatron's training checkpoints, in megatron-core's own format (torch_dist), so that a run resumes
at any TP/PP and megatron-core reads its weights and optimizer state.

A checkpoint (`checkpoints/step-XXXXXXXX/`, beside the engine's meta.json and hf_config.json) is a
megatron-core folder (checkpoint/megatron_dist.py: metadata.json, DCP's `.metadata` and `__R_N.distcp`):

    mcore_map.MODEL_KEYS                 the weights: global tensors, layers stacked
    optimizer.state.<k>.<model key>      k = exp_avg, exp_avg_sq, anchor (Anchored AdamW's θ₀): shaped and
                                         sharded like the weight, keyed as megatron-core keys the state of
                                         its optimizer (`optim_state_to_sharding_state`)
    common.pt   Megatron-LM's args / iteration / checkpoint_version; `optimizer`: {"param_groups": the
                hyper-parameters per group without their params, "state": {"common_step": the Adam step}}
                (megatron-core's FP32Optimizer layout); ours under "dist_forget": format, hf_config,
                `client_state` (the trainer's: data-stream position, run state with the early-stop and
                inject-controller state, config) and `param_names` (HF names per param group).

No RNG state is saved: training draws no random numbers after the model is built (no dropout; the data
stream is a function of its position), so a resume is exact without it.

Every rank of a save writes the blocks of the global tensors its TP/PP slot holds (PyTorch DCP over the
run's process group; a block several ranks hold, e.g. a replicated norm, is written once; data-parallel
replicas write nothing). On load each rank reads the blocks its own slot needs from whatever layout wrote
them, so a resume at another TP/PP is a plain resume. The data stream is split per data-parallel replica,
so another data-parallel size goes through `convert reshard-megatron` (`copy_with_run_state`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.dcp_io import DCP_METADATA, read_dcp_metadata, read_pieces, write_pieces
from dist_forget.checkpoint.hf import OPTIM_FORMAT
from dist_forget.checkpoint.megatron_dist import extra_state_objects, verify_folder
from dist_forget.checkpoint.megatron_folder import (
    BACKEND,
    COMMON,
    FORMAT,
    METADATA_JSON,
    common_state,
    load_common,
)
from dist_forget.checkpoint.megatron_layout import Layout, local_tensors, pieces, shard_of
from dist_forget.errors import UserError
from dist_forget.models.mcore_map import MODEL_KEYS, LlamaDims, mcore_shapes

STATE_PREFIX = "optimizer.state."
STEP = "step"  # the per-parameter Adam step: one value for all, saved once as common_step
REQUIRED = (METADATA_JSON, DCP_METADATA, COMMON)  # every checkpoint's; DCP's index names the data files


def run_common(
    cfg: dict[str, Any],
    layout: Layout,
    iteration: int,
    client_state: dict[str, Any],
    optimizer: dict[str, Any],
    param_names: list[list[str]],
) -> dict[str, Any]:
    """common.pt of a training checkpoint. `optimizer`: a named optimizer state (its param groups' hyper-
    parameters and the step are kept here); `param_names`: every parameter of each group (all stages)."""
    common = common_state(cfg, layout.tp, layout.pp)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer["param_groups"]]
    step = _common_step(optimizer["state"])
    common["iteration"] = iteration
    common["optimizer"] = {"param_groups": groups, "state": {} if step is None else {"common_step": step}}
    common["dist_forget"].update(client_state=client_state, param_names=param_names)
    return common


def save(
    folder: Path,
    layout: Layout,
    model: dict[str, torch.Tensor] | None,
    optimizer: dict[str, Any] | None,
    common: dict[str, Any] | None,
) -> None:
    """Write this rank's part of a training checkpoint into `folder` (collective over the default process
    group when there is one). `model`, `optimizer`: this rank's HF-named shard and named optimizer state, or
    None where another rank writes the same (data-parallel replicas); `common`: rank 0's `run_common`."""
    blocks = []
    if model is not None:
        blocks = pieces(local_tensors(model, layout), layout)
        for key, per in _state_tensors(optimizer or {"state": {}}, model).items():
            blocks += pieces(local_tensors(per, layout), layout, prefix=f"{STATE_PREFIX}{key}.")
    objects = extra_state_objects(layout.dims) if common is not None else {}
    write_pieces(folder, blocks, objects, collective=torch.distributed.is_initialized())
    if common is not None:
        torch.save(common, folder / COMMON)
        (folder / METADATA_JSON).write_text(json.dumps(BACKEND))


def load(
    folder: Path, layout: Layout, own: dict[str, torch.Tensor], param_names: list[list[str]]
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(model shard, named optimizer state, client state) for the rank whose slot is `layout` and whose
    shard has the names and shapes of `own`; the optimizer state covers `param_names` (this rank's groups)
    with the hyper-parameters the checkpoint saved."""
    folder = Path(folder)
    common = read_common(folder)
    template = {n: torch.empty(t.shape, dtype=t.dtype) for n, t in own.items()}
    model_local = local_tensors(template, layout)
    blocks = pieces(model_local, layout)
    states = {}
    for key in state_keys(folder):
        states[key] = local_tensors({n: torch.empty_like(t) for n, t in template.items()}, layout)
        blocks += pieces(states[key], layout, prefix=f"{STATE_PREFIX}{key}.")
    read_pieces(folder, blocks)
    saved = common.get("optimizer") or {}
    groups = saved.get("param_groups") or []
    if len(groups) != len(param_names):
        raise UserError(
            f"{folder / COMMON}: the optimizer state has {len(groups)} param groups, this run "
            f"{len(param_names)}; resume with the same optimizer settings"
        )
    per_key = {key: shard_of(local, layout) for key, local in states.items()}
    step = (saved.get("state") or {}).get("common_step")
    state = {}
    if per_key:
        if step is None:
            raise UserError(f"{folder / COMMON}: optimizer state without its step; the checkpoint is damaged")
        for name in (n for names in param_names for n in names):
            state[name] = {STEP: step.clone(), **{key: per[name] for key, per in per_key.items()}}
    named = {
        "format": OPTIM_FORMAT,
        "state": state,
        "param_groups": [{**g, "params": list(names)} for g, names in zip(groups, param_names)],
    }
    return shard_of(model_local, layout), named, dict(common["dist_forget"]["client_state"])


def read_optimizer(folder: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """The whole named optimizer state (HF names, every parameter) of a training checkpoint."""
    layout = Layout(LlamaDims.from_hf(cfg))
    whole = shard_of({k: torch.empty(s) for k, s in mcore_shapes(layout.dims).items()}, layout)
    names = read_common(folder)["dist_forget"]["param_names"]
    return load(folder, layout, whole, names)[1]


def state_keys(folder: Path) -> list[str]:
    """The optimizer state keys (exp_avg, ...) a checkpoint holds per weight, from DCP's index."""
    found = set()
    for key in read_dcp_metadata(folder).state_dict_metadata:
        if key.startswith(STATE_PREFIX):
            rest = key[len(STATE_PREFIX) :]
            found.update(rest[: -len(m) - 1] for m in MODEL_KEYS if rest.endswith("." + m))
    return sorted(found)


def read_common(folder: Path) -> dict[str, Any]:
    """common.pt of a training checkpoint (weights-only), refused unless it holds our run state."""
    common = load_common(Path(folder))
    ours = common.get("dist_forget")
    if not isinstance(ours, dict) or ours.get("format") != FORMAT or "client_state" not in ours:
        raise UserError(
            f"{Path(folder) / COMMON}: holds no dist-forget run state; it is not a checkpoint of an "
            "engine=megatron run (use it as model.init_from, or convert it with megatron-to-hf)"
        )
    return common


def check(folder: Path) -> None:
    """Raise UserError naming what is wrong if `folder` is not a complete, safely loadable training
    checkpoint (UnsafeCheckpoint, its subclass, when a file asks to run code)."""
    folder = Path(folder)
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise UserError(f"incomplete: {name} is missing")
    verify_folder(folder)
    read_common(folder)
    for info in read_dcp_metadata(folder).storage_data.values():
        path = folder / info.relative_path
        if not path.is_file() or path.stat().st_size < info.offset + info.length:
            raise UserError(
                f"incomplete: {info.relative_path} is {'cut short' if path.is_file() else 'missing'}"
            )


def copy_with_run_state(src: Path, tmp: Path, client_state: dict[str, Any]) -> None:
    """Copy training checkpoint `src` into the empty folder `tmp` (tensor files hard-linked where the file
    system allows: they are never written again) with `client_state` as its run state."""
    common = read_common(src)
    for path in sorted(Path(src).iterdir()):
        if path.is_file() and path.name != COMMON:
            try:
                os.link(path, tmp / path.name)
            except OSError:  # another file system, or links not allowed
                shutil.copy2(path, tmp / path.name)
    common["dist_forget"] = {**common["dist_forget"], "client_state": client_state}
    torch.save(common, tmp / COMMON)


def _common_step(state: dict[str, Any]) -> torch.Tensor | None:
    """The Adam step all parameters share (megatron-core saves one; so do we), None before the first."""
    steps = [st[STEP] for st in state.values() if STEP in st]
    if not steps:
        return None
    if any(not torch.equal(torch.as_tensor(s), torch.as_tensor(steps[0])) for s in steps):
        raise UserError("optimizer state: the step differs between parameters; it cannot be saved as one")
    return torch.as_tensor(steps[0]).detach().clone().cpu()


def _state_tensors(optimizer: dict[str, Any], model: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """{state key: {parameter name: tensor}} of a named optimizer state; every parameter or none."""
    state = optimizer["state"]
    if not state:
        return {}
    missing = sorted(set(model) - set(state))
    if missing:
        raise UserError(f"optimizer state covers only part of the model ({missing[0]} has none)")
    first = next(iter(state.values()))
    keys = [k for k, v in first.items() if k != STEP and torch.is_tensor(v) and v.ndim > 0]
    return {k: {n: state[n][k] for n in model} for k in keys}
