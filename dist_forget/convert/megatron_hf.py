"""Hugging Face Llama folder <-> Megatron checkpoint folder, both ways, exactly; and a Megatron training
checkpoint for another tp/pp.

The formats are owned by dist_forget/checkpoint/: ours per TP/PP rank (`megatron.py`), megatron-core's
torch_dist (`megatron_dist.py`: Megatron-LM, NeMo), the HF folder and its optimizer.pt (`hf.py`), meta.json
and the trainer's client state (`meta.py`). Here: the three conversions the CLI offers.

Everything is checked before anything is written (config vs tensors, TP divisibility, rank files vs
`tp`), and outputs appear atomically (dist_forget.io.atomic_dir): a failure leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint import megatron, megatron_dist
from dist_forget.checkpoint import meta as ckpt_meta
from dist_forget.checkpoint.hf import (
    OPTIM_FILE,
    named_optimizer_state,
    read_hf_config,
    read_hf_weights,
    read_named_optimizer,
    write_hf_folder,
)
from dist_forget.checkpoint.megatron import META_FILE, rank_file, read_megatron
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
    if format == "dist":
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            megatron_dist.write_save_dir(tmp, cfg, state)
        return out_dir
    named = read_named_optimizer(hf_dir) if optimizer else None
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        megatron.write_folder(tmp, cfg, state, named, tp, pp, client_state={})
    return out_dir


def megatron_to_hf(
    meg_dir: str | Path,
    out_dir: str | Path,
    optimizer: bool = False,
    overwrite: bool = False,
    hf_config: str | Path | None = None,
) -> Path:
    """Merge a Megatron folder (ours: TP shards; megatron-core's: any TP/PP) into an HF Llama folder
    (optionally with optimizer.pt)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise UserError(f"{out_dir} already exists; pass --overwrite or choose another --out")
    cfg, full, named = read_megatron(meg_dir, optimizer, hf_config)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_hf_folder(tmp, full, cfg)
        if named is not None:
            torch.save(named, tmp / OPTIM_FILE)
    return out_dir


# ---------------------------------------------------------------------------------------------------
# a training checkpoint for another tp/pp (and data-parallel) size


def reshard_megatron(
    checkpoint: str | Path,
    out: str | Path,
    tp: int,
    pp: int = 1,
    world_size: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Rewrite an engine=megatron checkpoint for `tp` x `pp` (x data-parallel) ranks; returns a summary.

    Weights and every optimizer state (Adam moments, step, the Anchored-AdamW anchor θ₀) are merged to whole
    tensors and cut again — pure slices, so bit-exact. The client state (data-stream position, train state)
    is kept; `meta.json` gets the new world size. `world_size` defaults to the same number of data-parallel
    replicas as before; when that number changes, the stream state is re-keyed by
    `dist_forget.data.mixture.reshard_state_dict` and meta's data fingerprint with it.
    """
    src, dst = Path(checkpoint), Path(out)
    if not ckpt_meta.is_training_checkpoint(src) or not (src / META_FILE).is_file():
        raise UserError(
            f"--checkpoint {src}: not an engine=megatron training checkpoint (needs {ckpt_meta.META} and "
            f"{META_FILE}); pass a checkpoints/step-XXXXXXXX folder, or for a converted folder use "
            f"megatron-to-hf then hf-to-megatron --tp {tp}"
        )
    if dst.resolve() == src.resolve():
        raise UserError(f"--out {dst} is the source checkpoint; write the resharded copy to another folder")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} already exists; pass --overwrite or choose another --out")
    meta = ckpt_meta.read_meta(src)
    old = megatron.read_meta(src)
    old_tp, old_pp = int(old.get("tp", 1)), int(old.get("pp", 1))
    old_world = int(meta.get("world_size") or old_tp * old_pp)
    old_dp = old_world // (old_tp * old_pp)
    dims = LlamaDims.from_hf(old["hf_config"])
    dims.check_tp(tp, where="--tp")
    check_pp(pp, where="--pp", layers=dims.layers)
    world = world_size if world_size is not None else tp * pp * old_dp
    if world < 1 or world % (tp * pp):
        raise UserError(
            f"--world-size {world} is not a multiple of --tp {tp} x --pp {pp}; pass a multiple "
            f"of {tp * pp} (data-parallel replicas x model-parallel ranks)"
        )
    dp = world // (tp * pp)

    cfg, full, named, client = megatron.read_folder(src, optimizer=True)
    rekey = dp != old_dp and client.get(ckpt_meta.DATA) is not None
    new_client = ckpt_meta.reshard_client(client, dp if rekey else None, parallel={"tp": tp, "pp": pp})
    data = (client[ckpt_meta.DATA], new_client[ckpt_meta.DATA]) if rekey else None
    before = {"world_size": old_world, "tp": old_tp, "pp": old_pp}
    meta = ckpt_meta.reshard_meta(meta, src, world, data, parallel={"tp": tp, "pp": pp}, before=before)

    with atomic_dir(dst, overwrite=overwrite) as tmp:
        megatron.write_folder(tmp, cfg, full, named, tp, pp, client_state=new_client)
        ckpt_meta.copy_hf_config(src, tmp)
        ckpt_meta.write_meta(tmp, meta)
    return {
        "from": {"tp": old_tp, "pp": old_pp, "dp": old_dp, "world_size": old_world},
        "to": {"tp": tp, "pp": pp, "dp": dp, "world_size": world},
        "optimizer_keys": sorted({k for st in (named or {}).get("state", {}).values() for k in st}),
    }
