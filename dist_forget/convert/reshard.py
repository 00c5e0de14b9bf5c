"""Rewrite a ZeRO checkpoint for another data-parallel world size, keeping every optimizer state.

DeepSpeed refuses to load a ZeRO checkpoint on a different world size, and its universal-checkpoint
route keeps only weights and Adam moments (the AnchoredAdamW anchor is lost). Here the checkpoint is
consolidated per parameter (`ZeroCheckpoint`), then cut again with DeepSpeed's own rules for the new
world size and written as if that many ranks had saved it: the master weights, every per-parameter
state tensor (moments, anchor), the step, and the data-stream state in the client state (re-keyed by
`dist_forget.data.mixture.reshard_state_dict` when present). An engine checkpoint's `meta.json` gets the
new world size and the re-keyed stream's fingerprint, so `dist-forget finetune --resume DIR` on the new
world size accepts it; `hf_config.json` and the run's tokenizer (checkpoint/hf.find_tokenizer) are copied,
so `zero-to-hf` of the copy writes a complete HF folder. The source folder is only read.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.hf import find_tokenizer
from dist_forget.checkpoint.meta import (
    DATA,
    copy_hf_config,
    is_training_checkpoint,
    read_meta,
    reshard_client,
    reshard_meta,
    write_meta,
)
from dist_forget.checkpoint.zero import MODEL_FILE, OPTIM, ZeroCheckpoint, zero_model_file, zero_optim_file
from dist_forget.data.tokenizer import write_hf_tokenizer
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir

ALIGN = 2  # DeepSpeed's nccl_start_alignment_factor: stage 1/2 groups are padded to 2·world elements


def _stage12_group_flat(tensors: OrderedDict[str, torch.Tensor], paddings: list[int]) -> torch.Tensor:
    parts = []
    for t, pad in zip(tensors.values(), paddings):
        parts.append(t.reshape(-1))
        if pad:
            parts.append(torch.zeros(pad, dtype=t.dtype))
    return torch.cat(parts)


def reshard_checkpoint(src: Path, dst: Path, world_size: int, overwrite: bool = False) -> dict[str, Any]:
    """Write `dst` = checkpoint `src` re-partitioned for `world_size` ranks. Returns a summary."""
    src, dst = Path(src), Path(dst)
    if world_size < 1:
        raise UserError(f"--world-size {world_size} must be >= 1")
    if dst.resolve() == src.resolve():
        raise UserError(f"--out {dst} is the source checkpoint; write the resharded copy to another folder")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise UserError(f"output folder {dst} exists and is not empty; pass --overwrite or another --out")
    ckpt = ZeroCheckpoint.load(src)
    keys = ["fp32", *ckpt.state_keys()]
    whole = {key: ckpt.consolidate(key) for key in keys}
    w = world_size
    # the model-states file holds DeepSpeed's own keys and, at its top level, the trainer's client state
    model_states = reshard_client(ckpt.model_states[0], dp=w)
    model_states["dp_world_size"] = w
    if ckpt.stage <= 2:
        files = _stage12_files(ckpt, whole, keys, w)
        files[MODEL_FILE] = model_states
    else:
        files = _stage3_files(ckpt, whole, keys, w)
        files.update({zero_model_file(r): model_states for r in range(w)})

    meta = _engine_meta(src, ckpt.model_states[0].get(DATA), model_states.get(DATA), w)
    tokenizer = find_tokenizer(src)  # the run's, so zero-to-hf of the copy finds it wherever it goes
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        for name, obj in files.items():
            torch.save(obj, tmp / name)
        if meta is not None:
            copy_hf_config(src, tmp)
            write_meta(tmp, meta)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp)
    return {
        "source": str(src),
        "out": str(dst),
        "stage": ckpt.stage,
        "from_world_size": ckpt.world,
        "to_world_size": w,
        "state_keys": ckpt.state_keys(),
        "files": sorted(files),
    }


def _stage12_layouts(ckpt: ZeroCheckpoint, whole: dict[str, Any], keys: list[str], w: int) -> list[Any]:
    """Per param group: the flat (padded-per-parameter) tensors, their length, the padded total, the
    partition size and each parameter's (name, offset, numel)."""
    layouts = []
    for g, shapes in enumerate(ckpt.param_shapes):
        paddings = ckpt.group_paddings(g)
        flats = {
            key: _stage12_group_flat(OrderedDict((n, whole[key][n]) for n in shapes), paddings)
            for key in keys
        }
        length = flats["fp32"].numel()
        total = math.ceil(length / (ALIGN * w)) * ALIGN * w
        part = total // w
        if total - length >= part and w > 1:
            raise UserError(
                f"--world-size {w}: param group {g} has only {length} elements, too few to "
                f"partition over {w} ranks (DeepSpeed pads only the last rank); use fewer ranks"
            )
        offsets, off = [], 0
        for (name, shape), pad in zip(shapes.items(), paddings):
            offsets.append((name, off, math.prod(shape)))
            off += math.prod(shape) + pad
        layouts.append((flats, length, total, part, offsets))
    return layouts


