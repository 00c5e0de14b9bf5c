"""A forgetting budget: `data.inject_fraction: auto` sets p at every evaluation to hold forgetting under ε.

Forgetting F = pt_loss − pt_loss_base (the starting model's pretraining validation loss) is measured at
each evaluation; p holds from there to the next one (a piecewise-constant schedule, exact in the stream:
data/mixture.py). The budget is judged where the study measures forgetting, at the bottom of the target
U-curve (step T). The rule is proportional-integral on log p, with the error in log of the forgetting
projected to that bottom:

    F̂_t   = F_t · (T̂ / t)^κ                  while t < T̂; F_t from T̂ on, or without a T̂
    e_t   = clip(ln(F̂_t / (s·ε)), −e_max, e_max)
    ln p  = ln p_0 + K_p·e_t + K_i·Σ_{τ≤t} e_τ,      p clamped to [p_min, inject_max]

Why this rule:
- **the projection**: without injection, forgetting grows along a run as a power of the step,
  F_t ≈ F_T·(t/T)^κ with κ = 0.4–1.2 (median 0.7) in the micro study's p = 0 runs, more slowly under
  injection (median 0.4 at p = 5 %): at the first evaluation F_t is a tenth (1–35 %) of what it will be
  at the bottom. The first rule compared F_t itself with ε, read that as "far under budget" and cut p to
  p_min, and the bottom came before p recovered (4 of 32 runs of reports/adaptive/first_rule missed
  their budget so). T̂ is the prior fit's `bottom-step` law (T = A·D^β/N^α on the steps of the runs' best
  evaluations, 11–26 % in-sample error). The loop projects with κ = 0.2, well under the measured
  exponents: the integral term takes up what the projection leaves, and a larger κ over-injects early
  (chosen in closed loop, below). Without a T̂ (no prior fit, or one without that law) the loop reads F_t
  as it is.
- **log p**: p acts multiplicatively, through (1 + B·p) in the paper's law F ∝ D^β / ((1 + B·p)·N)^α,
  and useful values span orders of magnitude (0.1 %–20 %): a step in log p is the same relative change
  at 0.2 % as at 10 %, and p stays positive.
- **log F**: by that law, d ln F / d ln p = −α·B·p/(1 + B·p), so ln F is (nearly) linear in ln p with a
  slope no steeper than α; fitted α are 0.1–0.5 (the paper; α = 0.24 on this project's demo). With
  K_p = 2 = 1/α_max the loop gain K_p·α stays ≤ 1: a proportional step corrects at most the whole error,
  never overshoots, whatever the prior. Forgetting responds weakly to p (α small), so a smaller gain
  lags a rising F: with K_p = 1, K_i = 0.5 the simulated runs of tests/unit/test_inject_control.py
  ended up to 15 % over ε; with K_p = K_i = 2 all ended under it.
- **integral**: what the projection misses (a T̂ or κ off for this run) shows as an error of one sign
  that persists; the integral term removes it. Anti-windup: the integral grows only until p reaches a
  bound, never past it, so after a stretch at inject_max the first evaluation under the setpoint brings p
  down at once.
- **setpoint s·ε below ε** (s = 0.8): evaluation noise and the projection's error; aiming 20 % under
  leaves that headroom.
- **chosen in closed loop** (`dist-forget study closed-loop`: the measured adaptive sweep replayed on a
  plant fitted to the micro runs, reports/adaptive/NOTES.md): with κ = 0.2 and s = 0.8 all 32 budgets
  held on each plant tried (drift exponent 0.5, 0.6, 0.7), at 1.36x, 1.19x, 1.02x the plan's injected
  tokens; without the projection 30, 26, 24 held (the real sweep: 28); κ = 0.2 with s = 0.85 held 32, 32,
  29 at 1.23x, 1.06x, 0.90x. The grid rerun with this rule (reports/adaptive) held 30 of 32 at 1.13x; the
  two misses are one point (0.3m, legal, D = 15k) whose forgetting grew as t^1.0 to a bottom at step 325,
  where the law put T̂ at 172.
- **clipped error**: one noisy evaluation moves ln p by at most (K_p + K_i)·e_max. F ≤ 0 before T̂
  (finetuning can first lower the pretraining loss) says nothing about the bottom: p is kept; from T̂ on
  (or without one) it counts as a hundredth of ε.

p_min (1e-4) keeps ln p finite; at that p a small run injects next to nothing. The start p_0 is the
planner's smallest constant p for ε when `data.inject_prior` names a fit.json (laws/plan.py), else 1 %.
`InjectController` is pure (no I/O, no torch): `update(F, step) -> p`, `state_dict()`/`load_state_dict()`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dist_forget.data.mixture import MixtureConfig
from dist_forget.errors import UserError

DEFAULT_START = 0.01  # p_0 without a prior fit
P_MIN = 1e-4
GROWTH = 0.2  # κ of the projection (see the module docstring)


@dataclass
class InjectController:
    eps: float  # the budget, nats/token
    p_start: float
    p_max: float = 0.2
    p_min: float = P_MIN
    setpoint: float = 0.8  # aim at setpoint·eps
    kp: float = 2.0
    ki: float = 2.0
    max_error: float = 2.0  # |e| bound, in ln units
    bottom_step: float = math.nan  # T̂: the step the prior puts the bottom of the U-curve at; nan: none
    growth: float = GROWTH  # κ
    integral: float = 0.0  # Σ e over the updates that were integrated
    p: float = math.nan  # the p set last (p_start before the first update)
    updates: int = 0

    def __post_init__(self) -> None:
        self.p_start = min(max(self.p_start, self.p_min), self.p_max)
        if math.isnan(self.p):
            self.p = self.p_start

    def projected(self, forgetting: float, step: int) -> float:
        """F̂: the forgetting expected at the bottom, F·(T̂/step)^κ before T̂; F itself from T̂ on or without T̂."""
        if not self.bottom_step > step > 0:  # also False for a nan T̂
            return forgetting
        return forgetting * (self.bottom_step / step) ** self.growth

    def error(self, forgetting: float) -> float:
        """e: ln of (projected) over aimed-at forgetting, clipped; F ≤ 0 counts as a hundredth of ε."""
        f = max(forgetting, 0.01 * self.eps)
        return min(max(math.log(f / (self.setpoint * self.eps)), -self.max_error), self.max_error)

    def update(self, forgetting: float, step: int = 0) -> float:
        """The p for the next segment after measuring `forgetting` at `step`; a non-finite measurement, or
        one ≤ 0 before the predicted bottom, keeps p."""
        if not math.isfinite(forgetting) or (forgetting <= 0 and self.bottom_step > step):
            return self.p
        e = self.error(self.projected(forgetting, step))
        lo, hi = math.log(self.p_min), math.log(self.p_max)
        base = math.log(self.p_start) + self.kp * e
        integral = self.integral + e
        # anti-windup: the integral grows only until p reaches a bound, never past it
        if base + self.ki * integral > hi:
            integral = min(integral, max(self.integral, (hi - base) / self.ki))
        elif base + self.ki * integral < lo:
            integral = max(integral, min(self.integral, (lo - base) / self.ki))
        self.integral = integral
        self.p = min(max(math.exp(base + self.ki * integral), self.p_min), self.p_max)
        self.updates += 1
        return self.p

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("p_start", "integral", "p", "updates"):
            setattr(self, name, state[name])
        # T̂ as the run started with it, even if the prior fit was refitted since (older states lack it)
        self.bottom_step = state.get("bottom_step", self.bottom_step)


@dataclass(frozen=True)
class Prior:
    """Where an adaptive run starts: p_0, where it came from, and T̂ (nan without a bottom-step law)."""

    p: float
    source: str
    bottom_step: float = math.nan


def read_prior(
    data: MixtureConfig, domain: str, model_params: float, target_tokens: float, anchor_decay: float
) -> Prior:
    """The planner's p for ε and the bottom-step law's T̂ from `data.inject_prior`, else DEFAULT_START."""
    if not data.inject_prior:
        return Prior(DEFAULT_START, "default")
    from dist_forget.laws.plan import budget_p, load_fits, predict_bottom_step

    where = f"data.inject_prior = {data.inject_prior}"
    try:
        fits = load_fits(data.inject_prior)
    except UserError as exc:
        raise UserError(f"data.inject_prior: {exc}") from None
    domains = sorted({str(f.get("domain")) for f in fits})
    if domain not in domains:
        raise UserError(
            f"{where} is a fit for {', '.join(domains) or 'no domain'}, not for this run's domain {domain!r}; "
            "pass a fit of that domain or drop data.inject_prior"
        )
    assert data.max_forgetting is not None  # MixtureConfig.validate
    p = budget_p(fits, domain, model_params, target_tokens, data.max_forgetting, anchor_decay, where)
    bottom = predict_bottom_step(fits, domain, model_params, target_tokens)
    return Prior(p if math.isfinite(p) else data.inject_max, f"planner ({data.inject_prior})", bottom)
