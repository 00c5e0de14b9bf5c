"""megatron-core's checkpoint layout of a Llama model: HF tensors <-> its global tensors, and the blocks of
them one TP/PP rank holds (the names, fusions and TP splits come from models/mcore_map.py).

Tensors are global (whole) under megatron-core's sharded keys, the layers stacked on a leading axis of size
num_layers (what `GPTModel.sharded_state_dict()` declares for homogeneous layers; the per-layer keys of
non-homogeneous saves, layer N's under `mcore_map.LAYERS` + "N.", are read too). The fusions make each
global tensor independent of TP, which is why megatron-core reshards these folders to any TP/PP at load.
One rank's share (`Layout`: its TP rank and pipeline stage) is a list of blocks (`pieces`: megatron-core's
ShardedTensors; fc1 gives two per TP rank, one in each half) that checkpoint/dcp_io.py writes and reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dist_forget.errors import UserError
from dist_forget.models.mcore_map import (
    EMBEDDING,
    FINAL_NORM,
    HF_EMBEDDING,
    HF_NORM,
    LAYER_ALIASES,
    LAYER_TENSORS,
    LAYERS,
    TP_SPLIT,
    LlamaDims,
    fuse,
    mcore_shapes,
    unfuse,
)
from dist_forget.models.megatron import stage_layers

if TYPE_CHECKING:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor


def hf_to_mcore(full: dict[str, torch.Tensor], dims: LlamaDims) -> dict[str, torch.Tensor]:
    """Whole HF Llama tensors (tied head dropped) -> megatron-core's global tensors."""
    return local_tensors(full, Layout(dims))


def mcore_to_hf(tensors: dict[str, torch.Tensor], dims: LlamaDims, where: str) -> dict[str, torch.Tensor]:
    """Inverse of `hf_to_mcore`; per-layer keys are accepted, an embedding padded beyond the vocabulary
    (Megatron-LM pads it to a multiple of 128·TP) is cut back to `dims.vocab` rows."""
    stacked = _stack_layers(tensors, dims, where)
    want = mcore_shapes(dims)
    emb = stacked.get(EMBEDDING)
    if emb is not None and emb.ndim == 2 and emb.shape[0] > dims.vocab:
        stacked[EMBEDDING] = emb[: dims.vocab]
    for key, shape in want.items():
        if key not in stacked:
            raise UserError(
                f"{where}: tensor {key!r} is missing; it is not a GPT/Llama checkpoint of megatron-core"
            )
        if tuple(stacked[key].shape) != shape:
            raise UserError(
                f"{where}: {key} has shape {tuple(stacked[key].shape)} but the architecture says {shape}; "
                "the config (common.pt args or --hf-config) does not describe these weights"
            )
    return shard_of({k: stacked[k] for k in want}, Layout(dims))


