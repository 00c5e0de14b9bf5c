"""Our Megatron tensor/pipeline-parallel conversion format (`dist-forget-megatron-v1`, what `convert
hf-to-megatron --format legacy` writes) and the reader of every Megatron folder.

A legacy folder:

    megatron.json                  {"format", "tp", "pp", "hf_config"}
    mp_rank_XX/model_optim.pt      {"model": TP shard in HF names, "optimizer": (optional) state_dict
                                    + "param_names", "tp", "tp_rank", "pp", "pp_rank"}

With pipeline parallelism (pp > 1) the files are mp_rank_XX_YYY (TP rank XX, stage YYY); a stage holds
its layers under their global names, the tied embedding sits on the first and the last stage.
Weights are pure slices (models/mcore_map.shard_dim), so both directions are bit-exact. Optimizer state
(Adam moments and the Anchored-AdamW anchor θ₀) is optional; per-parameter tensors are sliced like their
parameter, scalars (`step`) are copied; whole, it is our named format (checkpoint/hf.py).

`write_folder` cuts whole tensors for tp x pp, `read_folder` merges every rank back (checking
`megatron.json`: the FORMAT, then tp/pp). engine=megatron's training checkpoints are megatron-core's own
format instead (checkpoint/megatron_train.py); `read_megatron` reads those, the legacy folders and any
other megatron-core folder (checkpoint/megatron_dist.py), and `hf_folder_for_init` turns each into an HF
folder for `model.init_from`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint import megatron_dist, megatron_train
from dist_forget.checkpoint.hf import (
    find_tokenizer,
    indexed_optimizer_state,
    named_optimizer_state,
    read_hf_config,
    write_hf_folder,
)
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir, write_json_atomic
from dist_forget.models import mcore_map
from dist_forget.models.mcore_map import LlamaDims, hf_shapes, shard_dim
from dist_forget.models.megatron import check_pp, merge_shards, shard_tensor, stages_of
from dist_forget.safeload import load_pt

META_FILE = "megatron.json"
FORMAT = "dist-forget-megatron-v1"


def rank_file(root: Path, tp_rank: int, pp_rank: int = 0, pp: int = 1) -> Path:
    """Megatron's naming: mp_rank_XX without pipeline parallelism, mp_rank_XX_YYY with it."""
    name = f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return Path(root) / name / "model_optim.pt"


def check_architecture(state: dict[str, torch.Tensor], dims: LlamaDims, where: str) -> None:
    """The tensors must be exactly those the config describes (names and shapes)."""
    want = hf_shapes(dims)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing:
        raise UserError(
            f"{where}: tensor {missing[0]!r} is missing for the architecture in its config "
            f"({dims.layers} layers, hidden {dims.hidden}); weights and config do not match"
        )
    if extra:
        raise UserError(
            f"{where}: tensor {extra[0]!r} is not part of the Llama architecture in its config; "
            "only transformers LlamaForCausalLM checkpoints (ladder.hf_config) convert"
        )
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise UserError(
                f"{where}: {name} has shape {tuple(state[name].shape)} but the config says "
                f"{shape}; weights and config come from different models"
            )


def _shard_named_optim(
    named: dict[str, Any], shapes: dict[str, tuple[int, ...]], tp: int, rank: int
) -> dict[str, Any]:
    out_state = {}
    for name, st in named["state"].items():
        if name not in shapes:
            raise UserError(
                f"optimizer state names parameter {name!r}, which the model does not have; "
                "convert the optimizer file that was saved with these weights"
            )
        out_state[name] = {
            k: (
                shard_tensor(name, v, tp, rank)
                if torch.is_tensor(v) and tuple(v.shape) == shapes[name]
                else v
            )
            for k, v in st.items()
        }
    return {**named, "state": out_state}


