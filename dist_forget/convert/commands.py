"""`dist-forget convert ...`: thin CLI wrappers over the converters in this package."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def hf_to_megatron(
    hf: Path,
    out: Path,
    tp: int = 1,
    pp: int = 1,
    optimizer: bool = False,
    overwrite: bool = False,
    format: Literal["legacy", "dist"] = "legacy",
) -> int:
    """Split a Hugging Face Llama folder into a Megatron folder: --tp ways per matrix, --pp pipeline stages.

    With --optimizer, the folder's optimizer.pt (Adam moments, anchor) is sharded too. --format dist writes
    megatron-core's own torch_dist layout instead (what Megatron-LM and NeMo load with --ckpt-format
    torch_dist, at any TP/PP; weights only).

    Args:
        hf: Hugging Face Llama folder to split
        out: Megatron folder to write
        tp: tensor-parallel ways each matrix is split into (legacy format)
        pp: pipeline stages (legacy format)
        optimizer: also shard the folder's optimizer.pt (Adam moments, anchor; legacy format)
        overwrite: replace OUT if it exists
        format: legacy = ours (megatron.json + one file per TP/PP rank); dist = megatron-core's torch_dist
    """
    from dist_forget.convert.megatron_hf import hf_to_megatron as convert

    path = convert(hf, out, tp=tp, pp=pp, optimizer=optimizer, overwrite=overwrite, format=format)
    if format == "dist":
        print(f"wrote {path} (megatron-core torch_dist; loads at any TP/PP)")
    else:
        print(f"wrote {path} (tp={tp}, pp={pp}{', with optimizer state' if optimizer else ''})")
    return 0


def megatron_to_hf(
    megatron: Path,
    out: Path,
    optimizer: bool = False,
    overwrite: bool = False,
    hf_config: Path | None = None,
    tokenizer: Path | None = None,
) -> int:
    """Merge a Megatron folder into an HF folder: megatron-core's torch_dist (an engine=megatron checkpoint,
    Megatron-LM / NeMo / --format dist, any TP/PP; a Megatron-LM save dir is followed to the iteration its
    latest_checkpointed_iteration.txt names) or our legacy per-rank format (hf-to-megatron --format legacy).

    With --optimizer, the merged optimizer state is written beside the weights as optimizer.pt.

    Args:
        megatron: Megatron folder (ours, or megatron-core's torch_dist, or a Megatron-LM save dir)
        out: Hugging Face folder to write
        optimizer: also write the merged optimizer state as optimizer.pt (engine=megatron checkpoints and
            legacy folders)
        overwrite: replace OUT if it exists
        hf_config: transformers config.json (or its folder) for a megatron-core folder whose common.pt
            holds no args; unset = read from the checkpoint
        tokenizer: tokenizer folder (or tokenizer.json) to copy into OUT; unset = the one in MEGATRON
            (hf-to-megatron keeps it there) or, for a training checkpoint, its run's
    """
    from dist_forget.convert.megatron_hf import megatron_to_hf as convert

    path = convert(
        megatron, out, optimizer=optimizer, overwrite=overwrite, hf_config=hf_config, tokenizer=tokenizer
    )
    print(f"wrote {path}{' with optimizer.pt' if optimizer else ''}")
    _say_tokenizer(path, megatron)
    return 0


def _say_tokenizer(out: Path, source: Path) -> None:
    """One line when an HF folder was written without a tokenizer: AutoTokenizer cannot load it."""
    if not (Path(out) / "tokenizer.json").is_file():
        print(
            f"note: no tokenizer in or beside {source}: {out} holds the weights alone; rerun with "
            "--tokenizer FOLDER (the tokenizer the model was trained with, e.g. work/data/tokenizer) "
            "--overwrite so AutoTokenizer loads it"
        )


def reshard_megatron(
    checkpoint: Path,
    out: Path,
    world_size: int,
    tp: int | None = None,
    pp: int | None = None,
    overwrite: bool = False,
) -> int:
    """Copy an engine=megatron checkpoint for another number of data-parallel replicas (world-size / (tp x pp)).

    A resume at another --tp/--pp needs no conversion: the checkpoint is megatron-core's format, whose
    global tensors every layout reads (`finetune --resume CKPT parallel.tp=1` continues a tp=2 run). Only
    the data-stream state is split per data-parallel replica; this re-keys it. Weights, Adam moments and
    the anchor are copied as they are.

    Args:
        checkpoint: engine=megatron checkpoint folder (step-*)
        out: checkpoint folder to write
        world_size: total ranks of the run that resumes from OUT
        tp: its tensor-parallel size; unset = the checkpoint's
        pp: its pipeline-parallel size; unset = the checkpoint's
        overwrite: replace OUT if it exists
    """
    from dist_forget.convert.megatron_hf import reshard_megatron as convert

    s = convert(checkpoint, out, world_size=world_size, tp=tp, pp=pp, overwrite=overwrite)
    a, b = s["from"], s["to"]
    print(
        f"wrote {out}: dp={a['dp']} ({a['world_size']} ranks at tp={a['tp']} pp={a['pp']}) -> dp={b['dp']} "
        f"({b['world_size']} ranks at tp={b['tp']} pp={b['pp']}), optimizer state {s['optimizer_keys']}"
    )
    return 0


def zero_to_hf(
    checkpoint: Path,
    out: Path,
    hf_config: Path | None = None,
    tokenizer: Path | None = None,
    with_optimizer: bool = False,
    overwrite: bool = False,
) -> int:
    """Consolidate a DeepSpeed ZeRO checkpoint (stage 1/2/3, any world size) or an engine=single one into a
    Hugging Face folder, with the run's tokenizer.

    --hf-config: a transformers config.json (or folder); found next to the checkpoint when omitted.
    --with-optimizer also writes optimizer.pt: the whole anchor θ₀, Adam moments and step per parameter.

    Args:
        checkpoint: DeepSpeed ZeRO checkpoint folder (step-*)
        out: Hugging Face folder to write
        hf_config: transformers config.json (or its folder); unset = found next to the checkpoint
        tokenizer: tokenizer.json (or its folder) to copy into OUT; unset = the run's (its model/ or
            best/ export, else the shards of meta.json's data.target)
        with_optimizer: also write optimizer.pt (anchor, Adam moments, step per parameter)
        overwrite: replace OUT if it exists
    """
    from dist_forget.convert.zero_to_hf import zero_to_hf_folder

    summary = zero_to_hf_folder(
        checkpoint,
        out,
        hf_config=hf_config,
        tokenizer=tokenizer,
        with_optimizer=with_optimizer,
        overwrite=overwrite,
    )
    extra = f", optimizer state {summary['optimizer_keys']}" if with_optimizer else ""
    layout = (
        f"ZeRO-{summary['stage']} x {summary['world_size']} ranks" if summary["stage"] else "engine=single"
    )
    print(f"wrote {out}: {layout} -> {summary['parameters']:,} parameters{extra}")
    _say_tokenizer(out, checkpoint)
    return 0


def reshard(checkpoint: Path, out: Path, world_size: int, overwrite: bool = False) -> int:
    """Rewrite a ZeRO checkpoint for another data-parallel world size (anchor, moments, step, data state kept).

    The source folder is only read; the new one appears complete or not at all.

    Args:
        checkpoint: DeepSpeed ZeRO checkpoint folder (step-*)
        out: checkpoint folder to write
        world_size: new data-parallel world size
        overwrite: replace OUT if it exists
    """
    from dist_forget.convert.reshard import reshard_checkpoint

    s = reshard_checkpoint(checkpoint, out, world_size, overwrite=overwrite)
    print(
        f"wrote {out}: ZeRO-{s['stage']} {s['from_world_size']} -> {s['to_world_size']} ranks, "
        f"state {s['state_keys']}"
    )
    return 0
