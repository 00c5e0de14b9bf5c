"""Optimizers (pure torch; nothing here imports DeepSpeed)."""

from dist_forget.optim.anchored_adamw import AnchoredAdamW, param_groups

__all__ = ["AnchoredAdamW", "param_groups"]
