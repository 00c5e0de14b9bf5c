"""The one map between Hugging Face's Llama and megatron-core's GPT: names, fusions, TP splits, config.

Hugging Face keeps q/k/v and gate/up as separate tensors; megatron-core fuses them. `linear_qkv` is fused
per query group ([q rows of the group's heads; k; v]) and SwiGLU's `linear_fc1` is [gate; up], both in the
order that makes the whole tensor independent of TP (a TP rank holds whole query groups, and a slice of
each half of fc1). Each `LayerTensor` row is one megatron-core layer tensor: its key in megatron-core's
sharded state dict (Transformer Engine's names, where each norm is fused into the linear after it, as
megatron-core's local spec also maps them), its parameter name in a local-spec GPTModel, the HF tensors it
is made of in fusion order, and its TP split. The model (models/megatron.py), every Megatron format's
reader and writer (checkpoint/) and the optimizer-state mapping below all read this table; no other module
spells a megatron-core key.

The config half: `LlamaDims` (the shape facts of an HF Llama config), megatron-core's TransformerConfig
arguments and Megatron-LM's command-line arguments for it, and back from Megatron-LM's arguments.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

import torch

from dist_forget.errors import UserError

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"  # an untied output head: the Llama path here refuses it
LAYERS = "decoder.layers."  # per-layer tensors: decoder.layers.N.<key> in a model, stacked in a checkpoint
MODEL_PREFIXES = ("embedding.", "decoder.")  # every model tensor's key starts with one (the head: OUTPUT)
HF_EMBEDDING, HF_NORM, HF_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


@dataclass(frozen=True)
class LayerTensor:
    mcore: str  # key under `decoder.layers.` in megatron-core's sharded state dict
    stock: str  # parameter name under `decoder.layers.N.` of a local-spec GPTModel
    hf: tuple[str, ...]  # the HF tensors under `model.layers.N.` it holds, in fusion order
    split: tuple[int, int] | None  # TP split: (dim, pieces per rank); None = replicated on every TP rank


# In megatron-core's order within a layer. `split` is also the dim along which each HF part splits: QKV's
# query groups are whole on a rank (contiguous rows); fc1 = [gate; up] holds a slice of each half (2 pieces),
# as megatron-core's SwiGLU sharded factory declares it.
LAYER_TENSORS = (
    # (megatron-core key, local-spec GPTModel name, HF parts in fusion order, TP split)
    LayerTensor("self_attention.linear_qkv.layer_norm_weight", "input_layernorm.weight",
                ("input_layernorm.weight",), None),
    LayerTensor("self_attention.linear_qkv.weight", "self_attention.linear_qkv.weight",
                ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), (0, 1)),
    LayerTensor("self_attention.linear_proj.weight", "self_attention.linear_proj.weight",
                ("self_attn.o_proj.weight",), (1, 1)),
    LayerTensor("mlp.linear_fc1.layer_norm_weight", "pre_mlp_layernorm.weight",
                ("post_attention_layernorm.weight",), None),
    LayerTensor("mlp.linear_fc1.weight", "mlp.linear_fc1.weight",
                ("mlp.gate_proj.weight", "mlp.up_proj.weight"), (0, 2)),
    LayerTensor("mlp.linear_fc2.weight", "mlp.linear_fc2.weight",
                ("mlp.down_proj.weight",), (1, 1)),
)  # fmt: skip
# HF's (and the GPTModel's) parameter order within a layer: the linear layers, then the two norms
HF_ORDER = tuple(sorted(LAYER_TENSORS, key=lambda t: t.split is None))

# megatron-core key (without `decoder.layers.`) -> TP split of its tensor, for every model tensor
TP_SPLIT: dict[str, tuple[int, int] | None] = {
    EMBEDDING: (0, 1),  # vocab rows
    **{t.mcore: t.split for t in LAYER_TENSORS},
    FINAL_NORM: None,
}
MODEL_KEYS = (EMBEDDING, *(LAYERS + t.mcore for t in LAYER_TENSORS), FINAL_NORM)
# older megatron-core local specs kept the norms as modules of their own (the GPTModel's names)
LAYER_ALIASES = {t.stock: t.mcore for t in LAYER_TENSORS if t.stock != t.mcore}
# the linear modules: each holds an (empty) `_extra_state`, a sharded object in megatron-core's checkpoints
LINEAR_MODULES = tuple(t.mcore.rsplit(".", 1)[0] for t in LAYER_TENSORS if t.split is not None)
_HF_LAYER_DIM = {h: t.split[0] if t.split else None for t in LAYER_TENSORS for h in t.hf}


def shard_dim(name: str) -> int | None:
    """The dimension along which HF tensor `name` is split across TP ranks (None = replicated)."""
    if name == HF_EMBEDDING:
        return TP_SPLIT[EMBEDDING][0]
    if name == HF_NORM:
        return None
    match = re.fullmatch(r"model\.layers\.\d+\.(.+)", name)
    if match and match.group(1) in _HF_LAYER_DIM:
        return _HF_LAYER_DIM[match.group(1)]
    raise UserError(
        f"parameter {name!r} is not part of the Llama architecture this Megatron path supports; "
        "convert a transformers LlamaForCausalLM (ladder.hf_config) checkpoint"
    )


# ---------------------------------------------------------------------------------------------------
# the architecture


@dataclass(frozen=True)
class LlamaDims:
    """The shape facts the TP split depends on, read from a `LlamaConfig` (or its dict)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    head_dim: int
    rms_eps: float
    rope_theta: float
    tied: bool

    @classmethod
    def from_hf(cls, cfg: Any) -> LlamaDims:
        d = cfg if isinstance(cfg, dict) else cfg.to_dict()
        rope = d.get("rope_parameters") or {"rope_type": "default", "rope_theta": d.get("rope_theta", 1e4)}
        if rope.get("rope_type", "default") != "default":
            raise UserError(
                f"model config rope_parameters.rope_type={rope.get('rope_type')!r} is not supported by the "
                "Megatron path; use the default rotary embedding (ladder.hf_config)"
            )
        for key, want in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
            if d.get(key, want) != want:
                raise UserError(
                    f"model config {key}={d.get(key)!r} is not supported by the Megatron path; "
                    f"it needs {key}={want!r} (ladder.hf_config)"
                )
        heads = int(d["num_attention_heads"])
        return cls(
            vocab=int(d["vocab_size"]),
            hidden=int(d["hidden_size"]),
            layers=int(d["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(d.get("num_key_value_heads") or heads),
            ffn=int(d["intermediate_size"]),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rms_eps=float(d["rms_norm_eps"]),
            rope_theta=float(rope.get("rope_theta", 1e4)),
            tied=bool(d.get("tie_word_embeddings", True)),
        )

    def check_tp(self, tp: int, where: str = "parallel.tp") -> None:
        """Every split dimension must divide by tp; the error names the first that does not."""
        if tp < 1:
            raise UserError(f"{where}={tp}: must be >= 1")
        if not self.tied:
            raise UserError(
                "model config tie_word_embeddings=False is not supported by the Megatron path; "
                "use tied embeddings (ladder.hf_config)"
            )
        for dim, value in (
            ("num_attention_heads", self.heads),
            ("num_key_value_heads", self.kv_heads),
            ("hidden_size", self.hidden),
            ("intermediate_size (ffn)", self.ffn),
            ("vocab_size", self.vocab),
        ):
            if value % tp:
                raise UserError(
                    f"{where}={tp} does not divide the model's {dim}={value}; choose a tp that divides "
                    f"it (or pad {dim} to a multiple of {tp})"
                )


def _hf_layer_shapes(d: LlamaDims) -> dict[str, tuple[int, ...]]:
    h, q, kv, f = d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.ffn
    return {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (f, h),
        "mlp.up_proj.weight": (f, h),
        "mlp.down_proj.weight": (h, f),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }


def hf_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name of the architecture and its full shape, in HF's order (tied lm_head excluded)."""
    per_layer = _hf_layer_shapes(dims)
    shapes: dict[str, tuple[int, ...]] = {HF_EMBEDDING: (dims.vocab, dims.hidden)}
    for i in range(dims.layers):
        shapes.update({f"model.layers.{i}.{h}": per_layer[h] for t in HF_ORDER for h in t.hf})
    shapes[HF_NORM] = (dims.hidden,)
    return shapes


def mcore_shapes(dims: LlamaDims) -> dict[str, tuple[int, ...]]:
    """Every global tensor of megatron-core's checkpoint layout and its shape (layers stacked)."""
    per_layer = _hf_layer_shapes(dims)
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (dims.vocab, dims.hidden)}
    for t in LAYER_TENSORS:
        parts = [per_layer[h] for h in t.hf]  # fused along their rows
        shapes[LAYERS + t.mcore] = (dims.layers, sum(p[0] for p in parts), *parts[0][1:])
    shapes[FINAL_NORM] = (dims.hidden,)
    return shapes


# ---------------------------------------------------------------------------------------------------
# fusion (TP-local: pure reshapes and concatenations, exact both ways)


def _qkv_rows(dims: LlamaDims, tp: int) -> tuple[int, int, int]:
    """(query groups on a TP rank, q rows per group, k = v rows per group)."""
    return dims.kv_heads // tp, dims.heads // dims.kv_heads * dims.head_dim, dims.head_dim


def fuse(name: str, parts: list[torch.Tensor], dims: LlamaDims, tp: int) -> torch.Tensor:
    """TP-local HF tensors (or optimizer state shaped like them) -> megatron-core tensor `name` (a key of
    the table, in either naming)."""
    if name.endswith("linear_qkv.weight"):
        groups, qr, kr = _qkv_rows(dims, tp)
        q, k, v = (t.reshape(groups, rows, -1) for t, rows in zip(parts, (qr, kr, kr)))
        return torch.cat([q, k, v], dim=1).reshape(groups * (qr + 2 * kr), -1)
    if name.endswith("linear_fc1.weight"):
        return torch.cat(parts, dim=0)
    return parts[0].clone()


def unfuse(name: str, t: torch.Tensor, dims: LlamaDims, tp: int) -> list[torch.Tensor]:
    """Inverse of `fuse`: megatron-core tensor -> its TP-local HF tensors, in the table's order."""
    if name.endswith("linear_qkv.weight"):
        groups, qr, kr = _qkv_rows(dims, tp)
        q, k, v = t.reshape(groups, qr + 2 * kr, -1).split([qr, kr, kr], dim=1)
        return [x.reshape(groups * x.shape[1], -1).clone() for x in (q, k, v)]
    if name.endswith("linear_fc1.weight"):
        return [x.clone() for x in t.chunk(2, dim=0)]
    return [t.clone()]


def stock_parts(dims: LlamaDims) -> dict[str, list[str]]:
    """Local-spec GPTModel parameter name -> the HF names it holds, for every parameter (HF order)."""
    out = {EMBEDDING: [HF_EMBEDDING]}
    for i in range(dims.layers):
        out.update({f"{LAYERS}{i}.{t.stock}": [f"model.layers.{i}.{h}" for h in t.hf] for t in HF_ORDER})
    out[FINAL_NORM] = [HF_NORM]
    return out


# ---------------------------------------------------------------------------------------------------
# the GPTModel's optimizer state <-> the same over HF-named TP shards (named: {"state": {name: {...}},
# "param_groups": [{..., "params": [names]}]}, as checkpoint/hf.named_optimizer_state makes it)


def stock_optimizer_to_hf(named: dict[str, Any], dims: LlamaDims, tp: int) -> dict[str, Any]:
    """A named optimizer state over GPTModel parameters -> the same over HF-named TP shards (HF order)."""
    parts = stock_parts(dims)
    order = {n: i for i, n in enumerate(hf_shapes(dims))}
    state: dict[str, Any] = {}
    for sname, st in named["state"].items():
        # scalars (`step`) are cloned per part: torch.save keeps aliasing, and one shared step tensor
        # would then be incremented once per part by the foreach update
        pieces = {
            k: (
                unfuse(sname, v, dims, tp)
                if torch.is_tensor(v) and v.ndim > 0
                else [v.clone() if torch.is_tensor(v) else v for _ in parts[sname]]
            )
            for k, v in st.items()
        }
        for j, hname in enumerate(parts[sname]):
            state[hname] = {k: v[j] for k, v in pieces.items()}
    groups = [
        {**g, "params": sorted((h for s in g["params"] for h in parts[s]), key=order.__getitem__)}
        for g in named["param_groups"]
    ]
    return {**named, "state": state, "param_groups": groups}


def stock_optimizer_from_hf(
    named: dict[str, Any], groups: list[list[str]], dims: LlamaDims, tp: int, where: str
) -> dict[str, Any]:
    """Inverse of `stock_optimizer_to_hf`, for an optimizer whose param groups hold GPTModel parameters
    named `groups` (in order): a torch state_dict it can load."""
    parts = stock_parts(dims)
    if len(named["param_groups"]) != len(groups):
        raise UserError(
            f"{where}: optimizer state has {len(named['param_groups'])} param groups, this run "
            f"{len(groups)}; resume with the same optimizer settings"
        )
    index: dict[str, int] = {}
    out_groups = []
    for saved, names in zip(named["param_groups"], groups):
        want = sorted(h for s in names for h in parts[s])
        if sorted(saved["params"]) != want:
            raise UserError(
                f"{where}: optimizer state is for parameters {sorted(saved['params'])[:2]}..., this "
                f"model has {want[:2]}...; resume with the same model"
            )
        ids = [index.setdefault(s, len(index)) for s in names]
        out_groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
    state = {}
    for sname, i in index.items():
        have = [named["state"].get(h) for h in parts[sname]]
        if all(h is None for h in have):
            continue  # never stepped: no state, as in a fresh optimizer
        if any(h is None for h in have):
            raise UserError(
                f"{where}: optimizer state covers only part of {sname}'s tensors; the checkpoint "
                "is incomplete"
            )
        state[i] = {
            k: (fuse(sname, [h[k] for h in have], dims, tp) if torch.is_tensor(v) and v.ndim > 0 else v)
            for k, v in have[0].items()
        }
    return {"state": state, "param_groups": out_groups}


# ---------------------------------------------------------------------------------------------------
# the config: megatron-core's TransformerConfig and Megatron-LM's arguments


def _shared_config(d: LlamaDims) -> dict[str, Any]:
    """The Llama architecture under the names TransformerConfig and Megatron-LM's arguments share."""
    return {
        "num_layers": d.layers,
        "hidden_size": d.hidden,
        "ffn_hidden_size": d.ffn,
        "num_attention_heads": d.heads,
        "num_query_groups": d.kv_heads,
        "kv_channels": d.head_dim,
        "normalization": "RMSNorm",
        "add_bias_linear": False,
    }


def transformer_config(d: LlamaDims) -> dict[str, Any]:
    """megatron-core TransformerConfig arguments of the Llama architecture (no parallelism, no dtype)."""
    import torch.nn.functional as F  # noqa: N812 - torch's name

    return {
        **_shared_config(d),
        "layernorm_epsilon": d.rms_eps,
        "gated_linear_unit": True,
        "activation_func": F.silu,
    }


def megatron_lm_args(cfg: dict[str, Any], tp: int = 1, pp: int = 1) -> argparse.Namespace:
    """The architecture as Megatron-LM's arguments (its `load_checkpoint` reads `args` from common.pt),
    with the TP/PP a checkpoint was written at (megatron-core reshards it to any other)."""
    d = LlamaDims.from_hf(cfg)
    max_pos = int(cfg.get("max_position_embeddings") or 4096)
    return argparse.Namespace(
        **_shared_config(d),
        group_query_attention=d.kv_heads != d.heads,
        padded_vocab_size=d.vocab,
        max_position_embeddings=max_pos,
        seq_length=max_pos,
        position_embedding_type="rope",
        rotary_base=int(d.rope_theta),
        rotary_percent=1.0,
        norm_epsilon=d.rms_eps,
        swiglu=True,
        add_qkv_bias=False,
        untie_embeddings_and_output_weights=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        ckpt_format="torch_dist",
    )


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
