"""Hugging Face Llama folder <-> Megatron checkpoint folder, both ways, exactly; and a Megatron training
checkpoint for another number of data-parallel replicas.

The formats are owned by dist_forget/checkpoint/: ours per TP/PP rank (`megatron.py`), megatron-core's
torch_dist (`megatron_dist.py`: Megatron-LM, NeMo; `megatron_train.py`: engine=megatron's checkpoints), the
HF folder and its optimizer.pt (`hf.py`), meta.json and the trainer's client state (`meta.py`). Here: the
three conversions the CLI offers.

Everything is checked before anything is written (config vs tensors, TP divisibility, rank files vs
`tp`), and outputs appear atomically (dist_forget.io.atomic_dir): a failure leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint import megatron, megatron_dist, megatron_train
from dist_forget.checkpoint import meta as ckpt_meta
from dist_forget.checkpoint.hf import (
    OPTIM_FILE,
    find_tokenizer,
    named_optimizer_state,
    read_hf_config,
    read_hf_weights,
    read_named_optimizer,
    write_hf_folder,
)
from dist_forget.checkpoint.megatron import META_FILE, rank_file, read_megatron
from dist_forget.data.tokenizer import write_hf_tokenizer
from dist_forget.errors import UserError
from dist_forget.io import atomic_dir
from dist_forget.models.megatron import LlamaDims, check_pp

# the conversions, and the format names their callers use with them (owned by checkpoint/)
__all__ = [
    "META_FILE",
    "OPTIM_FILE",
    "hf_to_megatron",
    "megatron_to_hf",
    "named_optimizer_state",
    "rank_file",
    "read_hf_config",
    "read_hf_weights",
    "read_megatron",
    "reshard_megatron",
]


def hf_to_megatron(
    hf_dir: str | Path,
    out_dir: str | Path,
    tp: int = 1,
    pp: int = 1,
    optimizer: bool = False,
    overwrite: bool = False,
    format: str = "legacy",
) -> Path:
    """Split an HF Llama folder into a tp-way Megatron folder (optionally with its optimizer.pt).

    format="dist" writes megatron-core's own torch_dist layout instead (checkpoint/megatron_dist.py): one
    TP/PP-independent folder that Megatron-LM, NeMo and megatron-core load at any TP/PP."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if format not in ("legacy", "dist"):
        raise UserError(
            f"--format {format!r}: choose legacy (ours, per TP/PP rank) or dist (megatron-core's)"
        )
    if format == "dist" and (tp, pp) != (1, 1):
        raise UserError(
            f"--format dist with --tp {tp} --pp {pp}: a megatron-core folder holds whole tensors and loads "
            "at any TP/PP; drop --tp/--pp"
        )
    if format == "dist" and optimizer:
        raise UserError(
            "--format dist --optimizer: optimizer state is not written in megatron-core's layout yet; "
            "convert the weights alone, or use --format legacy"
        )
    cfg = read_hf_config(hf_dir)
    dims = LlamaDims.from_hf(cfg)
    dims.check_tp(tp, where="--tp")
    check_pp(pp, where="--pp", layers=dims.layers)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out")
    state = read_hf_weights(hf_dir)
    megatron.check_architecture(state, dims, str(hf_dir))
    named = read_named_optimizer(hf_dir) if optimizer else None
    tokenizer = find_tokenizer(hf_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if format == "dist":
            megatron_dist.write_save_dir(tmp, cfg, state)
        else:
            megatron.write_folder(tmp, cfg, state, named, tp, pp)
        if tokenizer is not None:  # beside the weights, so megatron-to-hf gives it back
            write_hf_tokenizer(tokenizer, tmp)
    return out_dir


def megatron_to_hf(
    meg_dir: str | Path,
    out_dir: str | Path,
    optimizer: bool = False,
    overwrite: bool = False,
    hf_config: str | Path | None = None,
    tokenizer: str | Path | None = None,
) -> Path:
    """Merge a Megatron folder (ours: TP shards; megatron-core's: any TP/PP) into an HF Llama folder
    (optionally with optimizer.pt), with the tokenizer `tokenizer` names or the source holds
    (checkpoint/hf.find_tokenizer), when there is one."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out")
    tok = find_tokenizer(meg_dir, tokenizer)
    cfg, full, named = read_megatron(meg_dir, optimizer, hf_config)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_hf_folder(tmp, full, cfg, tok)
        if named is not None:
            torch.save(named, tmp / OPTIM_FILE)
    return out_dir


# ---------------------------------------------------------------------------------------------------
# a training checkpoint for another number of data-parallel replicas


def reshard_megatron(
    checkpoint: str | Path,
    out: str | Path,
    world_size: int,
    tp: int | None = None,
    pp: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Copy an engine=megatron checkpoint for `world_size` ranks at `tp` x `pp` (default: the checkpoint's);
    returns a summary.

    Its tensors are global (megatron-core's format), so they are copied as they are (hard links where
    possible) and load at any TP/PP; what depends on the layout is the data-stream state, split per
    data-parallel replica: it is re-keyed for world_size / (tp x pp) replicas by
    `dist_forget.data.mixture.reshard_state_dict`, and meta.json gets the new sizes and stream fingerprint.
    """
    src, dst = Path(checkpoint), Path(out)
    meta = ckpt_meta.read_meta(src) if ckpt_meta.is_training_checkpoint(src) else {}
    if meta.get("engine") != "megatron" or megatron_dist.find_folder(src) != src:
        raise UserError(
            f"--checkpoint {src}: not an engine=megatron training checkpoint (needs {ckpt_meta.META} and "
            f"megatron-core's {megatron_dist.METADATA_JSON}); pass a checkpoints/step-XXXXXXXX folder"
        )
    if dst.resolve() == src.resolve():
        raise UserError(f"--out {dst} is the source checkpoint; write the resharded copy to another folder")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite or choose another --out")
    common = megatron_train.read_common(src)
    saved = (meta.get("config") or {}).get("parallel") or {}
    old_tp, old_pp = int(saved.get("tp", 1)), int(saved.get("pp", 1))
    tp, pp = tp or old_tp, pp or old_pp
    dims = LlamaDims.from_hf(common["dist_forget"]["hf_config"])
    dims.check_tp(tp, where="--tp")
    check_pp(pp, where="--pp", layers=dims.layers)
    if world_size < 1 or world_size % (tp * pp):
        raise UserError(
            f"--world-size {world_size} is not a multiple of --tp {tp} x --pp {pp}; pass a multiple "
            f"of {tp * pp} (data-parallel replicas x model-parallel ranks)"
        )
    dp, old_dp = world_size // (tp * pp), int(meta.get("data_parallel") or 1)
    client = common["dist_forget"]["client_state"]
    new_client = ckpt_meta.reshard_client(client, dp, parallel={"tp": tp, "pp": pp})
    data = (client.get(ckpt_meta.DATA), new_client.get(ckpt_meta.DATA))
    before = {"world_size": meta.get("world_size"), "tp": old_tp, "pp": old_pp}
    meta = ckpt_meta.reshard_meta(meta, src, world_size, data, parallel={"tp": tp, "pp": pp}, before=before)
    meta["data_parallel"] = dp
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        megatron_train.copy_with_run_state(src, tmp, new_client)
        ckpt_meta.write_meta(tmp, meta)
    return {
        "from": {"tp": old_tp, "pp": old_pp, "dp": old_dp, "world_size": before["world_size"]},
        "to": {"tp": tp, "pp": pp, "dp": dp, "world_size": world_size},
        "optimizer_keys": megatron_train.state_keys(src),
    }
