"""megatron-core's own checkpoint format (`dist_checkpointing`, backend `torch_dist`) for Llama models: what
Megatron-LM and NeMo save, so their models come in here and ours go back out.

A folder (megatron-core writes the same; a Megatron-LM save dir holds it as `iter_NNNNNNN/` or `release/`
named by `latest_checkpointed_iteration.txt`, which `resolve` follows):

    metadata.json   {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                     "common_backend": "torch", "common_backend_version": 1}
    common.pt       what is not sharded: Megatron-LM's `args` (argparse.Namespace), `iteration`,
                    `checkpoint_version`; ours add {"dist_forget": {"format", "hf_config"}} (and a
                    training checkpoint its optimizer and run state: megatron_train.py)
    .metadata       PyTorch DCP's index of the tensors (a plain pickle)
    __R_T.distcp    the tensor bytes

Tensors are global (whole) under megatron-core's sharded keys, the layers of `decoder.layers.*` stacked
on a leading axis of size num_layers (what `GPTModel.sharded_state_dict()` declares for homogeneous
layers; the per-layer keys `decoder.layers.N.*` of non-homogeneous saves are read too). QKV is fused per
query group ([q of the group's heads; k; v] rows) and SwiGLU's fc1 is [gate; up] — both in the order
that makes the global tensor independent of TP, which is why megatron-core reshards these folders to any
TP/PP at load. The layernorms sit under Transformer Engine's names (`linear_qkv.layer_norm_weight`,
`linear_fc1.layer_norm_weight`), as megatron-core's local spec maps them too. Each linear layer's
`_extra_state` is a sharded object, so a stock GPTModel's sharded state dict finds every key it asks for.

`convert hf-to-megatron --format dist` writes a Megatron-LM save dir (`write_save_dir`: the folder as
`release/` plus the tracker), so `--load OUT --finetune` of Megatron-LM takes it as it comes.

One rank's share of the global tensors (`Layout`: its TP rank and pipeline stage) is a list of blocks
(`pieces`: key, offsets into the global tensor, local data; fc1 gives two per TP rank, one in each half),
which `write_pieces` writes through PyTorch DCP (each rank its blocks, with the process group of a
training save or none) and `read_pieces` reads at any other layout (DCP reads the overlaps): engine=megatron's
checkpoints (checkpoint/megatron_train.py) and `write_folder` (whole tensors: one block each) both go
through them. megatron-core's own `dist_checkpointing.save` needs CUDA (its writer calls
`torch.cuda.synchronize()`); `save_gpt` is that save of a live GPTModel where CUDA exists, for the GPU
check. Reading: `read_folder` loads the model
tensors through DCP without running code: `.metadata` (which torch reads with a bare `pickle.load`) is
unpickled with an allow-list of DCP's data classes, `common.pt` weights-only (allowing Megatron-LM's
Namespace and megatron-core's enums), and no pickled object (`_extra_state`, RNG, optimizer extras) is
opened at all. `load_gpt` (megatron-core's own load into a GPTModel, any TP/PP) first checks the same
files and every pickled object weights-only, because DCP's loader unpickles those with
`weights_only=False`.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dist_forget.errors import UserError
from dist_forget.models.megatron import LlamaDims, fuse_stock, split_stock, stage_layers
from dist_forget.safeload import load_pickle_restricted, load_pt_permitting

FORMAT = "dist-forget-mcore-v1"  # our entry in common.pt; the layout itself is megatron-core's
BACKEND = {
    "sharded_backend": "torch_dist",
    "sharded_backend_version": 1,
    "common_backend": "torch",
    "common_backend_version": 1,
}
METADATA_JSON, COMMON, DCP_METADATA = "metadata.json", "common.pt", ".metadata"
TRACKER = "latest_checkpointed_iteration.txt"  # Megatron-LM's save dir: names iter_NNNNNNN or release
RELEASE = "release"  # the iteration name of a converted (not trained) checkpoint in Megatron-LM
NEMO_WEIGHTS = ("weights", "model_weights")  # NeMo 2 checkpoint dir; NeMo 1 .nemo archive, unpacked

EMBEDDING, FINAL_NORM, OUTPUT = (
    "embedding.word_embeddings.weight",
    "decoder.final_layernorm.weight",
    "output_layer.weight",
)
# megatron-core key under `decoder.layers.` -> the HF tensors under `model.layers.N.` it holds, fusion order
LAYER_PARTS: dict[str, list[str]] = {
    "self_attention.linear_qkv.layer_norm_weight": ["input_layernorm.weight"],
    "self_attention.linear_qkv.weight": [f"self_attn.{x}_proj.weight" for x in "qkv"],
    "self_attention.linear_proj.weight": ["self_attn.o_proj.weight"],
    "mlp.linear_fc1.layer_norm_weight": ["post_attention_layernorm.weight"],
    "mlp.linear_fc1.weight": ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
    "mlp.linear_fc2.weight": ["mlp.down_proj.weight"],
}
MODEL_KEYS = (EMBEDDING, *("decoder.layers." + k for k in LAYER_PARTS), FINAL_NORM)
# older megatron-core local specs kept the layernorms as modules of their own
LAYER_ALIASES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}
EXTRA_STATE = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


# ---------------------------------------------------------------------------------------------------
# where a folder is


def find_folder(path: str | Path) -> Path | None:
    """The torch_dist folder `path` is or names (a Megatron-LM save dir via its tracker file, a NeMo
    checkpoint's weights folder), else None."""
    path = Path(path)
    if (path / METADATA_JSON).is_file():
        return path
    for sub in NEMO_WEIGHTS:
        if (path / sub / METADATA_JSON).is_file():
            return path / sub
    tracker = path / TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        sub = path / (RELEASE if text == RELEASE else f"iter_{int(text):07d}" if text.isdigit() else text)
        if (sub / METADATA_JSON).is_file():
            return sub
    return None


def resolve(path: str | Path) -> Path:
    """`find_folder`, or a one-line error saying what a folder of this format holds."""
    folder = find_folder(path)
    if folder is None:
        raise UserError(
            f"{path} is not a megatron-core checkpoint (no {METADATA_JSON}, no {TRACKER}); pass a folder "
            "written by `convert hf-to-megatron --format dist`, Megatron-LM/NeMo (--ckpt-format torch_dist) "
            "or megatron-core's dist_checkpointing.save"
        )
    meta_path = folder / METADATA_JSON
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise UserError(f"{meta_path}: not valid JSON; the checkpoint is damaged") from None
    if meta.get("sharded_backend") != "torch_dist" or meta.get("common_backend", "torch") != "torch":
        raise UserError(
            f"{meta_path}: sharded_backend={meta.get('sharded_backend')!r}, "
            f"common_backend={meta.get('common_backend')!r}; only torch_dist/torch reads here (re-save it "
            "with Megatron-LM --ckpt-format torch_dist, or convert it with megatron-core's "
            "dist_checkpointing first)"
        )
    return folder


# ---------------------------------------------------------------------------------------------------
# HF tensors <-> megatron-core's global tensors (pure reshapes and concatenations: exact both ways)


def mcore_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Every global tensor of the layout and its shape (layers stacked)."""
    h, q, kv, f, n = (
        dims.hidden,
        dims.heads * dims.head_dim,
        dims.kv_heads * dims.head_dim,
        dims.ffn,
        dims.layers,
    )
    return {
        EMBEDDING: (dims.vocab, h),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (n, h),
        "decoder.layers.self_attention.linear_qkv.weight": (n, q + 2 * kv, h),
        "decoder.layers.self_attention.linear_proj.weight": (n, h, q),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (n, h),
        "decoder.layers.mlp.linear_fc1.weight": (n, 2 * f, h),
        "decoder.layers.mlp.linear_fc2.weight": (n, h, f),
        FINAL_NORM: (h,),
    }


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
        if not key.startswith("decoder.layers."):
            out[key] = t
            continue
        rest = key[len("decoder.layers.") :]
        index, _, tail = rest.partition(".")
        if index.isdigit():
            per_layer.setdefault(LAYER_ALIASES.get(tail, tail), {})[int(index)] = t
        else:
            out["decoder.layers." + LAYER_ALIASES.get(rest, rest)] = t
    for tail, layers in per_layer.items():
        if sorted(layers) != list(range(dims.layers)):
            raise UserError(
                f"{where}: decoder.layers.N.{tail} exists for layers {sorted(layers)}, the architecture has "
                f"{dims.layers}; the checkpoint is incomplete or the config is not its own"
            )
        if len({tuple(t.shape) for t in layers.values()}) != 1:
            raise UserError(
                f"{where}: decoder.layers.N.{tail} differs in shape between layers; the Llama path needs "
                "identical layers"
            )
        out["decoder.layers." + tail] = torch.stack([layers[i] for i in range(dims.layers)])
    return out


# ---------------------------------------------------------------------------------------------------
# one rank's share of the global tensors: what a TP/PP rank writes and reads (whole tensors: tp = pp = 1)

# How a TP rank's slice of each (per-layer) tensor sits in the global one: (dim, pieces), None = replicated.
# QKV's query groups are whole on a rank, so its slice is contiguous rows; fc1 = [gate; up] holds a slice of
# each half (pieces = 2), as megatron-core's SwiGLU sharded factory declares it.
TP_SPLIT: dict[str, tuple[int, int] | None] = {
    EMBEDDING: (0, 1),
    "self_attention.linear_qkv.layer_norm_weight": None,
    "self_attention.linear_qkv.weight": (0, 1),
    "self_attention.linear_proj.weight": (1, 1),
    "mlp.linear_fc1.layer_norm_weight": None,
    "mlp.linear_fc1.weight": (0, 2),
    "mlp.linear_fc2.weight": (1, 1),
    FINAL_NORM: None,
}


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


class Piece(NamedTuple):
    """A block of a global tensor: its key, where it starts, the global shape, and the local data."""

    key: str
    offsets: tuple[int, ...]
    shape: tuple[int, ...]
    tensor: torch.Tensor


def local_tensors(shard: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """A rank's HF-named TP shard of its stage (or optimizer state shaped like it) -> its part of each
    megatron-core tensor: QKV and fc1 fused for its TP rank, its layers stacked."""
    d, out = layout.dims, {}
    if layout.has_embedding:
        out[EMBEDDING] = shard["model.embed_tokens.weight"]
    for key, parts in LAYER_PARTS.items():
        out["decoder.layers." + key] = torch.stack(
            [
                fuse_stock(key, [shard[f"model.layers.{i}.{p}"] for p in parts], d, layout.tp)
                for i in layout.layers
            ]
        )
    if layout.has_final_norm:
        out[FINAL_NORM] = shard["model.norm.weight"]
    return out


def shard_of(local: dict[str, torch.Tensor], layout: Layout) -> dict[str, torch.Tensor]:
    """Inverse of `local_tensors` (exact: pure reshapes and slices)."""
    out: dict[str, torch.Tensor] = {}
    if layout.has_embedding:
        out["model.embed_tokens.weight"] = local[EMBEDDING].clone()
    for key, parts in LAYER_PARTS.items():
        for j, i in enumerate(layout.layers):
            split = split_stock(key, local["decoder.layers." + key][j], layout.dims, layout.tp)
            out.update({f"model.layers.{i}.{p}": t for p, t in zip(parts, split)})
    if layout.has_final_norm:
        out["model.norm.weight"] = local[FINAL_NORM].clone()
    return out


def pieces(local: dict[str, torch.Tensor], layout: Layout, prefix: str = "") -> list[Piece]:
    """Where each of `local_tensors` sits in the global tensors (keys under `prefix`, e.g. an optimizer
    state's `optimizer.state.exp_avg.`); the tensors are views of `local`'s, so a load fills them."""
    shapes, out = mcore_shapes(layout.dims), []
    for key, t in local.items():
        stacked = key.startswith("decoder.layers.")
        lead = [layout.layers.start] if stacked else []
        split = TP_SPLIT[key[len("decoder.layers.") :] if stacked else key]
        if split is None or layout.tp == 1:
            out.append(Piece(prefix + key, tuple(lead + [0] * (t.ndim - len(lead))), shapes[key], t))
            continue
        dim, n = split[0] + len(lead), split[1]
        size, whole = t.shape[dim] // n, shapes[key][dim] // n
        for j in range(n):
            offsets = lead + [0] * (t.ndim - len(lead))
            offsets[dim] = j * whole + layout.tp_rank * size
            out.append(Piece(prefix + key, tuple(offsets), shapes[key], t.narrow(dim, j * size, size)))
    return out


# ---------------------------------------------------------------------------------------------------
# common.pt and the architecture


def megatron_args(cfg: dict[str, Any], tp: int = 1, pp: int = 1) -> argparse.Namespace:
    """The architecture as Megatron-LM's arguments (its `load_checkpoint` reads `args` from common.pt),
    with the TP/PP the folder was written at (megatron-core reshards it to any other)."""
    d = LlamaDims.from_hf(cfg)
    return argparse.Namespace(
        num_layers=d.layers,
        hidden_size=d.hidden,
        ffn_hidden_size=d.ffn,
        num_attention_heads=d.heads,
        group_query_attention=d.kv_heads != d.heads,
        num_query_groups=d.kv_heads,
        kv_channels=d.head_dim,
        padded_vocab_size=d.vocab,
        max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
        seq_length=int(cfg.get("max_position_embeddings") or 4096),
        position_embedding_type="rope",
        rotary_base=int(d.rope_theta),
        rotary_percent=1.0,
        normalization="RMSNorm",
        norm_epsilon=d.rms_eps,
        swiglu=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        untie_embeddings_and_output_weights=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        ckpt_format="torch_dist",
    )


def common_state(cfg: dict[str, Any], tp: int = 1, pp: int = 1) -> dict[str, Any]:
    """common.pt of a folder we write: Megatron-LM's entries plus ours (the exact HF config)."""
    return {
        "args": megatron_args(cfg, tp, pp),
        "checkpoint_version": 3.0,
        "iteration": 0,
        "dist_forget": {"format": FORMAT, "hf_config": cfg},
    }


def _permit_common(name: str) -> Any | None:
    """What a Megatron-LM common.pt (or a pickled object of its .distcp files) may hold beyond plain data:
    the classes megatron-core itself allows for weights-only loading (`megatron.core.safe_globals`: its
    args Namespace, numpy arrays of the RNG state, BytesIO, its enums...) and any other enum of megatron's.
    Weights-only loading only constructs such a class from its value; nothing else is allowed."""
    if name == "argparse.Namespace":
        return argparse.Namespace
    try:
        from megatron.core.safe_globals import SAFE_GLOBALS
    except ImportError:  # megatron-core absent: Megatron-LM files need it anyway
        SAFE_GLOBALS = []  # noqa: N806 - megatron's name
    for cls in SAFE_GLOBALS:
        if f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}" == name:
            return cls
    module, _, attr = name.rpartition(".")
    if not module.startswith("megatron."):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, enum.Enum) else None


