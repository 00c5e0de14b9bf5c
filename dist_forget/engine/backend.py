"""The backend interface: how the trainer loop drives one way of running a model on N processes.

The trainer (engine/trainer.py) knows nothing about DeepSpeed or Megatron. It asks a `Backend` to

1. `init_distributed()` — join the process group (or not); sets `rank`, `world_size`, `dp_rank`,
   `dp_size`, `device`. The data stream is built for (dp_rank, dp_size): ranks of one tensor-parallel
   group read the same sequences.
2. `build(model_factory, optimizer_factory, micro_batch, grad_accum)` — make the model on each rank
   (`model_factory()` returns a `transformers` causal LM on CPU, fp32, HF parameter names) and the
   optimizer (`optimizer_factory(model)`, which makes the param groups; AnchoredAdamW in practice),
   then wrap them. `Backend.build` runs these steps once for all; a backend says where the model goes
   (`_place`) and what wraps it (`_wrap`).
3. `train_step(micro_batches, lr) -> StepResult` — one optimizer step over `grad_accum` micro-batches
   of token ids `[micro_batch, T]` on this rank; the returned loss is the **global** mean next-token loss
   (nats/token) over all micro-batches of all data-parallel ranks, identical on every rank.
   `Backend.train_step` sets `lr` on every param group; a backend's `_step` does the rest.
4. `eval_loss(batches) -> float` — global token-weighted mean loss over the batches of all ranks (a rank
   may have fewer batches than another; the backend keeps collectives in step). `Backend.eval_loss` sums
   each batch's `_loss_sum` in eval mode and then over the data-parallel ranks.
5. `save(root, tag, client_state)` / `load(root, tag) -> client_state` — collective; write/read the
   directory `root/tag/` in the backend's native layout. `client_state` is plain data and tensors
   (torch.load(weights_only=True)-safe). The checkpoint manager (engine/run_folder.py) chooses the tags,
   renames temp tags and owns the `latest` pointer; a backend never writes outside `root/tag/`.
6. `full_state_dict() -> dict[str, Tensor]` — collective; the full fp32 weights with Hugging Face
   names on rank 0 (empty dict on other ranks), for exporting an HF folder.
7. `all_reduce_sum(values)`, `barrier()`, `close()`.

Shared by the backends (one copy each): `_join_world()` (launcher environment → rank, device and the
process-group backend; a plain process is a world of one), `_autocast()` (bf16 autocast when the run's
precision is bf16) and `_sum()` (an exact fp64 all-reduce of a few floats over a process group).

Backends: `single` (plain PyTorch, one process), `deepspeed` (ZeRO stage 0-3 from `parallel.zero_stage`),
`megatron` (tensor parallel; dist_forget/engine/megatron_backend.py). `make_backend(name, cfg)` picks one;
the registry below is the one place to add another.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dist_forget.errors import UserError
from dist_forget.net import free_port

BACKENDS: dict[str, str] = {
    "single": "dist_forget.engine.single:SingleBackend",
    "deepspeed": "dist_forget.engine.deepspeed_backend:DeepSpeedBackend",
    "megatron": "dist_forget.engine.megatron_backend:MegatronBackend",
}


@dataclass
class ParallelConfig:
    """How the run is split over processes (the `parallel:` section)."""

    zero_stage: int = 0  # deepspeed: 0 = plain data parallel, 1/2/3 shard optimizer/gradients/weights
    tp: int = 1  # megatron: tensor-parallel size
    pp: int = 1  # megatron: pipeline-parallel size
    impl: Literal["local", "stock"] = (
        "local"  # megatron: our TP layers (CPU+GPU) or megatron-core's GPTModel (GPU)
    )
    # seconds a collective (and the start-up rendezvous) waits for a stalled or dead rank before every rank
    # stops with one line (engine/peers.py). 300 s is far above any healthy wait of this loop (a
    # step, rank 0 exporting an HF folder while the others wait, a checkpoint of a few GB) and 2-6x shorter
    # than torch's and DeepSpeed's 10-30 min defaults; raise it for models whose save takes minutes
    timeout_s: float = 300.0

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise UserError(f"parallel.zero_stage = {self.zero_stage} must be 0, 1, 2 or 3")
        if self.tp < 1 or self.pp < 1:
            raise UserError(f"parallel.tp = {self.tp}, parallel.pp = {self.pp} must both be >= 1")
        if self.impl not in ("local", "stock"):
            raise UserError(f"parallel.impl = {self.impl!r} must be 'local' or 'stock'")
        if not self.timeout_s > 0:
            raise UserError(f"parallel.timeout_s = {self.timeout_s} must be > 0 seconds; try 300")


@dataclass
class BackendConfig:
    """What a backend needs from the run config (the trainer fills it)."""

    parallel: ParallelConfig
    precision: Literal["fp32", "bf16"]
    grad_clip: float  # max global grad norm; 0 disables clipping
    seed: int


@dataclass
class StepResult:
    loss: float  # global mean next-token loss of the step, nats/token
    grad_norm: float  # global grad norm before clipping (nan if the backend cannot tell)


ModelFactory = Callable[[], nn.Module]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class Backend(ABC):
    """One way of running the model on this process's share of the world (see module docstring)."""

    name: str = "?"

    def __init__(self, cfg: BackendConfig):
        self.cfg = cfg
        self.rank = 0
        self.world_size = 1
        self.local_rank = 0
        self.dp_rank = 0
        self.dp_size = 1
        self.device = torch.device("cpu")

    @abstractmethod
    def init_distributed(self) -> None: ...

    def build(
        self,
        model_factory: ModelFactory,
        optimizer_factory: OptimizerFactory,
        micro_batch: int,
        grad_accum: int,
    ) -> None:
        """The model placed by `_place`, in train mode, its optimizer over the placed parameters (a
        model-parallel backend's shards), then both handed to `_wrap`."""
        self.model = self._place(model_factory())
        self.model.train()
        self.optimizer = optimizer_factory(self.model)
        self._wrap(micro_batch, grad_accum)

    def _place(self, model: nn.Module) -> nn.Module:
        """The factory's model as this rank holds it: on its device (a backend may keep only its shard)."""
        return model.to(self.device)

    def _wrap(self, micro_batch: int, grad_accum: int) -> None:
        """Hand `self.model` and `self.optimizer` to the backend's engine, if it has one."""
        return None  # plain PyTorch and our Megatron layers run them as they are

    def train_step(self, micro_batches: Sequence[Tensor], lr: float) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return self._step(micro_batches)

    @abstractmethod
    def _step(self, micro_batches: Sequence[Tensor]) -> StepResult:
        """One optimizer step at the learning rate `train_step` has set (see the module docstring)."""

    @torch.no_grad()
    def eval_loss(self, batches: Iterable[Tensor]) -> float:
        loss_sum, count = self._eval_sums(batches)
        total, n_total = self.dp_all_reduce_sum([loss_sum, count])
        return total / n_total if n_total else math.nan

    def _eval_sums(self, batches: Iterable[Tensor]) -> tuple[float, float]:
        """(summed next-token loss, predicted tokens) over this rank's batches, in eval mode meanwhile."""
        self.model.eval()
        loss_sum, count = 0.0, 0
        try:
            for ids in batches:
                s, n = self._loss_sum(ids.to(self.device))
                loss_sum, count = loss_sum + s, count + n
        finally:
            self.model.train()
        return loss_sum, count

    def _loss_sum(self, ids: Tensor) -> tuple[float, int]:
        """(summed next-token loss, predicted tokens) of one batch, forward only."""
        with self._autocast():
            s, n = causal_lm_loss_sum(self.model, ids)
        return float(s), n

    @abstractmethod
    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None: ...

    @abstractmethod
    def load(self, root: Path, tag: str) -> dict[str, Any]: ...

    @abstractmethod
    def full_state_dict(self) -> dict[str, Tensor]: ...

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum `values` over all ranks (fp64, so counts stay exact)."""
        if self.world_size == 1:
            return [float(v) for v in values]
        return self._sum(values)

    def dp_all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum over data-parallel ranks only; backends with model parallelism override this."""
        return self.all_reduce_sum(values)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def _comm_device(self) -> torch.device:
        # gloo reduces CPU tensors, NCCL CUDA tensors
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _sum(self, values: Sequence[float], group: Any = None) -> list[float]:
        """Sum `values` over the ranks of `group` (default: all) in fp64; a collective of that group."""
        t = torch.tensor(list(values), dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t, group=group)
        return [float(v) for v in t.tolist()]

    def _join_world(self) -> Literal["nccl", "gloo"]:
        """Read rank and world from the launcher's environment (a plain process without a launcher is a
        world of one on a free local port), pick the device, and return the process-group backend:
        NCCL with one GPU per local rank, else gloo with one share of the CPU cores per rank."""
        if "RANK" not in os.environ:
            os.environ.update(
                RANK="0",
                WORLD_SIZE="1",
                LOCAL_RANK="0",
                LOCAL_WORLD_SIZE="1",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()),
            )
        set_collective_timeout(self.cfg.parallel.timeout_s)
        rank, world, local_rank, local_world = env_world()
        self.rank, self.world_size, self.local_rank = rank, world, local_rank
        self.dp_rank, self.dp_size = (
            rank,
            world,
        )  # model-parallel backends narrow these once their groups exist
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local_rank)
            torch.cuda.set_device(self.device)
            return "nccl"
        set_cpu_threads(local_world)
        return "gloo"

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast for forward passes when the run's precision is bf16 (weights stay fp32)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def collective_timeout(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def set_collective_timeout(seconds: float) -> None:
    """Make `seconds` the timeout of every process group created from now on in this process: torch gives a
    `new_group` without a timeout its module default (30 min for gloo), not the world group's, and DeepSpeed
    and megatron-core make their groups that way (ZeRO's copy of the world group, TP/DP groups)."""
    from torch.distributed import distributed_c10d as c10d

    c10d.default_pg_timeout = collective_timeout(seconds)
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
        c10d.default_pg_nccl_timeout = collective_timeout(seconds)


def make_backend(name: str, cfg: BackendConfig) -> Backend:
    if name not in BACKENDS:
        raise UserError(f"engine = {name!r} is not a backend; choose one of: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)


def causal_lm_loss_sum(model: nn.Module, input_ids: Tensor) -> tuple[Tensor, int]:
    """(sum of next-token losses over the batch, number of predicted tokens) for an HF causal LM."""
    logits = model(input_ids=input_ids).logits[:, :-1, :]
    targets = input_ids[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), reduction="sum"
    )
    return loss, targets.numel()


def env_world() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) from the launcher's environment (1 process if unset)."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


def set_cpu_threads(local_world: int) -> None:
    """One share of the cores per rank: ranks that each run as many threads as there are cores (2 ranks on 2
    cores) train about 4x slower than with one share each."""
    if "OMP_NUM_THREADS" not in os.environ and local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
