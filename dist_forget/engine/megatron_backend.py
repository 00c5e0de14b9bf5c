"""`megatron`: tensor x pipeline x data parallel (megatron-core layers), gloo on CPU, NCCL on GPU.

`parallel.tp` x `parallel.pp` ranks hold one model between them: each a TP shard of every matrix of its
pipeline stage's layers (models/megatron.py); the world is split into world/(tp·pp) data-parallel
replicas. megatron-core's `parallel_state` makes the groups; the ranks of one model replica share a
data-parallel rank, so the trainer feeds them the same sequences (dp_rank, dp_size), the TP collectives
inside forward stay in step, and the last pipeline stage has the labels it needs.

Pipeline schedule: one micro-batch at a time, forward down the stages and backward up them with
point-to-point send/recv of the [batch, seq, hidden] activations and their gradients (simple and exact,
not fast: a stage idles while the others work). The tied embedding lives on the first and the last
stage; their gradients are summed over megatron's embedding group, so the two copies stay equal.

`parallel.impl=stock` (GPU only) runs megatron-core's own GPTModel instead of our layers
(models/megatron.StockLlama): same interface, weights and optimizer state converted to HF-named shards at
the checkpoint boundary, so both implementations write and read the same checkpoints.

The optimizer (AnchoredAdamW in practice) is built over the *shard* parameters, so its per-parameter
state — Adam moments and the anchor θ₀, captured lazily from the shard before its first update — is
sharded exactly like the weights it belongs to. Gradients are averaged over the data-parallel group by
hand (one flat all-reduce); the global grad norm counts sharded tensors over the TP group and replicated
ones (norm gains) once.

Checkpoint layout in `root/tag/`: megatron-core's own format (dist_forget/checkpoint/formats.py `MEGATRON`
over megatron_train.py: the weights and the optimizer state — Adam moments and the anchor — as global
tensors under megatron-core's keys, each rank writing its block; the client state in common.pt). A resume
reads each rank's blocks at whatever TP/PP it runs, so a checkpoint written at tp=2 resumes at tp=1 as it
is; `convert megatron-to-hf` and `model.init_from` read it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dist_forget.checkpoint import megatron as ckpt
from dist_forget.checkpoint.formats import MEGATRON
from dist_forget.checkpoint.hf import indexed_optimizer_state, named_optimizer_state
from dist_forget.checkpoint.megatron_layout import Layout
from dist_forget.checkpoint.meta import TRAIN
from dist_forget.engine.backend import (
    Backend,
    BackendConfig,
    StepResult,
    collective_timeout,
    env_world,
)
from dist_forget.errors import UserError
from dist_forget.models import mcore_map
from dist_forget.models import megatron as M


class MegatronBackend(Backend):
    name = "megatron"
    model: M.MegatronLlama | M.StockLlama  # this rank's shard of the model (`_place`)

    def __init__(self, cfg: BackendConfig):
        super().__init__(cfg)
        M.check_pp(cfg.parallel.pp)
        self.tp, self.pp = cfg.parallel.tp, cfg.parallel.pp
        self.stock = cfg.parallel.impl == "stock"
        if self.stock:  # before any process group: a CPU machine gets the one-line reason at once
            M.require_cuda_for_stock()
            if self.pp != 1:
                raise UserError(
                    f"parallel.impl=stock supports parallel.pp=1 only (got {self.pp}); use "
                    "parallel.impl=local for pipeline parallelism"
                )
        self.tp_rank, self.pp_rank = 0, 0

    def init_distributed(self) -> None:
        _, world, _, _ = env_world()
        mp = self.tp * self.pp
        if world % mp:
            raise UserError(
                f"parallel.tp={self.tp} x parallel.pp={self.pp} does not divide the number of "
                f"processes {world}; launch a multiple of {mp} ranks (torchrun --nproc_per_node {mp})"
            )
        backend = self._join_world()
        if not dist.is_initialized():
            dist.init_process_group(
                backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=collective_timeout(self.cfg.parallel.timeout_s),
            )
        M.init_model_parallel(self.tp, self.cfg.parallel.pp, self.cfg.parallel.timeout_s)
        self.tp_rank, _ = M.tp_rank_size()
        self.pp_rank, _ = M.pp_rank_size()
        self.dp_rank, self.dp_size = M.dp_rank_size()

    # -- model ---------------------------------------------------------------------------------------

    def _place(self, hf: nn.Module) -> nn.Module:
        # Every rank builds the full HF model (same seed or same pretrained folder => same weights) and
        # keeps only its slice: TP init then equals the 1-rank init exactly.
        self.hf_config = hf.config
        dims = M.LlamaDims.from_hf(hf.config)
        dims.check_tp(self.tp)
        M.check_pp(self.pp, layers=dims.layers)
        dtype = torch.float32  # master weights; bf16 runs under autocast like the single backend
        mine: M.MegatronLlama | M.StockLlama
        if self.stock:
            mine = M.StockLlama(hf.config, dtype=dtype, device=str(self.device), seed=self.cfg.seed)
        else:
            mine = M.MegatronLlama(hf.config, dtype=dtype, device=str(self.device))
        mine.load_full({k: v.to(self.device) for k, v in hf.state_dict().items()}, where="model")
        self.param_names = mine.param_name_map()
        return mine

    def _dp_group(self):
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_group()

    def _tp_group(self):
        from megatron.core import parallel_state

        return parallel_state.get_tensor_model_parallel_group()

    def _step(self, micro_batches: Sequence[Tensor]) -> StepResult:
        local = 0.0
        for ids in micro_batches:
            local += self._forward_backward(ids.to(self.device), scale=1.0 / len(micro_batches))[0]
        self._sum_tied_embedding_grads()
        self._average_grads_over_dp()
        grad_norm = self._clip_grads()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        (total,) = self.dp_all_reduce_sum(self._from_last_stage([local]))
        return StepResult(loss=total / (len(micro_batches) * self.dp_size), grad_norm=grad_norm)

    def _forward_backward(self, ids: Tensor, scale: float, backward: bool = True) -> tuple[float, float]:
        """One micro-batch through this rank's stage; returns (mean loss, summed loss) in nats/token on
        the last stage, zeros elsewhere.

        Pipeline schedule: the simplest correct one, one micro-batch at a time (forward down the stages,
        backward up), so a stage idles while others work. It exists to fit models too big for one
        device's memory, not to be fast; 1F1B interleaving would be the next step.
        """
        if self.pp == 1:
            with self._autocast():
                loss_sum, n = self.model.loss_sum(ids)
            loss = loss_sum / n
            if backward:
                (loss * scale).backward()
            return loss.item(), float(loss_sum.detach())
        from megatron.core import parallel_state as ps

        b, t = ids.shape
        hidden_shape = (b, t, self.model.dims.hidden)
        x: Tensor = ids
        if not self.model.first:
            x = torch.empty(hidden_shape, dtype=torch.float32, device=self.device)
            dist.recv(x, src=ps.get_pipeline_model_parallel_prev_rank())
            x.requires_grad_(backward)
        with self._autocast():
            y = self.model(x)
        value = (0.0, 0.0)
        if self.model.last:
            loss_sum, n = self.model.loss_from_logits(y, ids)
            loss = loss_sum / n
            if backward:
                (loss * scale).backward()
            value = (loss.item(), float(loss_sum.detach()))
        else:
            dist.send(y.detach().float().contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            if backward:
                grad = torch.empty(hidden_shape, dtype=torch.float32, device=self.device)
                dist.recv(grad, src=ps.get_pipeline_model_parallel_next_rank())
                y.backward(grad.to(y.dtype))
        if backward and not self.model.first:
            dist.send(x.grad.contiguous(), dst=ps.get_pipeline_model_parallel_prev_rank())
        return value

    def _from_last_stage(self, values: list[float]) -> list[float]:
        """Values the last pipeline stage computed (losses), on every stage of the pipeline."""
        if self.pp == 1:
            return values
        from megatron.core import parallel_state as ps

        mine = values if self.model.last else [0.0] * len(values)
        return self._sum(mine, ps.get_pipeline_model_parallel_group())

    def _sum_tied_embedding_grads(self) -> None:
        """The first stage's embedding and the last stage's head are one tied tensor: sum their grads."""
        if self.pp == 1 or not (self.model.first or self.model.last):
            return
        from megatron.core import parallel_state as ps

        grad = self.model.model.embed_tokens.weight.grad
        dist.all_reduce(grad, group=ps.get_embedding_group())

    def _average_grads_over_dp(self) -> None:
        if self.dp_size == 1:
            return
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat, group=self._dp_group())
        flat /= self.dp_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def _clip_grads(self) -> float:
        """Global L2 norm of the full (unsharded) gradient; clip like torch.nn.utils.clip_grad_norm_."""
        sharded = torch.zeros((), dtype=torch.float64, device=self.device)
        replicated = torch.zeros((), dtype=torch.float64, device=self.device)
        grads = []
        for p in self.model.parameters():
            if p.grad is None:
                continue
            grads.append(p.grad)
            name = self.param_names[id(p)]
            if self.pp > 1 and self.model.last and not self.model.first and "embed_tokens" in name:
                continue  # the tied copy: counted once, on the first stage
            sq = p.grad.detach().double().pow(2).sum()
            if self.model.is_sharded(name):
                sharded += sq
            else:
                replicated += sq
        if self.tp > 1:
            dist.all_reduce(sharded, group=self._tp_group())
        total = sharded + replicated
        if self.pp > 1:
            from megatron.core import parallel_state as ps

            dist.all_reduce(total, group=ps.get_pipeline_model_parallel_group())
        norm = float(total.sqrt())
        if self.cfg.grad_clip > 0 and grads:
            coef = min(1.0, self.cfg.grad_clip / (norm + 1e-6))
            if coef < 1.0:
                torch._foreach_mul_(grads, coef)
        return norm

    # TP ranks of one group hold the same batches (same dp_rank), so their forwards pair up; data-parallel
    # replicas run no collective until the final sum, so their batch counts may differ.
    def _loss_sum(self, ids: Tensor) -> tuple[float, int]:
        return self._forward_backward(ids, 1.0, backward=False)[1], ids.shape[0] * (ids.shape[1] - 1)

    def _eval_sums(self, batches: Iterable[Tensor]) -> tuple[float, float]:
        loss_sum, count = self._from_last_stage(list(super()._eval_sums(batches)))  # the stage with losses
        return loss_sum, count

    def dp_all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        if self.dp_size == 1:
            return [float(v) for v in values]
        return self._sum(values, self._dp_group())

    def close(self) -> None:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        super().close()

    # -- checkpoints -----------------------------------------------------------------------------------

    def save(self, root: Path, tag: str, client_state: dict[str, Any]) -> None:
        d = Path(root) / tag
        names = self._all_hf_group_names()  # collective over the pipeline stages
        named = self._named_optimizer_state()
        common = None
        if self.rank == 0:
            step = int((client_state.get(TRAIN) or {}).get("step") or 0)
            cfg = self.hf_config.to_dict()
            common = MEGATRON.run_common(cfg, self._layout(), step, client_state, named, names)
        # data-parallel replicas hold identical shards: the replica of dp rank 0 writes the tensors
        mine = self.dp_rank == 0
        MEGATRON.save(
            d,
            self._layout(),
            self.model.shard_state_dict() if mine else None,
            named if mine else None,
            common,
        )

    def _layout(self) -> Layout:
        return Layout(self.model.dims, self.tp, self.tp_rank, self.pp, self.pp_rank)

    def _group_names(self) -> list[list[str]]:
        return [[self.param_names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]

    def _hf_group_names(self) -> list[list[str]]:
        """This rank's optimizer groups in HF names (the stock GPTModel's fused tensors expanded)."""
        if not self.stock:
            return self._group_names()
        parts = mcore_map.stock_parts(self.model.dims)
        return [[h for s in g for h in parts[s]] for g in self._group_names()]

    def _all_hf_group_names(self) -> list[list[str]]:
        """Every stage's groups united, in HF order (a collective over the pipeline group when pp > 1)."""
        mine = self._hf_group_names()
        if self.pp == 1:
            return mine
        from megatron.core import parallel_state as ps

        stages: list[Any] = [None] * self.pp
        dist.all_gather_object(stages, mine, group=ps.get_pipeline_model_parallel_group())
        return ckpt.union_group_names(stages)

    def _named_optimizer_state(self) -> dict[str, Any]:
        """The optimizer state over HF-named shards (the stock GPTModel's fused tensors split)."""
        named = named_optimizer_state(
            self.optimizer.state_dict(), [n for g in self._group_names() for n in g]
        )
        return mcore_map.stock_optimizer_to_hf(named, self.model.dims, self.tp) if self.stock else named

    def load(self, root: Path, tag: str) -> dict[str, Any]:
        d = Path(root) / tag
        own = self.model.shard_state_dict()
        shard, named, client = MEGATRON.load(d, self._layout(), own, self._hf_group_names())
        self.model.load_shard({k: v.to(self.device) for k, v in shard.items()}, where=str(d))
        if self.stock:
            opt = mcore_map.stock_optimizer_from_hf(
                named, self._group_names(), self.model.dims, self.tp, str(d)
            )
        else:
            opt = indexed_optimizer_state(named)
            opt.pop("param_names")
        self.optimizer.load_state_dict(opt)
        return client

    def full_state_dict(self) -> dict[str, Tensor]:
        full = self.model.gather_full()  # collective over the TP group
        if self.pp > 1:  # then over the stages (each holds its layers; the tied embedding twice)
            from megatron.core import parallel_state as ps

            stages: list[Any] = [None] * self.pp
            dist.all_gather_object(
                stages, {k: v.cpu() for k, v in full.items()}, group=ps.get_pipeline_model_parallel_group()
            )
            full = {k: v for stage in stages for k, v in stage.items()}
        if self.rank != 0:
            return {}
        out = {k: v.detach().float().cpu() for k, v in full.items()}
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied; the single backend lists it too
        return out