def _stage12_files(
    ckpt: ZeroCheckpoint, whole: dict[str, Any], keys: list[str], w: int
) -> dict[str, dict[str, Any]]:
    """Stage 1/2: each rank's optim-states file for world `w`."""
    layouts = _stage12_layouts(ckpt, whole, keys, w)
    scalars = ckpt.scalar_state()
    files: dict[str, dict[str, Any]] = {}
    for r in range(w):
        base = copy.copy(ckpt.optim_files[0])
        osd = copy.copy(ckpt.optim[0])
        fp32_groups, group_pads, states, mappings = [], [], [], []
        for flats, length, total, part, offsets in layouts:
            lo, hi = r * part, (r + 1) * part
            pad = total - length if r == w - 1 else 0
            padded = {k: torch.cat([f, torch.zeros(total - length, dtype=f.dtype)]) for k, f in flats.items()}
            fp32_groups.append(padded["fp32"][lo : hi - pad].clone())
            group_pads.append(pad)
            state = {k: padded[k][lo:hi].clone() for k in keys if k != "fp32"}
            state.update(copy.deepcopy(scalars))
            states.append(state)
            mappings.append(_slice_mappings(offsets, lo, hi))
        old_base = ckpt.optim[0]["base_optimizer_state"]
        if isinstance(old_base, list):  # elastic layout stores lean (unpadded) per-group states
            osd["base_optimizer_state"] = [
                {k: (v[: v.numel() - p] if torch.is_tensor(v) and v.dim() == 1 else v) for k, v in s.items()}
                for s, p in zip(states, group_pads)
            ]
        else:
            groups = copy.deepcopy(old_base["param_groups"])
            osd["base_optimizer_state"] = {
                "state": {g["params"][0]: s for g, s in zip(groups, states)},
                "param_groups": groups,
            }
        osd["single_partition_of_fp32_groups"] = fp32_groups
        osd["group_paddings"] = group_pads
        count = ckpt.optim[0]["partition_count"]
        osd["partition_count"] = [w] * len(count) if isinstance(count, list) else w
        if "param_slice_mappings" in osd:
            osd["param_slice_mappings"] = mappings
        base[OPTIM] = osd
        files[zero_optim_file(r)] = base
    return files


def _stage3_files(
    ckpt: ZeroCheckpoint, whole: dict[str, Any], keys: list[str], w: int
) -> dict[str, dict[str, Any]]:
    """Stage 3: each rank's optim-states file for world `w` (every parameter cut on its own)."""
    sub_groups = _stage3_sub_groups(ckpt, w)
    scalars = ckpt.scalar_state()
    files: dict[str, dict[str, Any]] = {}
    for r in range(w):
        fp32_flats, states = [], {}
        for sg, names in enumerate(sub_groups):
            per_key = {}
            for key in keys:
                parts = []
                for name in names:
                    t = whole[key][name].reshape(-1)
                    part = math.ceil(t.numel() / w)
                    t = torch.cat([t, torch.zeros(part * w - t.numel(), dtype=t.dtype)])
                    parts.append(t[r * part : (r + 1) * part])
                per_key[key] = torch.cat(parts).clone()
            fp32_flats.append(per_key.pop("fp32"))
            states[sg] = {**per_key, **copy.deepcopy(scalars)}
        base = copy.copy(ckpt.optim_files[0])
        osd = copy.copy(ckpt.optim[0])
        inner = copy.copy(osd[OPTIM])
        inner["state"] = states
        osd[OPTIM] = inner
        osd["fp32_flat_groups"] = fp32_flats
        osd["partition_count"] = w
        base[OPTIM] = osd
        files[zero_optim_file(r)] = base
    return files


def _engine_meta(src: Path, old_data: Any, new_data: Any, world: int) -> dict[str, Any] | None:
    """The engine's meta.json for the resharded copy (None when `src` is a bare DeepSpeed checkpoint)."""
    if not is_training_checkpoint(src):
        return None
    return reshard_meta(read_meta(src), src, world, data=(old_data, new_data))


def _slice_mappings(offsets: list[tuple[str, int, int]], lo: int, hi: int) -> OrderedDict[str, Any]:
    """Which part of each parameter this rank's flat partition holds (DeepSpeed's fragment_address)."""
    from deepspeed.utils.tensor_fragment import fragment_address

    out: OrderedDict[str, Any] = OrderedDict()
    for name, off, n in offsets:
        start, end = max(off, lo), min(off + n, hi)
        if end > start:
            out[name] = fragment_address(numel=end - start, start=start - lo)
    return out


def _stage3_sub_groups(ckpt: ZeroCheckpoint, w: int) -> list[list[str]]:
    """Parameter names per ZeRO-3 sub-group for world `w` (DeepSpeed's greedy split by sub_group_size)."""
    zero_cfg = (ckpt.optim_files[0].get("ds_config") or {}).get("zero_optimization", {}) or {}
    sub_group_size = int(float(zero_cfg.get("sub_group_size", 1e9)))
    old_state = ckpt.optim[0][OPTIM]["state"]
    out: list[list[str]] = []
    for shapes in ckpt.param_shapes:
        sizes = {n: math.ceil(math.prod(s) / w) for n, s in shapes.items()}
        if sum(sizes.values()) <= sub_group_size:
            out.append(list(shapes))
            continue
        current, acc = [], 0
        names = list(shapes)
        for name in names:
            current.append(name)
            acc += sizes[name]
            if acc >= sub_group_size or name == names[-1]:
                out.append(current)
                current, acc = [], 0
    if len(out) != len(old_state):
        raise UserError(
            f"--world-size {w}: ZeRO-3 would split the parameters into {len(out)} sub-groups instead "
            f"of {len(old_state)} (sub_group_size {sub_group_size}); keep a world size with the same "
            "split or raise zero_optimization.sub_group_size"
        )
    return out