def _merge_named_optims(parts: list[dict[str, Any]], shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    state = {}
    for name, st0 in parts[0]["state"].items():
        merged = {}
        for key, v in st0.items():
            if torch.is_tensor(v) and v.ndim > 0:
                pieces = [p["state"][name][key] for p in parts]
                dim = shard_dim(name)
                merged[key] = pieces[0].clone() if dim is None or len(pieces) == 1 else torch.cat(pieces, dim)
                if tuple(merged[key].shape) != shapes[name]:
                    raise UserError(
                        f"optimizer state {key!r} of {name} merges to shape "
                        f"{tuple(merged[key].shape)}, not the parameter's {shapes[name]}"
                    )
            else:
                merged[key] = v
        state[name] = merged
    return {**parts[0], "state": state}


def _stage_optim(named: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The part of a named optimizer state that one pipeline stage's parameters own."""
    groups = [{**g, "params": [n for n in g["params"] if n in names]} for g in named["param_groups"]]
    return {
        **named,
        "state": {n: st for n, st in named["state"].items() if n in names},
        "param_groups": groups,
    }


def union_group_names(stage_names: list[list[list[str]]]) -> list[list[str]]:
    """Each pipeline stage's parameter names per param group -> one list per group, in HF layer order."""
    out: list[list[str]] = []
    for groups in stage_names:
        for i, names in enumerate(groups):
            if i == len(out):
                out.append([])
            out[i] += [n for n in names if n not in out[i]]
    return [sorted(names, key=_hf_order) for names in out]


def _hf_order(name: str) -> tuple[int, int, str]:
    """HF's parameter order: embedding, layers by index, final norm (order within a layer kept by name)."""
    if name.startswith("model.embed_tokens"):
        return (0, 0, "")
    if name.startswith("model.layers."):
        return (1, int(name.split(".")[2]), "")
    return (2, 0, name)


# ---------------------------------------------------------------------------------------------------
# megatron.json


def write_meta(folder: Path, tp: int, pp: int, hf_config: dict[str, Any]) -> None:
    write_json_atomic(
        Path(folder) / META_FILE, {"format": FORMAT, "tp": tp, "pp": pp, "hf_config": hf_config}
    )


def read_meta(folder: Path) -> dict[str, Any]:
    """megatron.json of a folder of ours, refused unless it names our FORMAT."""
    meta_path = Path(folder) / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"{folder} is not a Megatron folder of ours (no {META_FILE}); pass a folder written "
            "by `convert hf-to-megatron` or a checkpoints/step-XXXXXXXX of engine=megatron"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def is_megatron_folder(path: str | Path) -> bool:
    """Ours (megatron.json) or megatron-core's (metadata.json, or a Megatron-LM save dir's tracker file)."""
    return (Path(path) / META_FILE).is_file() or megatron_dist.find_folder(path) is not None


# ---------------------------------------------------------------------------------------------------
# whole folders


def write_folder(
    tmp: Path,
    cfg: dict[str, Any],
    state: dict[str, torch.Tensor],
    named: dict[str, Any] | None,
    tp: int,
    pp: int,
) -> None:
    """Write whole HF tensors (and a named optimizer state) as a tp x pp Megatron folder into `tmp`."""
    dims = LlamaDims.from_hf(cfg)
    shapes = hf_shapes(dims)
    for stage in range(pp):
        mine = {n for n in state if stage in stages_of(n, dims.layers, pp)}
        for rank in range(tp):
            entry: dict[str, Any] = {
                "model": {n: shard_tensor(n, state[n], tp, rank) for n in state if n in mine},
                "tp": tp,
                "tp_rank": rank,
                "pp": pp,
                "pp_rank": stage,
            }
            if named is not None:
                entry["optimizer"] = indexed_optimizer_state(
                    _shard_named_optim(_stage_optim(named, mine), shapes, tp, rank)
                )
            path = rank_file(tmp, rank, stage, pp)
            path.parent.mkdir(parents=True)
            torch.save(entry, path)
    write_meta(tmp, tp, pp, cfg)


def read_megatron(
    meg_dir: str | Path, optimizer: bool = False, hf_config: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """(hf_config, full HF state dict, named optimizer state or None) of a Megatron folder, ours or
    megatron-core's (`hf_config`: a config.json for a megatron-core folder that does not describe itself)."""
    if not (Path(meg_dir) / META_FILE).is_file() and megatron_dist.find_folder(meg_dir) is not None:
        given = read_hf_config(Path(hf_config)) if hf_config is not None else None
        cfg, full, common = megatron_dist.read_folder(meg_dir, given)
        check_architecture(full, LlamaDims.from_hf(cfg), str(meg_dir))
        if optimizer and "client_state" not in (common.get("dist_forget") or {}):
            raise UserError(
                f"--optimizer: {meg_dir} is not a checkpoint of an engine=megatron run, whose optimizer "
                "state reads here; convert the weights alone"
            )
        named = megatron_train.read_optimizer(megatron_dist.resolve(meg_dir), cfg) if optimizer else None
        return cfg, full, named
    return read_folder(meg_dir, optimizer)


def read_folder(
    meg_dir: str | Path, optimizer: bool
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """Our folder: (hf_config, full HF state dict, named optimizer state or None)."""
    meg_dir = Path(meg_dir)
    meta = read_meta(meg_dir)
    tp, pp, cfg = int(meta["tp"]), int(meta.get("pp", 1)), meta["hf_config"]
    dims = LlamaDims.from_hf(cfg)
    check_pp(pp, where=f"{meg_dir / META_FILE} pp", layers=dims.layers)
    found = sorted(p.parent.name for p in meg_dir.glob("mp_rank_*/model_optim.pt"))
    want = sorted(rank_file(meg_dir, r, s, pp).parent.name for r in range(tp) for s in range(pp))
    if found != want:
        raise UserError(
            f"{meg_dir}: {META_FILE} says tp={tp} pp={pp} (needs {', '.join(want)}) but holds "
            f"{', '.join(found) or 'no rank files'}; the folder is incomplete or mixes TP/PP sizes"
        )
    ranks: list[dict[str, Any]] = []  # one per TP rank, its stages' tensors united
    for r in range(tp):
        stages = [load_pt(rank_file(meg_dir, r, st, pp)) for st in range(pp)]
        for st, entry in enumerate(stages):
            if (entry.get("tp"), entry.get("tp_rank"), entry.get("pp", 1), entry.get("pp_rank", 0)) != (
                tp,
                r,
                pp,
                st,
            ):
                raise UserError(
                    f"{rank_file(meg_dir, r, st, pp)} was written for tp={entry.get('tp')} rank "
                    f"{entry.get('tp_rank')} pp={entry.get('pp', 1)} stage {entry.get('pp_rank', 0)}, "
                    f"not tp={tp} rank {r} pp={pp} stage {st}; it comes from another conversion"
                )
        model: dict[str, torch.Tensor] = {}
        for entry in stages:
            for name, t in entry["model"].items():
                if name in model and not torch.equal(model[name], t):
                    raise UserError(
                        f"{meg_dir}: the pipeline stages' copies of {name} differ; the rank files "
                        "come from different checkpoints"
                    )
                model.setdefault(name, t)
        united: dict[str, Any] = {"model": model}
        if all("optimizer" in e for e in stages):
            parts = [named_optimizer_state(e["optimizer"]) for e in stages]
            names = union_group_names([[g["params"] for g in p["param_groups"]] for p in parts])
            united["optimizer"] = {
                **parts[0],
                "state": {k: v for p in reversed(parts) for k, v in p["state"].items()},
                "param_groups": [{**g, "params": n} for g, n in zip(parts[0]["param_groups"], names)],
            }
        ranks.append(united)
    shards = [entry["model"] for entry in ranks]
    for name in shards[0]:
        if shard_dim(name) is None and not all(torch.equal(s[name], shards[0][name]) for s in shards):
            raise UserError(
                f"{meg_dir}: replicated tensor {name} differs between TP ranks; the rank files "
                "come from different checkpoints"
            )
    full = merge_shards(shards)
    check_architecture(full, dims, str(meg_dir))
    named = None
    if optimizer:
        if any("optimizer" not in e for e in ranks):
            raise UserError(f"--optimizer: {meg_dir} holds no optimizer state; convert without --optimizer")
        named = _merge_named_optims([e["optimizer"] for e in ranks], hf_shapes(dims))
    return cfg, full, named


# ---------------------------------------------------------------------------------------------------
# a Megatron folder as model.init_from


def hf_folder_for_init(meg_dir: str | Path, cache_dir: str | Path) -> Path:
    """The HF folder of a Megatron folder (any tp/pp; ours or megatron-core's), converted once into
    `cache_dir` and reused.

    The cache key covers megatron.json and every rank file's size and mtime (every file of a megatron-core
    folder), so a rewritten checkpoint is
    converted again. Ranks of one launch may race here: the first complete folder wins, the others use it.
    """
    meg_dir = Path(meg_dir)
    h = hashlib.sha256(str(meg_dir.resolve()).encode())
    if (meg_dir / META_FILE).is_file():
        h.update((meg_dir / META_FILE).read_bytes())
        files = sorted(meg_dir.glob("mp_rank_*/model_optim.pt"))
    else:  # megatron-core's folder (Megatron-LM's save dir: the iteration its tracker names)
        files = sorted(p for p in megatron_dist.resolve(meg_dir).rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(meg_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    folder = Path(cache_dir) / f"megatron-{meg_dir.resolve().name}-{h.hexdigest()[:12]}"
    if (folder / "config.json").is_file():
        return folder
    cfg, full, _ = read_megatron(meg_dir)
    try:
        with atomic_dir(folder) as tmp:
            write_hf_folder(tmp, full, cfg, find_tokenizer(meg_dir))
    except OSError:  # FileExistsError / ENOTEMPTY: another rank of this launch finished first (same bytes)
        if not (folder / "config.json").is_file():
            raise
    return folder


# ---------------------------------------------------------------------------------------------------
# the stock GPTModel's optimizer state as a torch state_dict <-> the indexed layout of our rank files


def stock_optimizer_to_hf(
    sd: dict[str, Any], groups: list[list[str]], dims: LlamaDims, tp: int
) -> dict[str, Any]:
    """A torch optimizer state_dict over GPTModel parameters (`groups`: their names per param group) -> the
    same state over HF-named TP shards, index-keyed with `param_names` (the layout our checkpoints hold)."""
    named = named_optimizer_state(sd, [n for g in groups for n in g])
    return indexed_optimizer_state(mcore_map.stock_optimizer_to_hf(named, dims, tp))


def stock_optimizer_from_hf(
    opt: dict[str, Any], groups: list[list[str]], dims: LlamaDims, tp: int, where: str
) -> dict[str, Any]:
    """Inverse of `stock_optimizer_to_hf`, for an optimizer whose param groups hold GPTModel parameters
    named `groups` (in order): a torch state_dict it can load."""
    return mcore_map.stock_optimizer_from_hf(named_optimizer_state(opt), groups, dims, tp, where)
