"""Law forms: small declarative objects (name, parameters, bounds, start grid, formula).

Every form predicts a loss as a sum of positive terms, `L = sum_k exp(t_k)`, where each log-term `t_k`
is a simple function of the (internal) parameters and the run's columns. The fitter only needs the
log-terms and their nonzero partial derivatives: `log L` is then a log-sum-exp, which is numerically
safe for the huge scales (A ~ e^25) the start grids visit, and its gradient is exact. A fixed offset
such as the base model's pretraining loss is simply a log-term with no derivatives.

`th` is either one parameter vector, shape (k,), or a batch of them laid out as (k, B, 1), so that
`e, a, alpha, beta = th` broadcasts against the run columns (n,) to (B, n): the bootstrap solves all
its resamples at once with the same code.

Positive scale parameters (E, A, B, C, K) are fitted as their logarithm (`log=True`), exponents as
themselves within bounds, as in Chinchilla and Epoch AI's refit. To add a form, write one small class
with `params` and `log_terms` and register it in FORMS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dist_forget.errors import UserError

Cols = dict[str, np.ndarray]

# Internal-space bounds: wide enough never to bind on real data, narrow enough that exp() stays finite.
LOG_BOUNDS = (-30.0, 60.0)
EXP_BOUNDS = (0.0, 5.0)
EXPONENT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class Param:
    name: str
    log: bool  # fitted as log(value); the reported value is exp(internal)
    grid: tuple[float, ...]  # start values, in internal space
    bounds: tuple[float, float] = EXP_BOUNDS

    def __post_init__(self) -> None:
        if self.log and self.bounds == EXP_BOUNDS:
            object.__setattr__(self, "bounds", LOG_BOUNDS)

    def to_value(self, internal: np.ndarray | float) -> np.ndarray | float:
        return np.exp(internal) if self.log else internal


def _exponent(name: str) -> Param:
    return Param(name, log=False, grid=EXPONENT_GRID)


Terms = list[np.ndarray]
Partials = dict[tuple[int, int], np.ndarray]  # (term index, parameter index) -> d term / d parameter


# the runs-table column each law predicts
TARGETS = {"finetune": "ft_loss", "forgetting": "pt_loss", "bottom": "steps"}


class LawForm:
    """Base class: a form predicts `target` (TARGETS[law]) from a run's columns."""

    name: str = ""
    law: str = ""  # "finetune" (predicts ft_loss), "forgetting" (pt_loss) or "bottom" (steps)
    formula: str = ""
    params: tuple[Param, ...] = ()
    varies: tuple[str, ...] = ()  # columns that must take at least two values for the law to be identified
    requires: tuple[str, ...] = ()  # optional runs-table columns the form reads
    conditional: bool = False  # predicts from measured losses of the run: no curve over N, D, p alone

    @property
    def target(self) -> str:
        return TARGETS[self.law]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def log_terms(self, th: np.ndarray, cols: Cols) -> tuple[Terms, Partials]:
        """Log-terms (each broadcastable to (..., n)) and their nonzero partials in internal parameters."""
        raise NotImplementedError

    def evaluate(self, th: np.ndarray, cols: Cols) -> tuple[np.ndarray, np.ndarray]:
        """log prediction (..., n) and its gradient (..., n, k) in internal parameters."""
        terms, partials = self.log_terms(th, cols)
        n = next(iter(cols.values())).shape[-1]
        stacked = np.stack(np.broadcast_arrays(*terms, np.zeros(n))[:-1], axis=-1)
        log_pred = _logsumexp(stacked)
        share = np.exp(stacked - log_pred[..., None])  # d log_pred / d term (a softmax)
        grad = np.zeros(log_pred.shape + (len(self.params),))
        for (m, k), d in partials.items():
            grad[..., k] += share[..., m] * d
        return log_pred, grad

    def log_predict(self, th: np.ndarray, cols: Cols) -> np.ndarray:
        terms, _ = self.log_terms(th, cols)
        n = next(iter(cols.values())).shape[-1]
        return _logsumexp(np.stack(np.broadcast_arrays(*terms, np.zeros(n))[:-1], axis=-1))

    def predict(self, th: np.ndarray, cols: Cols) -> np.ndarray:
        return np.exp(self.log_predict(th, cols))

    def to_values(self, th: np.ndarray) -> dict[str, float]:
        return {p.name: float(p.to_value(v)) for p, v in zip(self.params, th)}

    def to_internal(self, values: dict[str, float]) -> np.ndarray:
        return np.array([np.log(values[p.name]) if p.log else values[p.name] for p in self.params])

    def grid(self) -> np.ndarray:
        axes = np.meshgrid(*[np.asarray(p.grid, dtype=float) for p in self.params], indexing="ij")
        return np.stack([a.ravel() for a in axes], axis=1)

    def bounds(self) -> list[tuple[float, float]]:
        return [p.bounds for p in self.params]


