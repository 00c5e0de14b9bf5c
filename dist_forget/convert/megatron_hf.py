"""Hugging Face Llama folder <-> Megatron tensor-parallel checkpoint folder, both ways, exactly.

A Megatron folder (what `engine=megatron` saves per checkpoint tag, and what `hf_to_megatron` writes):

    megatron.json                  {"format", "tp", "pp", "hf_config"}
    mp_rank_XX/model_optim.pt      {"model": TP shard in HF names, "optimizer": (optional) state_dict
                                    + "param_names", "tp", "tp_rank", "pp", "pp_rank", "client_state"}

With pipeline parallelism (pp > 1) the files are mp_rank_XX_YYY (TP rank XX, stage YYY); a stage holds
its layers under their global names, the tied embedding sits on the first and the last stage.
Weights are pure slices (models/megatron.SHARD_DIM), so both directions are bit-exact. Optimizer state
(Adam moments and the Anchored-AdamW anchor θ₀) is optional; per-parameter tensors are sliced like their
parameter, scalars (`step`) are copied. On the HF side it lives beside the weights as `optimizer.pt`:

    {"format": "dist-forget-named-optim-v1",
     "state": {param_name: {"step", "exp_avg", "exp_avg_sq", "anchor"}},
     "param_groups": [{hyper-parameters..., "params": [param_name, ...]}]}

Everything is checked before anything is written (config vs tensors, TP divisibility, rank files vs
`tp`), and outputs appear atomically (dist_forget.io.atomic_dir): a failure leaves nothing half-written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir
from dist_forget.models.megatron import LlamaDims, check_pp, merge_shards, shard_dim, shard_tensor, stages_of

META_FILE = "megatron.json"
FORMAT = "dist-forget-megatron-v1"
OPTIM_FILE = "optimizer.pt"
OPTIM_FORMAT = "dist-forget-named-optim-v1"


def rank_file(root: Path, tp_rank: int, pp_rank: int = 0, pp: int = 1) -> Path:
    """Megatron's naming: mp_rank_XX without pipeline parallelism, mp_rank_XX_YYY with it."""
    name = f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return Path(root) / name / "model_optim.pt"


def expected_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the architecture and its full shape (tied lm_head excluded)."""
    h, q, kv, f = dims.hidden, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.ffn
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (dims.vocab, h)}
    for i in range(dims.layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    return shapes


def check_architecture(state: dict[str, torch.Tensor], dims: LlamaDims, where: str) -> None:
    """The tensors must be exactly those the config describes (names and shapes)."""
    want = expected_shapes(dims)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing:
        raise UserError(f"{where}: tensor {missing[0]!r} is missing for the architecture in its config "
                        f"({dims.layers} layers, hidden {dims.hidden}); weights and config do not match")
    if extra:
        raise UserError(f"{where}: tensor {extra[0]!r} is not part of the Llama architecture in its config; "
                        "only transformers LlamaForCausalLM checkpoints (ladder.hf_config) convert")
    for name, shape in want.items():
        if tuple(state[name].shape) != shape:
            raise UserError(f"{where}: {name} has shape {tuple(state[name].shape)} but the config says "
                            f"{shape}; weights and config come from different models")


# ---------------------------------------------------------------------------------------------------
# the HF side


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder (no config.json); pass the folder "
                        "that save_pretrained / a run's model export wrote")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "llama":
        raise UserError(f"{path}: model_type={cfg.get('model_type')!r}; the Megatron path converts Llama "
                        "models only (ladder.hf_config, SmolLM2)")
    return cfg


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder: model.safetensors, its sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        state = load_file(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        state = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(folder / shard))
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin; pass a complete HF folder")
    lm_head = state.pop("lm_head.weight", None)
    emb = state.get("model.embed_tokens.weight")
    if lm_head is not None and emb is not None and not torch.equal(lm_head, emb):
        raise UserError(f"{folder}: lm_head.weight differs from model.embed_tokens.weight (untied head); "
                        "the Megatron path needs tie_word_embeddings=True")
    return state


def write_hf_folder(tmp: Path, state: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> None:
    """save_pretrained of a real LlamaForCausalLM, so transformers reads the result back as usual."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_dict(hf_config)
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise UserError(f"weights do not fit the config: missing {missing[:2]}, unexpected {unexpected[:2]}")
    model.tie_weights()
    model.save_pretrained(tmp)


