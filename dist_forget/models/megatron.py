"""A Llama model built from megatron-core tensor-parallel layers, named exactly like Hugging Face's.

Why not the stock `megatron.core.models.gpt.GPTModel`: its attention allocates on
`torch.cuda.current_device()`, so it cannot run on a CPU-only machine. This model
uses only `ColumnParallelLinear`, `RowParallelLinear`, `VocabParallelEmbedding` and
`vocab_parallel_cross_entropy`, which run on gloo/CPU and on NCCL/GPU alike. Where CUDA exists the
stock GPTModel is selectable with `parallel.impl=stock` (`StockLlama`: the GPTModel behind the same
interface, weights in and out as HF-named TP shards, so checkpoints and conversion are shared).

Every parameter has the same name and, once gathered, the same tensor as in
`transformers.LlamaForCausalLM` built from `ladder.hf_config(...)`. q/k/v and gate/up are kept as
separate column-parallel layers (not fused) so that the HF <-> Megatron mapping is a pure slice per
tensor: `mcore_map.shard_dim` says along which dimension each tensor is split over the TP ranks, and
`mcore_map` maps these names to megatron-core's (the stock GPTModel and its checkpoints).

Pipeline parallelism: a stage holds a contiguous block of layers under their global names (`Trunk`),
the first stage the embedding, the last the final norm and the tied head (a second copy of the
embedding); the schedule lives in engine/megatron_backend.py.

Layout: activations stay [batch, seq, hidden]; megatron's linear layers only touch the last dim.
The output head is tied to the vocab-parallel embedding, so logits stay vocab-sharded and the loss is
megatron's vocab-parallel cross entropy (the full [tokens, vocab] logits never exist on one rank).
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dist_forget.errors import UserError
from dist_forget.models.mcore_map import (
    HF_EMBEDDING,
    HF_HEAD,
    HF_NORM,
    LlamaDims,
    fuse,
    shard_dim,
    stock_parts,
    transformer_config,
    unfuse,
)

# megatron-core warns at import that the optional CUDA kernel packages are absent, and on every forward
# about a CUDA env var; neither applies to these layers, and the noise buries the training log.
warnings.filterwarnings("ignore", message="(Transformer Engine and )?Apex (is|are) not installed")
warnings.filterwarnings("ignore", message=".*CUDA_DEVICE_MAX_CONNECTIONS")


def check_pp(pp: int, where: str = "parallel.pp", layers: int | None = None) -> None:
    if pp < 1:
        raise UserError(f"{where}={pp}: must be >= 1")
    if layers is not None and layers % pp:
        raise UserError(
            f"{where}={pp} does not divide the model's num_hidden_layers={layers}; choose a pp "
            "that divides it (each pipeline stage holds the same number of layers)"
        )


def stage_layers(layers: int, pp: int, pp_rank: int) -> range:
    """The (global) layer indices pipeline stage `pp_rank` holds: an equal contiguous block."""
    per = layers // pp
    return range(pp_rank * per, (pp_rank + 1) * per)


def stages_of(name: str, layers: int, pp: int) -> list[int]:
    """The pipeline stages that hold HF tensor `name`. The tied embedding lives on the first stage (input)
    and on the last (output head): two copies kept equal by summing their gradients."""
    if name == HF_EMBEDDING:
        return sorted({0, pp - 1})
    if name == HF_NORM:
        return [pp - 1]
    match = re.match(r"model\.layers\.(\d+)\.", name)
    if not match:
        shard_dim(name)  # raises the architecture error
        return []
    return [int(match.group(1)) // (layers // pp)]


# ---------------------------------------------------------------------------------------------------
# process groups


def init_model_parallel(tp: int, pp: int = 1, timeout_s: float = 1800.0) -> None:
    """megatron-core's TP/PP/DP groups over the already-initialised default process group; a collective
    of theirs waits `timeout_s` for a stalled rank (megatron-core takes minutes, and a fraction works)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    check_pp(pp)
    world = dist.get_world_size()
    if world % (tp * pp):
        raise UserError(
            f"parallel.tp={tp} x parallel.pp={pp} does not divide the number of processes {world}; "
            f"launch a multiple of {tp * pp} ranks"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    # Gloo groups for the distributed optimizer are not needed and cost start-up time.
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        create_gloo_process_groups=False,
        distributed_timeout_minutes=timeout_s / 60,  # type: ignore[arg-type]
    )


