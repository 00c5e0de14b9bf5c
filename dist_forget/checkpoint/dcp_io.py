"""PyTorch DCP (distributed checkpoint) I/O of blocks of global tensors, with an index read that runs no code.

A block is part of a global tensor, as megatron-core's own `ShardedTensor` describes it: its key, the local
data, the global shape and where the data starts in it (`global_offset`). `write_pieces` writes each rank's
blocks (those several ranks hold are written once) and raw-byte objects, as megatron-core's torch_dist
backend lays them out; `read_pieces` fills blocks from files written at any other split (DCP reads the
overlapping parts). Neither needs a process group unless a training save is collective; megatron-core's own
save would (and needs CUDA: its writer calls `torch.cuda.synchronize()`), so the planners here are ours.
DCP's `.metadata` is a plain pickle that torch reads with `pickle.load`: here it is unpickled with an
allow-list of DCP's own data classes (`read_dcp_metadata`).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dist_forget.errors import UserError
from dist_forget.safeload import load_pickle_restricted

if TYPE_CHECKING:
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

DCP_METADATA = ".metadata"


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


def write_pieces(
    folder: Path, blocks: list[ShardedTensor], objects: dict[str, bytes], collective: bool
) -> None:
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

    tensors = {(b.key, tuple(b.global_offset)): b for b in blocks}

    class BlockPlanner(DefaultSavePlanner):
        """Writes blocks of global tensors (DCP's default planner knows only whole tensors, DTensors and
        ShardedTensors); objects go in as the bytes megatron-core reads back (its MCoreSavePlanner does
        the same)."""

        def create_local_plan(self) -> SavePlan:
            items = [
                WriteItem(
                    index=MetadataIndex(b.key, torch.Size(b.global_offset)),
                    type=WriteItemType.SHARD,
                    tensor_data=TensorWriteData(
                        chunk=ChunkStorageMetadata(torch.Size(b.global_offset), b.data.size()),
                        properties=TensorProperties.create_from_tensor(b.data),
                        size=torch.Size(b.global_shape),
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
            return tensors[(write_item.index.fqn, tuple(write_item.index.offset))].data

    try:
        with warnings.catch_warnings():  # DCP notes that no process group exists: intended without one
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.save(
                {},
                storage_writer=FileSystemWriter(str(folder), thread_count=1),
                planner=BlockPlanner(flatten_state_dict=False),
                no_dist=not collective,
            )
    except CheckpointException as exc:  # a BaseException: the first rank's error as what it is (a full
        cause = _first_failure(exc)  # disk is an OSError), so that callers report it in one line
        raise (cause if isinstance(cause, Exception) else RuntimeError(str(cause))) from None


def read_pieces(folder: Path, blocks: list[ShardedTensor]) -> None:
    """Fill each block's tensor from the folder's DCP files (any layout they were written in: DCP reads
    the overlapping parts). No process group needed; `.metadata` is read without running code."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    by_key: dict[str, list[ShardedTensor]] = {}
    for b in blocks:
        by_key.setdefault(b.key, []).append(b)

    on_disk = read_dcp_metadata(folder).state_dict_metadata
    for key, mine in by_key.items():  # checked here: DCP would wrap the error in its own exception
        saved = on_disk.get(key)
        if not isinstance(saved, TensorStorageMetadata):
            raise UserError(f"{folder}: tensor {key!r} is missing; the checkpoint is not this model's")
        if tuple(saved.size) != tuple(mine[0].global_shape):
            raise UserError(
                f"{folder}: {key} has shape {tuple(saved.size)}, this model's is {mine[0].global_shape}; "
                "the checkpoint was written for another architecture"
            )

    class BlockPlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, mine in by_key.items():
                chunks = [ChunkStorageMetadata(torch.Size(b.global_offset), b.data.size()) for b in mine]
                items += create_read_items_for_chunk_list(key, on_disk[key], chunks)
            return LoadPlan(items)

        def lookup_tensor(self, index: Any) -> torch.Tensor:
            return by_key[index.fqn][index.index].data

    _dcp_call(
        folder,
        lambda: dcp.load({}, storage_reader=_safe_reader(folder), planner=BlockPlanner(), no_dist=True),
    )


def read_tensors(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Fill whole tensors `state` (DCP keys -> tensors of the saved shapes and dtypes) from the folder's
    files; no process group needed, `.metadata` read without running code."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultLoadPlanner

    _dcp_call(
        folder,
        lambda: dcp.load(
            state, storage_reader=_safe_reader(folder), planner=DefaultLoadPlanner(), no_dist=True
        ),
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
