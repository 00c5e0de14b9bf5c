"""megatron-core's own checkpoint format (`dist_checkpointing`, backend `torch_dist`) for Llama models: what
Megatron-LM and NeMo save, so their models come in here and ours go back out.

A folder (megatron-core writes the same; a Megatron-LM save dir holds it as `iter_NNNNNNN/` or `release/`
named by its tracker file, which `resolve` follows: checkpoint/megatron_folder.py):

    metadata.json   {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                     "common_backend": "torch", "common_backend_version": 1}
    common.pt       what is not sharded: Megatron-LM's `args` (argparse.Namespace), `iteration`,
                    `checkpoint_version`; ours add {"dist_forget": {"format", "hf_config"}} (and a
                    training checkpoint its optimizer and run state: megatron_train.py)
    .metadata       PyTorch DCP's index of the tensors (a plain pickle)
    __R_T.distcp    the tensor bytes

The tensors are megatron-core's global tensors (checkpoint/megatron_layout.py; names, fusions and TP splits:
models/mcore_map.py). Each linear layer's `_extra_state` is a sharded object, so a stock GPTModel's sharded
state dict finds every key it asks for.

`convert hf-to-megatron --format dist` writes a Megatron-LM save dir (`write_save_dir`: the folder as
`release/` plus the tracker), so `--load OUT --finetune` of Megatron-LM takes it as it comes.

One rank's share of the global tensors is a list of blocks (megatron_layout.pieces) which
checkpoint/dcp_io.py writes through PyTorch DCP (each rank its blocks, with the process group of a
training save or none) and reads at any other layout (DCP reads the overlaps): engine=megatron's
checkpoints (checkpoint/megatron_train.py) and `write_folder` (whole tensors: one block each) both go
through them. megatron-core's own `dist_checkpointing.save` needs CUDA (its writer calls
`torch.cuda.synchronize()`); `save_gpt` is that save of a live GPTModel where CUDA exists, for the GPU
check. Reading: `read_folder` loads the model tensors through DCP without running code: `.metadata` (which
torch reads with a bare `pickle.load`) is unpickled with an allow-list of DCP's data classes, `common.pt`
weights-only (allowing Megatron-LM's Namespace and megatron-core's enums), and no pickled object
(`_extra_state`, RNG, optimizer extras) is opened at all. `load_gpt` (megatron-core's own load into a
GPTModel, any TP/PP) first checks the same files and every pickled object weights-only, because DCP's
loader unpickles those with `weights_only=False`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from dist_forget.checkpoint.dcp_io import (
    DCP_METADATA,
    read_dcp_metadata,
    read_tensors,
    write_pieces,
)
from dist_forget.checkpoint.megatron_folder import (
    BACKEND,
    COMMON,
    METADATA_JSON,
    RELEASE,
    TRACKER,
    architecture,
    common_state,
    find_folder,
    load_common,
    permit_common,
    resolve,
)
from dist_forget.checkpoint.megatron_layout import Layout, hf_to_mcore, mcore_to_hf, pieces
from dist_forget.errors import UserError
from dist_forget.models.mcore_map import EMBEDDING, LAYERS, LINEAR_MODULES, MODEL_PREFIXES, OUTPUT, LlamaDims
from dist_forget.safeload import load_pt_permitting

# what callers name through this module: the folder's files and where it is (megatron_folder.py)
__all__ = ["BACKEND", "COMMON", "DCP_METADATA", "METADATA_JSON", "TRACKER", "Layout", "find_folder",
           "hf_to_mcore", "load_common", "load_gpt", "read_dcp_metadata", "read_folder", "resolve", "save_gpt",
           "verify_folder", "write_folder", "write_save_dir"]  # fmt: skip


def verify_folder(folder: Path) -> None:
    """Check, without running code, every file and pickled object megatron-core's `load` would unpickle:
    the DCP index, common.pt, loose sharded-object files, and each byte object inside the .distcp files
    (DCP's loader opens those with weights_only=False)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = read_dcp_metadata(folder)
    load_common(folder)
    for path in sorted(folder.rglob("*.pt")):
        if path.name != COMMON:
            load_pt_permitting(path, permit_common)
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
            io.BytesIO(data), permit_common, where=f"{folder / info.relative_path} (object {key})"
        )


# ---------------------------------------------------------------------------------------------------
# the two directions


def extra_state_objects(dims: LlamaDims) -> dict[str, bytes]:
    """megatron-core's linear layers hold an (empty) extra state per layer, a sharded object each: written
    so that a stock GPTModel's sharded state dict finds every key it asks for."""
    buf = io.BytesIO()
    torch.save([None], buf)
    return {
        f"{LAYERS}{module}._extra_state/shard_{i}_{dims.layers}": buf.getvalue()
        for module in LINEAR_MODULES
        for i in range(dims.layers)
    }


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
        and (k[len(prefix) :].startswith(MODEL_PREFIXES) or k[len(prefix) :] == OUTPUT)
    }
    if OUTPUT in tensors:
        raise UserError(
            f"{folder}: holds {OUTPUT} (untie_embeddings_and_output_weights); the Llama path here needs "
            "tied input and output embeddings"
        )
    cfg = architecture(folder, common, hf_config, int(tensors[EMBEDDING].size[0]))
    dims = LlamaDims.from_hf(cfg)
    state = {prefix + k: torch.empty(tuple(v.size), dtype=v.properties.dtype) for k, v in tensors.items()}
    read_tensors(folder, state)
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