def load_common(folder: Path) -> dict[str, Any]:
    """common.pt, weights-only (see `_permit_common`); {} when the folder has none of it."""
    path = folder / COMMON
    if not path.is_file():
        return {}
    common = load_pt_permitting(path, _permit_common)
    if not isinstance(common, dict):
        raise UserError(f"{path}: holds a {type(common).__name__}, not megatron-core's common state dict")
    return common


def hf_config_from_args(args: Any, vocab: int, where: str) -> dict[str, Any]:
    """A transformers Llama config for Megatron-LM's arguments (refusing what the Llama path cannot hold)."""
    from transformers import LlamaConfig

    def get(name: str, default: Any = None) -> Any:
        return getattr(args, name, default)

    for name, want in (
        ("normalization", "RMSNorm"),
        ("swiglu", True),
        ("add_bias_linear", False),
        ("add_qkv_bias", False),
        ("position_embedding_type", "rope"),
        ("untie_embeddings_and_output_weights", False),
        ("rotary_percent", 1.0),
        ("rotary_interleaved", False),
    ):
        got = get(name, want)
        if got != want:
            raise UserError(
                f"{where}: the checkpoint's args.{name}={got!r}; the Llama path needs {want!r} (or pass "
                "--hf-config with a matching Llama config if the args are stale)"
            )
    heads = int(get("num_attention_heads"))
    kv = int(get("num_query_groups") or heads) if get("group_query_attention", False) else heads
    max_pos = int(get("max_position_embeddings") or get("seq_length") or 4096)
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=int(get("hidden_size")),
        intermediate_size=int(get("ffn_hidden_size")),
        num_hidden_layers=int(get("num_layers")),
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=int(get("kv_channels") or int(get("hidden_size")) // heads),
        rms_norm_eps=float(get("norm_epsilon", 1e-5)),
        rope_theta=float(get("rotary_base", 10000)),
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
    ).to_dict()


