"""Anchored AdamW: AdamW whose decoupled decay also pulls the weights toward the pretrained θ₀.

Per step, for every parameter θ with gradient g (same order as `torch.optim.AdamW`):

    θ ← θ − lr·anchor_decay·(θ − θ₀) − lr·weight_decay·θ        (decoupled terms, both from the same θ)
    m ← β₁·m + (1−β₁)·g ;  v ← β₂·v + (1−β₂)·g²
    θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)

θ₀ lives in the optimizer state as `state["anchor"]`, created lazily inside `step()` from the
parameter's value before its first update (or set explicitly with `set_anchor`). Lazy state is what lets
DeepSpeed ZeRO shard it with the Adam moments: ZeRO hands the optimizer flat fp32 partitions and saves
whatever state the optimizer made for them, whereas state made in `__init__` would be a full copy on
every rank. Pure torch on purpose: no DeepSpeed import here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from dist_forget.errors import UserError

STATE_KEYS = ("exp_avg", "exp_avg_sq", "anchor")


def _check_hparams(
    lr: float, betas: tuple[float, float], eps: float, weight_decay: float, anchor_decay: float
) -> None:
    if not lr > 0.0:
        raise ValueError(f"AnchoredAdamW: lr={lr!r} must be > 0")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"AnchoredAdamW: betas={tuple(betas)!r} must both lie in [0, 1)")
    if not eps >= 0.0:
        raise ValueError(f"AnchoredAdamW: eps={eps!r} must be >= 0")
    if not weight_decay >= 0.0:
        raise ValueError(f"AnchoredAdamW: weight_decay={weight_decay!r} must be >= 0")
    if not anchor_decay >= 0.0:
        raise ValueError(f"AnchoredAdamW: anchor_decay={anchor_decay!r} must be >= 0")


class AnchoredAdamW(torch.optim.Optimizer):
    """AdamW with decoupled decay toward the anchor θ₀ (see the module docstring for the update).

    `anchor_decay` and `weight_decay` are per param group (so norms and biases can be excluded; see
    `param_groups`). With `anchor_decay=0` it is `torch.optim.AdamW`. The anchor is captured for every
    parameter, even in groups whose anchor_decay is 0 now, so that a schedule raising it later still pulls
    toward the true θ₀.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        anchor_decay: float = 0.0,
    ):
        _check_hparams(lr, tuple(betas), eps, weight_decay, anchor_decay)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, anchor_decay=anchor_decay
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hparams(
            group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"], group["anchor_decay"]
        )

    # --- anchor -------------------------------------------------------------------------------------
    def set_anchor(self, param: Tensor, value: Tensor) -> None:
        """Use `value` (e.g. the pretrained weights) as θ₀ for `param` instead of its value at step 1."""
        if tuple(value.shape) != tuple(param.shape):
            raise UserError(
                f"anchor for {self._name_of(param)}: shape {tuple(value.shape)} does not "
                f"match the parameter's {tuple(param.shape)}; pass the matching pretrained tensor"
            )
        self.state[param]["anchor"] = value.detach().to(device=param.device, dtype=param.dtype).clone()

    def _name_of(self, param: Tensor) -> str:
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p is param:
                    names = group.get("param_names")
                    where = f"param group {gi} #{pi} (shape {tuple(p.shape)})"
                    return f"parameter {names[pi]!r}" if names else where
        return f"tensor of shape {tuple(param.shape)}"

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        # torch.optim.AdamW keeps `step` as a float32 CPU scalar tensor: same here, so states interchange.
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if "anchor" not in state:
            # Captured before any update: this is θ₀ (under ZeRO, this rank's slice of it).
            state["anchor"] = p.detach().clone(memory_format=torch.preserve_format)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # Refuse a checkpoint that would silently resume without θ₀ (or with someone else's).
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state or "step" not in state:
                    continue
                for key in STATE_KEYS:
                    if key not in state:
                        raise UserError(
                            f"optimizer checkpoint: {self._name_of(p)} has no {key!r} state; "
                            "resume from a checkpoint written by AnchoredAdamW"
                        )
                    if tuple(state[key].shape) != tuple(p.shape):
                        raise UserError(
                            f"optimizer checkpoint: {key!r} of {self._name_of(p)} has shape "
                            f"{tuple(state[key].shape)}, the parameter {tuple(p.shape)}; "
                            "resume with the model and world size it was saved with (or reshard it)"
                        )

    # --- the update ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AnchoredAdamW does not support sparse gradients")
                state = self.state[p]
                if "step" not in state:
                    self._init_state(p, state)
                params.append(p)
                grads.append(p.grad)
            if params:
                # One multi-tensor pass per (device, dtype): foreach ops need uniform lists.
                buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
                for i, p in enumerate(params):
                    buckets.setdefault((p.device, p.dtype), []).append(i)
                for idx in buckets.values():
                    self._update([params[i] for i in idx], [grads[i] for i in idx], group)
        return loss

    def _update(self, params: list[Tensor], grads: list[Tensor], group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        wd, ad = group["weight_decay"], group["anchor_decay"]
        states = [self.state[p] for p in params]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)

        # Decoupled terms: θ(1 − a − b) + a·θ₀ with a = lr·ad, b = lr·wd. Written as a lerp toward θ₀ by
        # a/(1−b) followed by a scale of (1−b): exact, and one pass over θ (plus θ₀) instead of two.
        a, b = lr * ad, lr * wd
        if a != 0.0:
            anchors = [s["anchor"] for s in states]
            torch._foreach_lerp_(params, anchors, a / (1.0 - b) if b != 1.0 else 0.0)
        if b != 0.0:
            torch._foreach_mul_(params, 1.0 - b)
        if b == 1.0 and a != 0.0:  # degenerate lr·wd = 1: θ is wiped, only the anchor pull is left
            torch._foreach_add_(params, [s["anchor"] for s in states], alpha=a)

        # Adam, exactly as torch.optim.AdamW's foreach path (same ops, same order → same rounding).
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
        step_values = [float(s.item()) for s in steps]
        step_size = [(lr / (1.0 - beta1**t)) * -1.0 for t in step_values]
        bc2_sqrt = [(1.0 - beta2**t) ** 0.5 for t in step_values]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    anchor_decay: float,
    no_decay_1d: bool = True,
    no_decay_weight_decay: float = 0.0,
    no_decay_anchor_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Two groups for AnchoredAdamW: ≥2-D weights get the decays; 1-D tensors (biases, norm gains) get
    `no_decay_*` (0 by default), since pulling a norm gain toward 0 or θ₀ is not what regularizes.

    Frozen parameters (requires_grad=False) are left out; empty groups are dropped.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_1d and p.ndim < 2 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "anchor_decay": anchor_decay},
        {"params": no_decay, "weight_decay": no_decay_weight_decay, "anchor_decay": no_decay_anchor_decay},
    ]
    return [g for g in groups if g["params"]]
