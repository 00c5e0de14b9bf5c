"""The planner: closed-form p, bootstrap interval, extrapolation flag, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dist_forget.errors import UserError
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.plan import plan
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs


@pytest.fixture(scope="module")
def fits():
    runs = synthetic_runs(SyntheticConfig(fractions=(0.0, 0.005, 0.01, 0.05)))
    return fit_runs(runs, ["finetune", "forgetting"], FitConfig(bootstrap=100, workers=1), progress=False)


def test_smallest_p_matches_the_closed_form(fits):
    pt = next(f["params"] for f in fits if f["form"] == "forgetting")
    n, d, eps = 3e6, 1e6, 0.05
    out = plan(fits, "wiki", n, d, max_forgetting=eps)
    expected = ((pt["A"] * d ** pt["beta"] / eps) ** (1 / pt["alpha"]) / n - 1) / pt["B"]
    assert out["inject_fraction"] == pytest.approx(expected, rel=1e-12)
    assert out["predicted_forgetting"] == pytest.approx(eps, rel=1e-9)  # the budget is met exactly
    lo, hi = out["ci95"]
    assert lo < out["inject_fraction"] < hi
    assert out["extrapolated"] is False
    ft = next(f["params"] for f in fits if f["form"] == "finetune")
    assert out["predicted_ft_loss"] == pytest.approx(ft["E"] + ft["A"] / (n ** ft["alpha"] * d ** ft["beta"]))


def test_no_injection_needed_when_forgetting_is_already_small(fits):
    out = plan(fits, "wiki", 1e7, 1e5, max_forgetting=10.0)
    assert out["inject_fraction"] == 0.0 and out["predicted_forgetting"] < 10.0


def test_given_p_predicts_both_losses_and_flags_extrapolation(fits):
    at_small = plan(fits, "wiki", 1e9, 1e6, inject_fraction=0.001)
    at_large = plan(fits, "wiki", 1e9, 1e6, inject_fraction=0.05)
    assert at_large["predicted_forgetting"] < at_small["predicted_forgetting"]
    assert at_small["extrapolated"] is True and "model_params" in at_small["extrapolation"][0]
    lo, hi = at_small["forgetting_ci95"]
    assert lo <= at_small["predicted_forgetting"] <= hi


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_forgetting": 0.0}, "--max-forgetting 0.0 must be > 0"),
        ({"max_forgetting": -1.0}, "--max-forgetting -1.0 must be > 0"),
        ({}, "give exactly one of --max-forgetting"),
        ({"max_forgetting": 0.1, "inject_fraction": 0.1}, "give exactly one of --max-forgetting"),
    ],
)
def test_bad_budget(fits, kwargs, message):
    with pytest.raises(UserError, match=message):
        plan(fits, "wiki", 1e6, 1e6, **kwargs)


def test_domain_absent_from_the_fit(fits):
    with pytest.raises(UserError, match="domain 'math' is not in the fit; fitted domains: wiki"):
        plan(fits, "math", 1e6, 1e6, max_forgetting=0.1)
    assert np.isfinite(plan(fits, "wiki", 1e6, 1e6, max_forgetting=0.1)["inject_fraction"])


def test_unreachable_budget_is_reported(fits, capsys, tmp_path):
    import json

    from dist_forget import cli

    out = plan(fits, "wiki", 1e5, 1e7, max_forgetting=1e-4)
    assert out["inject_fraction"] > 1 and out["reachable"] is False
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"fits": fits}))
    argv = [
        "plan",
        "--fit",
        str(path),
        "--domain",
        "wiki",
        "--model-params",
        "1e5",
        "--target-tokens",
        "1e7",
        "--max-forgetting",
        "1e-4",
    ]
    assert cli.main(argv) == 1
    assert "unreachable" in capsys.readouterr().out


def test_tiny_exponent_is_unreachable_not_an_overflow():
    """A degenerate fit (alpha ~ 0, as tiny sweeps give) makes (A D^b / eps)^(1/alpha) overflow a float."""
    from dist_forget.laws.forms import get_form

    params = {"A": 0.55, "alpha": 3e-4, "beta": 0.0, "B": 1e26}
    assert get_form("forgetting").solve_p(params, 3e5, 1e5, 0.02) == float("inf")
    params = {"A": 2.0, "alpha": 0.5, "beta": 0.3, "B": 100.0}
    closed = ((2.0 * 1e5**0.3 / 0.02) ** 2 / 1e6 - 1) / 100
    assert get_form("forgetting").solve_p(params, 1e6, 1e5, 0.02) == pytest.approx(closed, rel=1e-9)