def _architecture(
    folder: Path, common: dict[str, Any], hf_config: dict[str, Any] | None, vocab: int
) -> dict[str, Any]:
    """The HF config of a folder: given, ours (common.pt), or from Megatron-LM's args (common.pt)."""
    if hf_config is not None:
        return hf_config
    ours = common.get("dist_forget")
    if isinstance(ours, dict) and ours.get("format") == FORMAT:
        return dict(ours["hf_config"])
    if common.get("args") is not None:
        return hf_config_from_args(common["args"], vocab, str(folder / COMMON))
    raise UserError(
        f"{folder}: the checkpoint says nothing of its architecture (no args or dist_forget entry in "
        f"{COMMON}); pass --hf-config with the model's transformers config.json"
    )


# ---------------------------------------------------------------------------------------------------
# DCP's index, read without running code


def _dcp_global_ok(module: str, name: str) -> bool:
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    return (module, name) in _DCP_GLOBALS


_DCP_GLOBALS = {
    *(
        ("torch.distributed.checkpoint.metadata", n)
        for n in (
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "MetadataIndex",
            "StorageMeta",
            "_MEM_FORMAT_ENCODING",
        )
    ),
    ("torch.distributed._shard.sharded_tensor.metadata", "TensorProperties"),
    ("torch.distributed._shard.sharded_tensor.metadata", "MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("megatron.core.dist_checkpointing.strategies.torch", "MCoreMetadata"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


def read_dcp_metadata(folder: Path) -> Any:
    """DCP's `.metadata` unpickled with an allow-list of its own data classes (torch uses pickle.load)."""
    from torch.distributed.checkpoint.metadata import Metadata

    md = load_pickle_restricted(folder / DCP_METADATA, _dcp_global_ok)
    if not isinstance(md, Metadata):
        raise UserError(f"{folder / DCP_METADATA}: not a PyTorch DCP index; the checkpoint is damaged")
    return md


def _safe_reader(folder: Path) -> Any:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """FileSystemReader whose index read runs no code (see read_dcp_metadata)."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md = read_dcp_metadata(folder)
            if getattr(md, "storage_meta", None) is None:
                md.storage_meta = StorageMeta()
            md.storage_meta.load_id = self.load_id
            return md

    return SafeReader(str(folder))


def verify_folder(folder: Path) -> None:
    """Check, without running code, every file and pickled object megatron-core's `load` would unpickle:
    the DCP index, common.pt, loose sharded-object files, and each byte object inside the .distcp files
    (DCP's loader opens those with weights_only=False)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = read_dcp_metadata(folder)
    load_common(folder)
    for path in sorted(folder.rglob("*.pt")):
        if path.name != COMMON:
            load_pt_permitting(path, _permit_common)
    for key, item in md.state_dict_metadata.items():
        if not isinstance(item, BytesStorageMetadata):
            continue
        info = next((v for k, v in md.storage_data.items() if k.fqn == key), None)
        if info is None or getattr(info, "transform_descriptors", None):
            raise UserError(f"{folder}: object {key!r} has no plain storage entry; the checkpoint is damaged")
        with open(folder / info.relative_path, "rb") as fh:
            fh.seek(info.offset)
            data = fh.read(info.length)
        load_pt_permitting(
            io.BytesIO(data), _permit_common, where=f"{folder / info.relative_path} (object {key})"
        )


# ---------------------------------------------------------------------------------------------------
# the two directions


def extra_state_objects(dims: LlamaDims) -> dict[str, bytes]:
    """megatron-core's linear layers hold an (empty) extra state per layer, a sharded object each: written
    so that a stock GPTModel's sharded state dict finds every key it asks for."""
    buf = io.BytesIO()
    torch.save([None], buf)
    return {
        f"decoder.layers.{module}._extra_state/shard_{i}_{dims.layers}": buf.getvalue()
        for module in EXTRA_STATE
        for i in range(dims.layers)
    }


def write_pieces(folder: Path, blocks: list[Piece], objects: dict[str, bytes], collective: bool) -> None:
    """PyTorch DCP files of `blocks` (each rank its own; blocks several ranks hold are written once) and
    `objects` (raw bytes, as megatron-core stores sharded objects). `collective`: every rank of the default
    process group calls this (a training save); else one process writes everything."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
        TensorProperties,
    )
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    tensors = {(b.key, tuple(b.offsets)): b for b in blocks}

    class PiecePlanner(DefaultSavePlanner):
        """Writes blocks of global tensors (DCP's default planner knows only whole tensors, DTensors and
        ShardedTensors); objects go in as the bytes megatron-core reads back (its MCoreSavePlanner does
        the same)."""

        def create_local_plan(self) -> SavePlan:
            items = [
                WriteItem(
                    index=MetadataIndex(b.key, torch.Size(b.offsets)),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(torch.Size(b.offsets), b.tensor.size()),
                        properties=TensorProperties.create_from_tensor(b.tensor),
                        size=torch.Size(b.shape),
                    ),
                )
                for b in tensors.values()
            ]
            items += [WriteItem(index=MetadataIndex(k), type=WriteItemType.BYTE_IO) for k in objects]
            self.plan = SavePlan(items)
            return self.plan

        def resolve_data(self, write_item: Any) -> Any:
            if write_item.type == WriteItemType.BYTE_IO:
                return io.BytesIO(objects[write_item.index.fqn])
            return tensors[(write_item.index.fqn, tuple(write_item.index.offset))].tensor

    try:
        with warnings.catch_warnings():  # DCP notes that no process group exists: intended without one
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(
                {},
                storage_writer=FileSystemWriter(str(folder), thread_count=1),
                planner=PiecePlanner(flatten_state_dict=False),
                no_dist=not collective,
            )
    except CheckpointException as exc:  # a BaseException: the first rank's error as what it is (a full
        cause = _first_failure(exc)  # disk is an OSError), so that callers report it in one line
        raise (cause if isinstance(cause, Exception) else RuntimeError(str(cause))) from None


def read_pieces(folder: Path, blocks: list[Piece]) -> None:
    """Fill each block's tensor from the folder's DCP files (any layout they were written in: DCP reads
    the overlapping parts). No process group needed; `.metadata` is read without running code."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    by_key: dict[str, list[Piece]] = {}
    for b in blocks:
        by_key.setdefault(b.key, []).append(b)

    on_disk = read_dcp_metadata(folder).state_dict_metadata
    for key, mine in by_key.items():  # checked here: DCP would wrap the error in its own exception
        saved = on_disk.get(key)
        if not isinstance(saved, TensorStorageMetadata):
            raise UserError(f"{folder}: tensor {key!r} is missing; the checkpoint is not this model's")
        if tuple(saved.size) != tuple(mine[0].shape):
            raise UserError(
                f"{folder}: {key} has shape {tuple(saved.size)}, this model's is {mine[0].shape}; "
                "the checkpoint was written for another architecture"
            )

    class PiecePlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, mine in by_key.items():
                chunks = [ChunkStorageMetadata(torch.Size(b.offsets), b.tensor.size()) for b in mine]
                items += create_read_items_for_chunk_list(key, on_disk[key], chunks)
            return LoadPlan(items)

        def lookup_tensor(self, index: Any) -> torch.Tensor:
            return by_key[index.fqn][index.index].tensor

    _dcp_call(
        folder,
        lambda: dcp.load({}, storage_reader=_safe_reader(folder), planner=PiecePlanner(), no_dist=True),
    )


def _dcp_call(folder: Path, call: Any) -> None:
    """Run a DCP read; a missing or cut .distcp file becomes one line naming the folder."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():  # DCP notes that no process group exists: intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            call()
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - DCP wraps what failed in its own
        cause = _first_failure(exc) if isinstance(exc, CheckpointException) else exc
        if isinstance(cause, UserError):
            raise cause from None
        first = str(cause).strip().splitlines()[-1][:200] if str(cause).strip() else type(cause).__name__
        raise UserError(
            f"{folder}: cannot read its tensors ({first}); the checkpoint is incomplete"
        ) from None


def _first_failure(exc: Any) -> BaseException:
    """The exception of the lowest rank that failed (DCP gathers every rank's into one)."""
    failures = exc.failures
    return failures[min(failures)][0] if failures else exc


def write_folder(tmp: Path, cfg: dict[str, Any], full: dict[str, torch.Tensor]) -> None:
    """Write whole HF tensors into `tmp` as a megatron-core torch_dist folder (no process group needed)."""
    dims = LlamaDims.from_hf(cfg)
    blocks = pieces({k: v.contiguous() for k, v in hf_to_mcore(full, dims).items()}, Layout(dims))
    write_pieces(tmp, blocks, extra_state_objects(dims), collective=False)
    torch.save(common_state(cfg), tmp / COMMON)
    (tmp / METADATA_JSON).write_text(json.dumps(BACKEND))


def write_save_dir(tmp: Path, cfg: dict[str, Any], full: dict[str, torch.Tensor]) -> Path:
    """`write_folder` as a Megatron-LM save dir: `release/` and the tracker file naming it, so that
    `--load tmp` (--finetune) takes it as a converted release; megatron-core's API reads `tmp/release`."""
    folder = tmp / RELEASE
    folder.mkdir()
    write_folder(folder, cfg, full)
    (tmp / TRACKER).write_text(RELEASE)
    return folder


def _model_prefix(keys: Any, folder: Path) -> str:
    """What the model's keys start with: nothing (megatron-core, Megatron-LM), `module.` (NeMo 2), ...
    The shortest prefix of the embedding's key: optimizer entries embed the same key deeper."""
    found = sorted((k[: -len(EMBEDDING)] for k in keys if k.endswith(EMBEDDING)), key=len)
    if not found or (found[0] and not found[0].endswith(".")):
        raise UserError(
            f"{folder}: no {EMBEDDING} among its tensors; it is not a megatron-core GPT checkpoint "
            f"(found {sorted(keys)[:3]}...)"
        )
    return found[0]


def read_folder(
    path: str | Path, hf_config: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(hf_config, whole HF tensors, common state) of a torch_dist folder of any TP/PP, ours or
    Megatron-LM's; only the model's tensors are read (optimizer and RNG entries are left on disk)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    folder = resolve(path)
    md = read_dcp_metadata(folder)
    common = load_common(folder)
    prefix = _model_prefix(md.state_dict_metadata, folder)
    tensors = {
        k[len(prefix) :]: v
        for k, v in md.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata)
        and k.startswith(prefix)
        and (k[len(prefix) :].startswith(("embedding.", "decoder.")) or k[len(prefix) :] == OUTPUT)
    }
    if OUTPUT in tensors:
        raise UserError(
            f"{folder}: holds {OUTPUT} (untie_embeddings_and_output_weights); the Llama path here needs "
            "tied input and output embeddings"
        )
    cfg = _architecture(folder, common, hf_config, int(tensors[EMBEDDING].size[0]))
    dims = LlamaDims.from_hf(cfg)
    state = {prefix + k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in tensors.items()}
    _dcp_call(
        folder,
        lambda: dcp.load(
            state, storage_reader=_safe_reader(folder), planner=DefaultLoadPlanner(), no_dist=True
        ),
    )
    full = mcore_to_hf({k[len(prefix) :]: v for k, v in state.items()}, dims, str(folder))
    return cfg, {k: v.float() if v.is_floating_point() else v for k, v in full.items()}, common


# ---------------------------------------------------------------------------------------------------
# megatron-core's own save and load of a live GPTModel (where CUDA exists)


def load_gpt(gpt: Any, path: str | Path) -> None:
    """Load a folder into a megatron-core GPTModel with megatron-core's own `dist_checkpointing.load`, at
    the model's TP/PP (the library reshards); everything it would unpickle is checked first."""
    from megatron.core import dist_checkpointing

    folder = resolve(path)
    verify_folder(folder)
    # under "model", as Megatron-LM nests it: the result also holds common.pt's entries at the top
    loaded = dist_checkpointing.load({"model": gpt.sharded_state_dict()}, str(folder))
    gpt.load_state_dict(loaded["model"])


def save_gpt(gpt: Any, path: str | Path, cfg: dict[str, Any]) -> None:
    """megatron-core's own `dist_checkpointing.save` of a GPTModel (collective; needs CUDA, see module doc)
    into an empty folder `path`, with our common state so `read_folder` knows the exact HF config."""
    from megatron.core import dist_checkpointing

    Path(path).mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save({"model": gpt.sharded_state_dict(), **common_state(cfg)}, str(path))