# ---------------------------------------------------------------------------------------------------
# optimizer state: index-keyed (torch) <-> name-keyed (ours)


def named_optimizer_state(opt: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """A torch optimizer state_dict (+ `param_names`) -> {"state": {name: ...}, "param_groups": [...]}."""
    names = list(names if names is not None else opt["param_names"])
    state = {names[int(i)]: dict(s) for i, s in opt["state"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[int(i)] for i in g["params"]]}
              for g in opt["param_groups"]]
    return {"format": OPTIM_FORMAT, "state": state, "param_groups": groups}


def indexed_optimizer_state(named: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `named_optimizer_state`: indices follow the order of params across param_groups."""
    names = [n for g in named["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
              for g in named["param_groups"]]
    return {"state": {index[n]: dict(s) for n, s in named["state"].items()}, "param_groups": groups,
            "param_names": names}


def _shard_named_optim(named: dict[str, Any], shapes: dict[str, tuple[int, ...]], tp: int,
                       rank: int) -> dict[str, Any]:
    out_state = {}
    for name, st in named["state"].items():
        if name not in shapes:
            raise UserError(f"optimizer state names parameter {name!r}, which the model does not have; "
                            "convert the optimizer file that was saved with these weights")
        out_state[name] = {k: (shard_tensor(name, v, tp, rank)
                               if torch.is_tensor(v) and tuple(v.shape) == shapes[name] else v)
                           for k, v in st.items()}
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
                    raise UserError(f"optimizer state {key!r} of {name} merges to shape "
                                    f"{tuple(merged[key].shape)}, not the parameter's {shapes[name]}")
            else:
                merged[key] = v
        state[name] = merged
    return {**parts[0], "state": state}


def _stage_optim(named: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The part of a named optimizer state that one pipeline stage's parameters own."""
    groups = [{**g, "params": [n for n in g["params"] if n in names]} for g in named["param_groups"]]
    return {**named, "state": {n: st for n, st in named["state"].items() if n in names}, "param_groups": groups}


def _union_groups(stage_groups: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Param groups of the stages -> one list: same hyper-parameters, names united in layer order."""
    out: list[dict[str, Any]] = []
    for groups in stage_groups:
        for i, g in enumerate(groups):
            if i == len(out):
                out.append({**g, "params": []})
            out[i]["params"] += [n for n in g["params"] if n not in out[i]["params"]]
    for g in out:
        g["params"].sort(key=_hf_order)
    return out


def _hf_order(name: str) -> tuple[int, int, str]:
    """HF's parameter order: embedding, layers by index, final norm (order within a layer kept by name)."""
    if name.startswith("model.embed_tokens"):
        return (0, 0, "")
    if name.startswith("model.layers."):
        return (1, int(name.split(".")[2]), "")
    return (2, 0, name)


# ---------------------------------------------------------------------------------------------------
# the two directions


def hf_to_megatron(hf_dir: str | Path, out_dir: str | Path, tp: int, pp: int = 1, optimizer: bool = False,
                   overwrite: bool = False) -> Path:
    """Split an HF Llama folder into a tp-way Megatron folder (optionally with its optimizer.pt)."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    cfg = read_hf_config(hf_dir)
    dims = LlamaDims.from_hf(cfg)
    dims.check_tp(tp, where="--tp")
    check_pp(pp, where="--pp", layers=dims.layers)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out")
    state = read_hf_weights(hf_dir)
    check_architecture(state, dims, str(hf_dir))
    named = None
    if optimizer:
        opt_path = hf_dir / OPTIM_FILE
        if not opt_path.is_file():
            raise UserError(f"--optimizer: {opt_path} does not exist; convert without --optimizer or export "
                            "the optimizer state with the weights")
        named = torch.load(opt_path, map_location="cpu", weights_only=True)
        if named.get("format") != OPTIM_FORMAT:
            raise UserError(f"{opt_path}: format {named.get('format')!r} is not {OPTIM_FORMAT!r}")
    shapes = expected_shapes(dims)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        for stage in range(pp):
            mine = {n for n in state if stage in stages_of(n, dims.layers, pp)}
            for rank in range(tp):
                entry: dict[str, Any] = {"model": {n: shard_tensor(n, state[n], tp, rank) for n in state if n in mine},
                                         "tp": tp, "tp_rank": rank, "pp": pp, "pp_rank": stage, "client_state": {}}
                if named is not None:
                    entry["optimizer"] = indexed_optimizer_state(
                        _shard_named_optim(_stage_optim(named, mine), shapes, tp, rank))
                path = rank_file(tmp, rank, stage, pp)
                path.parent.mkdir(parents=True)
                torch.save(entry, path)
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, "tp": tp, "pp": pp, "hf_config": cfg},
                                                indent=2) + "\n")
    return out_dir


def read_megatron(meg_dir: str | Path, optimizer: bool = False
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any] | None]:
    """(hf_config, full HF state dict, named optimizer state or None) of a Megatron folder."""
    meg_dir = Path(meg_dir)
    meta_path = meg_dir / META_FILE
    if not meta_path.is_file():
        raise UserError(f"{meg_dir} is not a Megatron folder of ours (no {META_FILE}); pass a folder written "
                        "by `convert hf-to-megatron` or a checkpoints/step-XXXXXXXX of engine=megatron")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    tp, pp, cfg = int(meta["tp"]), int(meta.get("pp", 1)), meta["hf_config"]
    dims = LlamaDims.from_hf(cfg)
    check_pp(pp, where=f"{meta_path} pp", layers=dims.layers)
    found = sorted(p.parent.name for p in meg_dir.glob("mp_rank_*/model_optim.pt"))
    want = sorted(rank_file(meg_dir, r, s, pp).parent.name for r in range(tp) for s in range(pp))
    if found != want:
        raise UserError(f"{meg_dir}: {META_FILE} says tp={tp} pp={pp} (needs {', '.join(want)}) but holds "
                        f"{', '.join(found) or 'no rank files'}; the folder is incomplete or mixes TP/PP sizes")
    ranks: list[dict[str, Any]] = []  # one per TP rank, its stages' tensors united
    for r in range(tp):
        stages = [torch.load(rank_file(meg_dir, r, st, pp), map_location="cpu", weights_only=True)
                  for st in range(pp)]
        for st, entry in enumerate(stages):
            if (entry.get("tp"), entry.get("tp_rank"), entry.get("pp", 1), entry.get("pp_rank", 0)) != (tp, r, pp, st):
                raise UserError(f"{rank_file(meg_dir, r, st, pp)} was written for tp={entry.get('tp')} rank "
                                f"{entry.get('tp_rank')} pp={entry.get('pp', 1)} stage {entry.get('pp_rank', 0)}, "
                                f"not tp={tp} rank {r} pp={pp} stage {st}; it comes from another conversion")
        model: dict[str, torch.Tensor] = {}
        for entry in stages:
            for name, t in entry["model"].items():
                if name in model and not torch.equal(model[name], t):
                    raise UserError(f"{meg_dir}: the pipeline stages' copies of {name} differ; the rank files "
                                    "come from different checkpoints")
                model.setdefault(name, t)
        united: dict[str, Any] = {"model": model}
        if all("optimizer" in e for e in stages):
            parts = [named_optimizer_state(e["optimizer"]) for e in stages]
            united["optimizer"] = {**parts[0], "state": {k: v for p in reversed(parts) for k, v in p["state"].items()},
                                   "param_groups": _union_groups([p["param_groups"] for p in parts])}
        ranks.append(united)
    shards = [entry["model"] for entry in ranks]
    for name in shards[0]:
        if shard_dim(name) is None and not all(torch.equal(s[name], shards[0][name]) for s in shards):
            raise UserError(f"{meg_dir}: replicated tensor {name} differs between TP ranks; the rank files "
                            "come from different checkpoints")
    full = merge_shards(shards)
    check_architecture(full, dims, str(meg_dir))
    named = None
    if optimizer:
        if any("optimizer" not in e for e in ranks):
            raise UserError(f"--optimizer: {meg_dir} holds no optimizer state; convert without --optimizer")
        named = _merge_named_optims([e["optimizer"] for e in ranks], expected_shapes(dims))
    return cfg, full, named


def megatron_to_hf(meg_dir: str | Path, out_dir: str | Path, optimizer: bool = False,
                   overwrite: bool = False) -> Path:
    """Merge a Megatron folder's TP shards into an HF Llama folder (optionally with optimizer.pt)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out")
    cfg, full, named = read_megatron(meg_dir, optimizer)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_hf_folder(tmp, full, cfg)
        if named is not None:
            torch.save(named, tmp / OPTIM_FILE)
    return out_dir