def pp_rank_size() -> tuple[int, int]:
    from megatron.core import parallel_state

    return (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_pipeline_model_parallel_world_size(),
    )


def tp_rank_size() -> tuple[int, int]:
    from megatron.core import parallel_state

    return (
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_world_size(),
    )


def dp_rank_size() -> tuple[int, int]:
    from megatron.core import parallel_state

    return parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()


# ---------------------------------------------------------------------------------------------------
# the model


class RMSNorm(nn.Module):
    """Same arithmetic as transformers' LlamaRMSNorm (fp32 statistics), so logits match bit for bit-ish."""

    def __init__(self, hidden: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden, dtype=dtype))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Rotary(nn.Module):
    """HF's default rotary embedding: cos/sin of position * inv_freq, duplicated across both halves."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, seq: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(seq, device=device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.to(device))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def _mp_config(tp: int, dtype: torch.dtype, on_gpu: bool):
    from megatron.core import ModelParallelConfig

    # perform_initialization=False: weights come from an HF model (same seed => same init as 1 rank).
    return ModelParallelConfig(
        tensor_model_parallel_size=tp,
        use_cpu_initialization=not on_gpu,
        perform_initialization=False,
        params_dtype=dtype,
    )


def _col(cfg, inp: int, out: int):
    from megatron.core.tensor_parallel import ColumnParallelLinear

    return ColumnParallelLinear(
        inp, out, config=cfg, init_method=nn.init.zeros_, bias=False, gather_output=False
    )


def _row(cfg, inp: int, out: int):
    from megatron.core.tensor_parallel import RowParallelLinear

    return RowParallelLinear(
        inp,
        out,
        config=cfg,
        init_method=nn.init.zeros_,
        bias=False,
        input_is_parallel=True,
        skip_bias_add=False,
    )


class Attention(nn.Module):
    def __init__(self, dims: LlamaDims, tp: int, cfg):
        super().__init__()
        self.heads, self.kv_heads, self.hd = dims.heads // tp, dims.kv_heads // tp, dims.head_dim
        self.q_proj = _col(cfg, dims.hidden, dims.heads * dims.head_dim)
        self.k_proj = _col(cfg, dims.hidden, dims.kv_heads * dims.head_dim)
        self.v_proj = _col(cfg, dims.hidden, dims.kv_heads * dims.head_dim)
        self.o_proj = _row(cfg, dims.heads * dims.head_dim, dims.hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x)[0].view(b, s, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x)[0].view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x)[0].view(b, s, self.kv_heads, self.hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, self.heads * self.hd))[0]


class MLP(nn.Module):
    def __init__(self, dims: LlamaDims, cfg):
        super().__init__()
        self.gate_proj = _col(cfg, dims.hidden, dims.ffn)
        self.up_proj = _col(cfg, dims.hidden, dims.ffn)
        self.down_proj = _row(cfg, dims.ffn, dims.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]


class Block(nn.Module):
    def __init__(self, dims: LlamaDims, tp: int, cfg, dtype: torch.dtype):
        super().__init__()
        # Registration order = HF's, so parameters() (and optimizer state indices) line up with HF's.
        self.self_attn = Attention(dims, tp, cfg)
        self.mlp = MLP(dims, cfg)
        self.input_layernorm = RMSNorm(dims.hidden, dims.rms_eps, dtype)
        self.post_attention_layernorm = RMSNorm(dims.hidden, dims.rms_eps, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    """Named `model` inside MegatronLlama so parameter names read `model.layers.0...` as in HF.

    Under pipeline parallelism a stage holds only its layers, keyed by their global index (so names stay
    HF's), the embedding if it is the first or the last stage (tied head), the final norm if the last.
    """

    def __init__(self, dims: LlamaDims, tp: int, cfg, dtype: torch.dtype, pp: int = 1, pp_rank: int = 0):
        super().__init__()
        from megatron.core.tensor_parallel import VocabParallelEmbedding

        first, last = pp_rank == 0, pp_rank == pp - 1
        if first or last:
            self.embed_tokens = VocabParallelEmbedding(
                dims.vocab, dims.hidden, init_method=nn.init.zeros_, config=cfg
            )
        self.layers = nn.ModuleDict(
            {str(i): Block(dims, tp, cfg, dtype) for i in stage_layers(dims.layers, pp, pp_rank)}
        )
        if last:
            self.norm = RMSNorm(dims.hidden, dims.rms_eps, dtype)
        self.rotary = Rotary(dims.head_dim, dims.rope_theta)


class MegatronLlama(nn.Module):
    """Tensor- (and pipeline-) parallel Llama; call after `init_model_parallel`. Holds this rank's shard
    of this stage only."""

    def __init__(self, hf_cfg: Any, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        self.dims = LlamaDims.from_hf(hf_cfg)
        self.tp_rank, self.tp = tp_rank_size()
        self.pp_rank, self.pp = pp_rank_size()
        self.dims.check_tp(self.tp)
        check_pp(self.pp, layers=self.dims.layers)
        self.first, self.last = self.pp_rank == 0, self.pp_rank == self.pp - 1
        cfg = _mp_config(self.tp, dtype, on_gpu=device != "cpu")
        self.model = Trunk(self.dims, self.tp, cfg, dtype, self.pp, self.pp_rank)
        self.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This stage: token ids [batch, seq] (first stage) or hidden states [batch, seq, hidden] (later
        stages) -> hidden states, or on the last stage [batch, seq, vocab/tp] logits (this rank's slice)."""
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        cos, sin = self.model.rotary(x.shape[1], x.device)
        if self.first:
            x = self.model.embed_tokens(x)
        for layer in self.model.layers.values():
            x = layer(x, cos, sin)
        if not self.last:
            return x
        x = self.model.norm(x)
        # Tied head: identity forward, all-reduce of the input gradient backward (the Column pattern).
        return F.linear(copy_to_tensor_model_parallel_region(x), self.model.embed_tokens.weight)

    @staticmethod
    def loss_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return vocab_parallel_loss(logits, input_ids)

    def loss_sum(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(sum of next-token losses in nats, number of predicted tokens), like
        `engine.backend.causal_lm_loss_sum`: the forward sees all T tokens and the last logit is dropped,
        so the arithmetic matches the HF path. Whole model only (pp=1); pipelines go through the backend."""
        assert self.pp == 1, "loss_sum needs the whole model on this rank (pp=1)"
        return self.loss_from_logits(self(input_ids), input_ids)

    def full_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq, vocab] logits gathered over the TP ranks (no gradient; for checks and evaluation).

        megatron's own gather allocates on `torch.cuda.current_device()`, so it is done here with a
        plain all_gather, which works on gloo and NCCL.
        """
        import torch.distributed as dist
        from megatron.core import parallel_state

        assert self.pp == 1, "full_logits needs the whole model on this rank (pp=1)"
        with torch.no_grad():
            local = self(input_ids).contiguous()
            if self.tp == 1:
                return local
            parts = [torch.empty_like(local) for _ in range(self.tp)]
            dist.all_gather(parts, local, group=parallel_state.get_tensor_model_parallel_group())
            return torch.cat(parts, dim=-1)

    # -- weights in HF naming ------------------------------------------------------------------------

    def shard_state_dict(self) -> dict[str, torch.Tensor]:
        """This rank's shard, HF names, without megatron's `_extra_state` placeholders."""
        return {k: v for k, v in self.state_dict().items() if not k.endswith("_extra_state")}

    def param_name_map(self) -> dict[int, str]:
        """id(parameter) -> its name, in the namespace `is_sharded` understands (here: HF's)."""
        return {id(p): n for n, p in self.named_parameters()}

    @staticmethod
    def is_sharded(name: str) -> bool:
        return shard_dim(name) is not None

    def load_shard(self, shard: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        check_shard(self.shard_state_dict(), shard, self.tp, where)
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(shard[name])

    def load_full(self, full: dict[str, torch.Tensor], where: str = "HF state") -> None:
        """Take this rank's slice (of this stage) of an unsharded HF state dict."""
        own = self.shard_state_dict()
        self.load_shard(
            shard_state({k: v for k, v in full.items() if k in own}, self.tp, self.tp_rank, where=where),
            where=where,
        )

    def gather_full(self) -> dict[str, torch.Tensor]:
        """The unsharded HF state dict (a collective over the TP group; every TP rank gets it)."""
        return gather_tp({k: v.detach() for k, v in self.shard_state_dict().items()}, self.tp)

    def gather_grads(self) -> dict[str, torch.Tensor]:
        """The unsharded gradients in HF names (collective over the TP group; for checks)."""
        return gather_tp(
            {n: p.grad.detach() for n, p in self.named_parameters() if p.grad is not None}, self.tp
        )


def vocab_parallel_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses in nats, predicted tokens) from vocab-parallel logits [b, s, vocab/tp]."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    targets = input_ids[:, 1:].contiguous()
    return vocab_parallel_cross_entropy(
        logits[:, :-1, :].float().contiguous(), targets
    ).sum(), targets.numel()


def check_shard(own: dict[str, torch.Tensor], shard: dict[str, torch.Tensor], tp: int, where: str) -> None:
    """A shard in HF names must hold exactly this rank's tensors, at this TP size's shapes."""
    missing, extra = sorted(set(own) - set(shard)), sorted(set(shard) - set(own))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has unexpected {extra[0]!r}"
        raise UserError(
            f"{where}: shard {what}; it was made for another architecture, convert from the matching HF model"
        )
    for name, tensor in shard.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise UserError(
                f"{where}: {name} has shape {tuple(tensor.shape)} but this model's TP={tp} "
                f"shard needs {tuple(own[name].shape)}; convert it for tp={tp}"
            )


def gather_tp(tensors: dict[str, torch.Tensor], tp: int) -> dict[str, torch.Tensor]:
    """HF-named TP shards -> whole tensors on every TP rank (a collective over the TP group).

    megatron's own gather allocates on `torch.cuda.current_device()`; a plain all_gather works on gloo too.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group() if tp > 1 else None
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        dim = shard_dim(name)
        if dim is None or tp == 1:
            out[name] = t.clone()
            continue
        parts = [torch.empty_like(t) for _ in range(tp)]
        dist.all_gather(parts, t.contiguous(), group=group)
        out[name] = torch.cat(parts, dim=dim)
    return out


# ---------------------------------------------------------------------------------------------------
# pure slicing (no process group needed: conversion uses these)


def shard_tensor(name: str, t: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    dim = shard_dim(name)
    if dim is None or tp == 1:
        return t.clone()
    if t.shape[dim] % tp:
        raise UserError(
            f"{name}: dimension {dim} of size {t.shape[dim]} does not divide by tp={tp}; "
            "choose a tp that divides it"
        )
    return t.chunk(tp, dim=dim)[rank].clone()


def shard_state(full: dict[str, Any], tp: int, rank: int, where: str = "HF state") -> dict[str, Any]:
    """Rank `rank`'s TP slice of every tensor keyed by an HF parameter name (tied lm_head dropped)."""
    return {n: shard_tensor(n, t, tp, rank) for n, t in full.items() if n != HF_HEAD}


def merge_shards(shards: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Inverse of `shard_state`: concatenate split tensors; replicated ones must agree across ranks."""
    out: dict[str, torch.Tensor] = {}
    for name in shards[0]:
        parts = [s[name] for s in shards]
        dim = shard_dim(name)
        out[name] = parts[0].clone() if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
    return out


def build_stock_gpt(hf_cfg: Any, dtype: torch.dtype = torch.float32):
    """megatron-core's own GPTModel with the Llama options of `hf_cfg` (local spec: no Transformer Engine).

    It is built on the CPU with uninitialised weights (fill them with `hf_to_stock_shard`, then move it
    to the GPU); it can be built anywhere, but its forward needs CUDA (`require_cuda_for_stock`).
    """
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    d = LlamaDims.from_hf(hf_cfg)
    _, tp = tp_rank_size()
    d.check_tp(tp)
    cfg = TransformerConfig(
        **transformer_config(d),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        bias_dropout_fusion=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=True,
        perform_initialization=False,
    )
    return GPTModel(
        config=cfg,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=d.vocab,
        max_sequence_length=4096,
        position_embedding_type="rope",
        rotary_base=int(d.rope_theta),
        share_embeddings_and_output_weights=True,
        pre_process=True,
        post_process=True,
    )


def require_cuda_for_stock() -> None:
    if not torch.cuda.is_available():
        raise UserError(
            "parallel.impl=stock (megatron-core's GPTModel) needs a GPU: its attention, rotary "
            "embedding and RNG tracker allocate on CUDA; on this machine use parallel.impl=local"
        )


def hf_shard_to_stock(shard: dict[str, torch.Tensor], dims: LlamaDims, tp: int) -> dict[str, torch.Tensor]:
    """One TP rank's HF-named shard -> the same rank's GPTModel state (exact: pure reshapes and concats)."""
    return {s: fuse(s, [shard[h] for h in hs], dims, tp) for s, hs in stock_parts(dims).items()}


def stock_shard_to_hf(stock: dict[str, torch.Tensor], dims: LlamaDims, tp: int) -> dict[str, torch.Tensor]:
    """Inverse of `hf_shard_to_stock` (extra keys such as `_extra_state` are ignored)."""
    out: dict[str, torch.Tensor] = {}
    for s, hs in stock_parts(dims).items():
        out.update(zip(hs, unfuse(s, stock[s], dims, tp)))
    return out


def hf_to_stock_shard(
    full: dict[str, torch.Tensor], hf_cfg: Any, tp: int, rank: int
) -> dict[str, torch.Tensor]:
    """Whole HF tensors -> the stock GPTModel's state for TP rank `rank`."""
    d = LlamaDims.from_hf(hf_cfg)
    return hf_shard_to_stock(shard_state(full, tp, rank), d, tp)


class StockLlama(nn.Module):
    """megatron-core's own GPTModel behind MegatronLlama's interface (`parallel.impl=stock`, GPU only).

    Weights go in and come out as HF-named TP shards (`mcore_map.stock_parts` maps names, `fuse`/`unfuse`
    the fused QKV and fc1 tensors), so checkpoints, `convert` and resume are the same for both
    implementations. Forward returns vocab-parallel logits [b, s, vocab/tp] (GPTModel's parallel_output).
    """

    def __init__(self, hf_cfg: Any, dtype: torch.dtype = torch.float32, device: str = "cuda", seed: int = 0):
        super().__init__()
        require_cuda_for_stock()
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        self.dims = LlamaDims.from_hf(hf_cfg)
        self.tp_rank, self.tp = tp_rank_size()
        self.pp_rank, self.pp = pp_rank_size()
        if self.pp != 1:
            raise UserError(
                f"parallel.impl=stock supports parallel.pp=1 only (got {self.pp}); use "
                "parallel.impl=local for pipeline parallelism"
            )
        self.first = self.last = True
        # Its attention forks megatron's model-parallel CUDA RNG stream (for dropout, even at p = 0).
        model_parallel_cuda_manual_seed(seed)
        self.gpt = build_stock_gpt(hf_cfg, dtype)
        self.to(device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        return self.gpt(
            input_ids=input_ids, position_ids=pos, attention_mask=None
        )  # causal mask built inside

    loss_from_logits = staticmethod(vocab_parallel_loss)

    def loss_sum(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return vocab_parallel_loss(self(input_ids), input_ids)

    def param_name_map(self) -> dict[int, str]:
        return {id(p): n for n, p in self.gpt.named_parameters()}

    @staticmethod
    def is_sharded(name: str) -> bool:
        return not name.endswith("layernorm.weight")

    def shard_state_dict(self) -> dict[str, torch.Tensor]:
        own = {k: v for k, v in self.gpt.state_dict().items() if not k.endswith("_extra_state")}
        return stock_shard_to_hf(own, self.dims, self.tp)

    def load_shard(self, shard: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        check_shard(self.shard_state_dict(), shard, self.tp, where)
        stock = hf_shard_to_stock(shard, self.dims, self.tp)
        with torch.no_grad():
            for name, param in self.gpt.named_parameters():
                param.copy_(stock[name])

    def load_full(self, full: dict[str, torch.Tensor], where: str = "HF state") -> None:
        self.load_shard(
            shard_state({k: v for k, v in full.items() if k != HF_HEAD}, self.tp, self.tp_rank, where=where),
            where=where,
        )

    def gather_full(self) -> dict[str, torch.Tensor]:
        return gather_tp({k: v.detach() for k, v in self.shard_state_dict().items()}, self.tp)
