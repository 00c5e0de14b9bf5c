"""Runs tables generated from known law parameters: for tests, benchmarks and the demo.

Losses follow the default forms exactly, then get log-normal noise (`noise` = relative standard
deviation, 0.003 = 0.3 %) and a fraction of outliers multiplied by `1 + outlier_size`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dist_forget.laws.forms import FORMS
from dist_forget.laws.table import Runs


@dataclass
class SyntheticConfig:
    finetune: dict[str, float] = field(
        default_factory=lambda: {"E": 1.5, "A": 200.0, "alpha": 0.3, "beta": 0.2}
    )
    forgetting: dict[str, float] = field(
        default_factory=lambda: {"A": 2.0, "alpha": 0.4, "beta": 0.3, "B": 1000.0}
    )
    base: tuple[float, float, float] = (2.0, 50.0, 0.25)  # pt_loss_base = a + b / N^c (the base model's loss)
    sizes: Sequence[float] = (1e5, 3e5, 1e6, 3e6, 1e7)
    tokens: Sequence[float] = (1e5, 3e5, 1e6, 3e6, 1e7)
    fractions: Sequence[float] = (0.0, 0.001, 0.005, 0.01, 0.05)
    domains: Sequence[str] = ("wiki",)
    noise: float = 0.003
    outliers: float = 0.0
    outlier_size: float = 0.1
    seed: int = 0


def synthetic_runs(cfg: SyntheticConfig) -> Runs:
    rng = np.random.default_rng(cfg.seed)
    n, d, p, dom = (
        a.ravel()
        for a in np.meshgrid(
            np.asarray(cfg.sizes, float),
            np.asarray(cfg.tokens, float),
            np.asarray(cfg.fractions, float),
            np.arange(len(cfg.domains)),
            indexing="ij",
        )
    )
    count = n.size
    a, b, c = cfg.base
    cols = {
        "model_params": n,
        "target_tokens": d,
        "inject_fraction": p,
        "anchor_decay": np.zeros(count),
        "pt_loss_base": a + b / n**c,
    }
    ft_form, pt_form = FORMS["finetune"], FORMS["forgetting"]
    clean = {
        "ft_loss": ft_form.predict(ft_form.to_internal(cfg.finetune), cols),
        "pt_loss": pt_form.predict(pt_form.to_internal(cfg.forgetting), cols),
    }
    for name, y in clean.items():
        noisy = y * np.exp(rng.normal(0.0, cfg.noise, count))
        noisy[rng.random(count) < cfg.outliers] *= 1.0 + cfg.outlier_size
        cols[name] = noisy
    ids = [f"syn-{i}" for i in range(count)]
    return Runs(
        domain=np.array([cfg.domains[i] for i in dom], dtype=object),
        values=cols,
        run_id=ids,
        source=[f"synthetic row {i}" for i in range(count)],
    )
