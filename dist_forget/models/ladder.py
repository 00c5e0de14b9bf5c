"""The model size ladder: named Llama-style shapes and their parameter counts.

The laws use N = **non-embedding** parameters (attention + MLP + norms, without the token embedding,
which is tied to the output head). Kaplan et al. showed this count gives cleaner power laws, and at the
micro sizes that fit on a CPU the 8192-token embedding would otherwise dominate the count. Both counts
are logged with every run. Names give the approximate non-embedding count.

`cpu-*` sizes are for studies on a 2-core machine (0.01M to 30M); `paper-*` sizes mirror the paper's
ladder (41M to 1.3B) for GPU clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dist_forget.errors import UserError


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    ffn: int

    def non_embedding_params(self) -> int:
        """Attention (4·h²) + SwiGLU MLP (3·h·ffn) + two RMSNorms per layer, plus the final norm."""
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.ffn + 2 * self.hidden
        return self.layers * per_layer + self.hidden

    def embedding_params(self, vocab_size: int) -> int:
        return vocab_size * self.hidden

    def total_params(self, vocab_size: int) -> int:
        return self.non_embedding_params() + self.embedding_params(vocab_size)


LADDER: dict[str, ModelShape] = {
    "cpu-0.01m": ModelShape(hidden=16, layers=3, heads=2, ffn=64),
    "cpu-0.015m": ModelShape(hidden=32, layers=1, heads=2, ffn=96),
    "cpu-0.03m": ModelShape(hidden=32, layers=2, heads=2, ffn=96),
    "cpu-0.05m": ModelShape(hidden=32, layers=4, heads=2, ffn=96),
    "cpu-0.1m": ModelShape(hidden=48, layers=3, heads=3, ffn=128),
    "cpu-0.3m": ModelShape(hidden=80, layers=4, heads=5, ffn=224),
    "cpu-1m": ModelShape(hidden=128, layers=5, heads=4, ffn=352),
    "cpu-3m": ModelShape(hidden=192, layers=7, heads=6, ffn=512),
    "cpu-10m": ModelShape(hidden=288, layers=10, heads=9, ffn=768),
    "cpu-30m": ModelShape(hidden=448, layers=12, heads=14, ffn=1216),
    "paper-41m": ModelShape(hidden=640, layers=8, heads=10, ffn=1728),
    "paper-109m": ModelShape(hidden=768, layers=16, heads=12, ffn=2048),
    "paper-334m": ModelShape(hidden=1024, layers=26, heads=16, ffn=2752),
    "paper-665m": ModelShape(hidden=1280, layers=34, heads=20, ffn=3392),
    "paper-1.3b": ModelShape(hidden=2048, layers=26, heads=16, ffn=5440),
}


def shape_of(size: str) -> ModelShape:
    if size not in LADDER:
        raise UserError(f"unknown model size {size!r}; choose one of: {', '.join(LADDER)}")
    return LADDER[size]


def hf_config(size: str, vocab_size: int, max_seq_len: int, **extra: Any):
    """A `transformers.LlamaConfig` for ladder size `size` (dropout 0: exact resume needs it)."""
    from transformers import LlamaConfig

    shape = shape_of(size)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=max_seq_len,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        **extra,
    )


def size_of(hidden: int, layers: int, ffn: int | None) -> str | None:
    """The ladder name of a shape (e.g. a finetune's base model), None when it is not on the ladder."""
    for name, shape in LADDER.items():
        if (shape.hidden, shape.layers, shape.ffn) == (hidden, layers, ffn):
            return name
    return None
