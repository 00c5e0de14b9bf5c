"""A Hugging Face model folder, as our conversions read it, and the optimizer state saved beside it.

The folder itself is transformers' format: `models/hf.py` writes it (`write_pretrained`: the trainer's
export and the Megatron conversions; `convert zero-to-hf` saves the model it built to check the shapes)
and loads it for training. Here: the raw
reader the converters use (`read_hf_config`, Llama only; `read_hf_weights`: safetensors, sharded index or
pytorch_model.bin, the tied head dropped), `write_hf_folder` for a config given as a dict, and our
optimizer file beside the weights:

    optimizer.pt   {"format": "dist-forget-named-optim-v1",
                    "state": {param_name: {"step", "exp_avg", "exp_avg_sq", "anchor"}},
                    "param_groups": [{hyper-parameters..., "params": [param_name, ...]}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dist_forget.errors import UserError
from dist_forget.safeload import load_pt

OPTIM_FILE = "optimizer.pt"
OPTIM_FORMAT = "dist-forget-named-optim-v1"


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of an HF folder (or the file itself), refused unless it is a Llama config."""
    path = Path(folder) if Path(folder).is_file() else Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(
            f"{folder} is not a Hugging Face model folder (no config.json); pass the folder "
            "that save_pretrained / a run's model export wrote"
        )
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "llama":
        raise UserError(
            f"{path}: model_type={cfg.get('model_type')!r}; the Megatron path converts Llama "
            "models only (ladder.hf_config, SmolLM2)"
        )
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
        state = load_pt(folder / "pytorch_model.bin")
    else:
        raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin; pass a complete HF folder")
    lm_head = state.pop("lm_head.weight", None)
    emb = state.get("model.embed_tokens.weight")
    if lm_head is not None and emb is not None and not torch.equal(lm_head, emb):
        raise UserError(
            f"{folder}: lm_head.weight differs from model.embed_tokens.weight (untied head); "
            "the Megatron path needs tie_word_embeddings=True"
        )
    return state


def write_hf_folder(
    tmp: Path, state: dict[str, torch.Tensor], hf_config: dict[str, Any], tokenizer: Path | None = None
) -> None:
    """save_pretrained of a real LlamaForCausalLM, so transformers reads the result back as usual (with the
    tokenizer of the folder `tokenizer`, when given)."""
    from transformers import LlamaConfig

    from dist_forget.models.hf import write_pretrained

    write_pretrained(tmp, state, LlamaConfig.from_dict(hf_config), tokenizer)


def find_tokenizer(source: str | Path, given: str | Path | None = None) -> Path | None:
    """The tokenizer a conversion of `source` copies into its HF folder: `given` (a folder or a
    tokenizer.json: --tokenizer), else one in the source folder or the folder above it (a Megatron-LM
    save dir beside its iteration), else, for a training checkpoint, its run folder's `model/` or `best/`
    export, then the shards its run trained on (meta.json's config: data.target); None when none is there."""
    from dist_forget.checkpoint.meta import is_training_checkpoint, read_meta
    from dist_forget.data.tokenizer import TOKENIZER_FILE, tokenizer_path

    if given is not None:
        return tokenizer_path(given).parent  # a one-line error when it holds no tokenizer.json
    source = Path(source)
    candidates = [source, source.parent]
    if is_training_checkpoint(source):
        run = source.parent.parent  # <run>/checkpoints/step-XXXXXXXX
        target = ((read_meta(source).get("config") or {}).get("data") or {}).get("target")
        candidates += [run / "model", run / "best"] + ([Path(str(target))] if target else [])
    return next((c for c in candidates if (c / TOKENIZER_FILE).is_file()), None)


def read_named_optimizer(folder: Path) -> dict[str, Any]:
    """The optimizer.pt beside an HF folder's weights, refused unless it is our named format."""
    path = Path(folder) / OPTIM_FILE
    if not path.is_file():
        raise UserError(
            f"--optimizer: {path} does not exist; convert without --optimizer or export "
            "the optimizer state with the weights"
        )
    named = load_pt(path)
    if named.get("format") != OPTIM_FORMAT:
        raise UserError(f"{path}: format {named.get('format')!r} is not {OPTIM_FORMAT!r}")
    return named


# ---------------------------------------------------------------------------------------------------
# optimizer state: index-keyed (torch) <-> name-keyed (ours)


def named_optimizer_state(opt: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """A torch optimizer state_dict (+ `param_names`) -> {"state": {name: ...}, "param_groups": [...]}."""
    names = list(names if names is not None else opt["param_names"])
    state = {names[int(i)]: dict(s) for i, s in opt["state"].items()}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[int(i)] for i in g["params"]]}
        for g in opt["param_groups"]
    ]
    return {"format": OPTIM_FORMAT, "state": state, "param_groups": groups}


def indexed_optimizer_state(named: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `named_optimizer_state`: indices follow the order of params across param_groups."""
    names = [n for g in named["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [index[n] for n in g["params"]]}
        for g in named["param_groups"]
    ]
    return {
        "state": {index[n]: dict(s) for n, s in named["state"].items()},
        "param_groups": groups,
        "param_names": names,
    }