def _logsumexp(terms: np.ndarray) -> np.ndarray:
    top = terms.max(axis=-1)
    return top + np.log(np.exp(terms - top[..., None]).sum(axis=-1))


def _logs(cols: Cols) -> tuple[np.ndarray, np.ndarray]:
    return np.log(cols["model_params"]), np.log(cols["target_tokens"])


def _boost(log_scale: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ln(1 + S*x) and its derivative in ln S, for a multiplier (1 + S*x) with S fitted in log space."""
    sx = np.exp(log_scale) * x
    return np.log1p(sx), sx / (1.0 + sx)


class Finetune(LawForm):
    name = "finetune"
    law = "finetune"
    formula = "L_ft = E + A / (N^alpha * D^beta)"
    params = (
        Param("E", True, (-1.0, -0.5, 0.0, 0.5, 1.0)),
        Param("A", True, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        _exponent("alpha"),
        _exponent("beta"),
    )
    varies = ("model_params", "target_tokens")

    def log_terms(self, th, cols):
        e, a, alpha, beta = th
        ln_n, ln_d = _logs(cols)
        return [e, a - alpha * ln_n - beta * ln_d], {(0, 0): 1.0, (1, 1): 1.0, (1, 2): -ln_n, (1, 3): -ln_d}


class FinetunePower(LawForm):
    """The finetune law without its irreducible loss E: a pure power law in N and D. Where the runs sit
    far above the floor of their loss (tiny models, a few thousand target tokens) they cannot tell E from
    a slightly smaller exponent, and `finetune`'s E is undetermined (its interval reaches 0); this form
    fits what such runs do determine: how the loss falls with N and D over their range."""

    name = "finetune-power"
    law = "finetune"
    formula = "L_ft = A / (N^alpha * D^beta)"
    params = (Param("A", True, (0.0, 2.5, 5.0, 10.0)), _exponent("alpha"), _exponent("beta"))
    varies = ("model_params", "target_tokens")

    def log_terms(self, th, cols):
        a, alpha, beta = th
        ln_n, ln_d = _logs(cols)
        return [a - alpha * ln_n - beta * ln_d], {(0, 0): 1.0, (0, 1): -ln_n, (0, 2): -ln_d}


class Chinchilla(LawForm):
    """Hoffmann et al.'s additive form, with the start grid of Epoch AI's refit."""

    name = "chinchilla"
    law = "finetune"
    formula = "L_ft = E + A / N^alpha + B / D^beta"
    params = (
        Param("E", True, (-1.0, -0.5, 0.0, 0.5, 1.0)),
        Param("A", True, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        _exponent("alpha"),
        Param("B", True, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        _exponent("beta"),
    )
    varies = ("model_params", "target_tokens")

    def log_terms(self, th, cols):
        e, a, alpha, b, beta = th
        ln_n, ln_d = _logs(cols)
        return (
            [e, a - alpha * ln_n, b - beta * ln_d],
            {(0, 0): 1.0, (1, 1): 1.0, (1, 2): -ln_n, (2, 3): 1.0, (2, 4): -ln_d},
        )


class _FinetuneWithP(LawForm):
    """p-aware finetune law: injection scales either the data or the parameters by (1 + C*p)."""

    law = "finetune"
    scales: str = ""  # "data" or "params"
    params = (
        Param("E", True, (-1.0, 0.0, 1.0)),
        Param("A", True, (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)),
        _exponent("alpha"),
        _exponent("beta"),
        Param("C", True, (0.0, 4.0, 8.0)),
    )
    varies = ("model_params", "target_tokens", "inject_fraction")

    def log_terms(self, th, cols):
        e, a, alpha, beta, c = th
        ln_n, ln_d = _logs(cols)
        ln_boost, d_boost = _boost(c, cols["inject_fraction"])
        if self.scales == "data":
            ln_d = ln_d + ln_boost
            expo = beta
        else:
            ln_n = ln_n + ln_boost
            expo = alpha
        return (
            [e, a - alpha * ln_n - beta * ln_d],
            {(0, 0): 1.0, (1, 1): 1.0, (1, 2): -ln_n, (1, 3): -ln_d, (1, 4): -expo * d_boost},
        )


class FinetuneEffData(_FinetuneWithP):
    name = "finetune-eff-data"
    scales = "data"
    formula = "L_ft = E + A / (N^alpha * (D * (1 + C*p))^beta)"


class FinetuneEffParams(_FinetuneWithP):
    name = "finetune-eff-params"
    scales = "params"
    formula = "L_ft = E + A / (((1 + C*p) * N)^alpha * D^beta)"


class Forgetting(LawForm):
    """The paper's forgetting law: injection multiplies the effective parameter count by (1 + B*p)."""

    name = "forgetting"
    law = "forgetting"
    formula = "L_pt = L_pt0 + A * D^beta / ((1 + B*p) * N)^alpha"
    params = (
        Param("A", True, (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0)),
        _exponent("alpha"),
        _exponent("beta"),
        Param("B", True, (0.0, 3.0, 6.0, 9.0, 12.0)),
    )
    varies = ("model_params", "target_tokens", "inject_fraction")
    multipliers: tuple[str, ...] = ("inject_fraction",)  # column scaled by each fitted log-scale after beta

    def log_terms(self, th, cols):
        a, alpha, beta = th[0], th[1], th[2]
        ln_n, ln_d = _logs(cols)
        ln_eff = ln_n
        partials: Partials = {}
        for j, column in enumerate(self.multipliers):
            ln_boost, d_boost = _boost(th[3 + j], cols[column])
            ln_eff = ln_eff + ln_boost
            partials[(1, 3 + j)] = -alpha * d_boost
        partials.update({(1, 0): 1.0, (1, 1): -ln_eff, (1, 2): ln_d})
        # The base model's loss is measured, not fitted: a term without partials.
        return [np.log(cols["pt_loss_base"]), a + beta * ln_d - alpha * ln_eff], partials

    def forgetting(self, th: np.ndarray, cols: Cols) -> np.ndarray:
        """Predicted pt_loss - pt_loss_base."""
        terms, _ = self.log_terms(th, cols)
        return np.exp(terms[1])

    def solve_p(
        self, values: dict[str, float], n: float, d: float, eps: float, anchor_decay: float = 0.0
    ) -> float:
        """Smallest p with forgetting <= eps: p = ((A*D^beta/eps)^(1/alpha)/N' - 1)/B, clipped at 0."""
        a, alpha, beta, b = values["A"], values["alpha"], values["beta"], values["B"]
        n_eff = n * (1.0 + values.get("K", 0.0) * anchor_decay)
        if alpha <= 0.0:  # forgetting does not depend on p at all
            return 0.0 if a * d**beta <= eps else float("inf")
        # In logs: with a small fitted alpha the power 1/alpha overflows a float long before p is useful.
        log_needed = (math.log(a) + beta * math.log(d) - math.log(eps)) / alpha - math.log(n_eff)
        if log_needed > 700.0:  # (1 + B p) would have to exceed e^700: no p in [0, 1] reaches eps
            return float("inf")
        return max(0.0, (math.exp(log_needed) - 1.0) / b)


class ForgettingAnchored(Forgetting):
    """Anchored AdamW's decay toward theta0 enters like injection: another (1 + K*lambda) multiplier."""

    name = "forgetting-anchored"
    formula = "L_pt = L_pt0 + A * D^beta / ((1 + B*p) * (1 + K*lambda) * N)^alpha"
    params = Forgetting.params + (Param("K", True, (0.0, 4.0, 8.0)),)
    varies = ("model_params", "target_tokens", "inject_fraction", "anchor_decay")
    multipliers = ("inject_fraction", "anchor_decay")


class ForgettingFromFinetune(LawForm):
    """Kalajdzievski 2024: forgetting is a power law of how far finetuning moved the target loss.

    Forgetting here is predicted from the finetune loss the run *reached* (the improvement
    L_ft0 - L_ft over the starting model's target loss, both measured), scaled by the paper's effective
    size (1 + B*p)*N. It answers "given how much of the target this run learned, how much did it
    forget?", so a held-out check uses the held-out runs' measured L_ft; the planner cannot use it alone.
    """

    name = "kalajdzievski"
    law = "forgetting"
    formula = "L_pt = L_pt0 + A * (L_ft0 - L_ft)^gamma / ((1 + B*p) * N)^alpha"
    params = (
        Param("A", True, (-5.0, 0.0, 5.0, 10.0)),
        _exponent("alpha"),
        _exponent("gamma"),
        Param("B", True, (0.0, 3.0, 6.0, 9.0, 12.0)),
    )
    varies = ("model_params", "ft_loss", "inject_fraction")
    requires = ("ft_loss_base",)  # the starting model's target loss (summary.json `ft_loss_base`)
    conditional = True  # predicts from a measured loss: no curve over N, D or p alone

    def log_terms(self, th, cols):
        a, alpha, gamma, b = th
        ln_n = np.log(cols["model_params"])
        ln_gain = np.log(cols["ft_loss_base"] - cols["ft_loss"])
        ln_boost, d_boost = _boost(b, cols["inject_fraction"])
        ln_eff = ln_n + ln_boost
        return (
            [np.log(cols["pt_loss_base"]), a + gamma * ln_gain - alpha * ln_eff],
            {(1, 0): 1.0, (1, 1): -ln_eff, (1, 2): ln_gain, (1, 3): -alpha * d_boost},
        )


class BottomStep(LawForm):
    """Where the bottom of the U-curve comes: the step of the best target evaluation (runs.csv `steps`).

    Not one of the paper's laws. A forgetting budget is judged at the bottom, and forgetting keeps rising
    until then (about as t^0.5 in steps), so the online controller (engine/inject_control.py) needs to know
    how far off the bottom is to read an early measurement. More unique data moves the bottom later; a
    larger model learns the target faster and reaches it sooner. In steps at the batch size of the runs.
    """

    name = "bottom-step"
    law = "bottom"
    formula = "T = A * D^beta / N^alpha"
    params = (Param("A", True, (-10.0, -5.0, 0.0, 5.0)), _exponent("alpha"), _exponent("beta"))
    varies = ("model_params", "target_tokens")
    requires = ("steps",)

    def log_terms(self, th, cols):
        a, alpha, beta = th
        ln_n, ln_d = _logs(cols)
        return [a - alpha * ln_n + beta * ln_d], {(0, 0): 1.0, (0, 1): -ln_n, (0, 2): ln_d}


FORMS: dict[str, LawForm] = {
    f.name: f
    for f in (
        Finetune(),
        FinetunePower(),
        Forgetting(),
        Chinchilla(),
        FinetuneEffData(),
        FinetuneEffParams(),
        ForgettingAnchored(),
        ForgettingFromFinetune(),
        BottomStep(),
    )
}
DEFAULT_FORMS = ("finetune", "forgetting")


def get_form(name: str) -> LawForm:
    if name not in FORMS:
        raise UserError(f"law form {name!r} is unknown; choose from {', '.join(FORMS)}")
    return FORMS[name]