def _stack_layers(tensors: dict[str, torch.Tensor], dims: LlamaDims, where: str) -> dict[str, torch.Tensor]:
    """Model keys with the layers stacked, whichever way the folder held them (aliases renamed)."""
    out: dict[str, torch.Tensor] = {}
    per_layer: dict[str, dict[int, torch.Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith(LAYERS):
            out[key] = t
            continue
        rest = key[len(LAYERS) :]
        index, _, tail = rest.partition(".")
        if index.isdigit():
            per_layer.setdefault(LAYER_ALIASES.get(tail, tail), {})[int(index)] = t
        else:
            out[LAYERS + LAYER_ALIASES.get(rest, rest)] = t
    for tail, layers in per_layer.items():
        if sorted(layers) != list(range(dims.layers)):
            raise UserError(
                f"{where}: {LAYERS}N.{tail} exists for layers {sorted(layers)}, the architecture has "
                f"{dims.layers}; the checkpoint is incomplete or the config is not its own"
            )
        if len({tuple(t.shape) for t in layers.values()}) != 1:
            raise UserError(
                f"{where}: {LAYERS}N.{tail} differs in shape between layers; the Llama path needs "
                "identical layers"
            )
        out[LAYERS + tail] = torch.stack([layers[i] for i in range(dims.layers)])
    return out


# ---------------------------------------------------------------------------------------------------
# one rank's share of the global tensors: what a TP/PP rank writes and reads (whole tensors: tp = pp = 1)


@dataclass(frozen=True)
class Layout:
    """Which part of the model a rank holds: TP rank `tp_rank` of `tp`, pipeline stage `pp_rank` of `pp`
    (a contiguous block of layers; the tied embedding on the first and the last stage)."""

    dims: LlamaDims
    tp: int = 1
    tp_rank: int = 0
    pp: int = 1
    pp_rank: int = 0

    @property
    def layers(self) -> range:
        return stage_layers(self.dims.layers, self.pp, self.pp_rank)

    @property
    def has_embedding(self) -> bool:
        return self.pp_rank in (0, self.pp - 1)

    @property
    def has_final_norm(self) -> bool:
        return self.pp_rank == self.pp - 1


def local_tensors(shard: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A rank's HF-named TP shard of its stage (or optimizer state shaped like it) -> its part of each
    megatron-core tensor: QKV and fc1 fused for its TP rank, its layers stacked."""
    d, out = layout.dims, {}
    if layout.has_embedding:
        out[EMBEDDING] = shard[HF_EMBEDDING]
    for t in LAYER_TENSORS:
        out[LAYERS + t.mcore] = torch.stack(
            [
                fuse(t.mcore, [shard[f"model.layers.{i}.{h}"] for h in t.hf], d, layout.tp)
                for i in layout.layers
            ]
        )
    if layout.has_final_norm:
        out[FINAL_NORM] = shard[HF_NORM]
    return out


def shard_of(local: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Inverse of `local_tensors` (exact: pure reshapes and slices)."""
    out: dict[str, torch.Tensor] = {}
    if layout.has_embedding:
        out[HF_EMBEDDING] = local[EMBEDDING].clone()
    for t in LAYER_TENSORS:
        for j, i in enumerate(layout.layers):
            split = unfuse(t.mcore, local[LAYERS + t.mcore][j], layout.dims, layout.tp)
            out.update({f"model.layers.{i}.{h}": x for h, x in zip(t.hf, split)})
    if layout.has_final_norm:
        out[HF_NORM] = local[FINAL_NORM].clone()
    return out


def pieces(local: dict[str, torch.Tensor], layout: Layout, prefix: str = "") -> list[ShardedTensor]:
    """Where each of `local_tensors` sits in the global tensors, as megatron-core's ShardedTensors (keys
    under `prefix`, e.g. an optimizer state's `optimizer.state.exp_avg.`); their data are views of
    `local`'s tensors, so a load fills them."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    def block(key: str, offsets: list[int], t: torch.Tensor) -> ShardedTensor:
        # no regular grid (axis_fragmentations None): fc1's two blocks per rank do not form one
        return ShardedTensor(prefix + key, t, t.dtype, tuple(t.shape), shapes[key], tuple(offsets), None)

    shapes, out = mcore_shapes(layout.dims), []
    for key, t in local.items():
        stacked = key.startswith(LAYERS)
        lead = [layout.layers.start] if stacked else []
        split = TP_SPLIT[key[len(LAYERS) :] if stacked else key]
        if split is None or layout.tp == 1:
            out.append(block(key, lead + [0] * (t.ndim - len(lead)), t))
            continue
        dim, n = split[0] + len(lead), split[1]
        size, whole = t.shape[dim] // n, shapes[key][dim] // n
        for j in range(n):
            offsets = lead + [0] * (t.ndim - len(lead))
            offsets[dim] = j * whole + layout.tp_rank * size
            out.append(block(key, offsets, t.narrow(dim, j * size, size)))
    return out
