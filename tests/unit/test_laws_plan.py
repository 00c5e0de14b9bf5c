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


def test_unreachable_budget_says_what_p_100_percent_gives(fits, capsys, tmp_path):
    import json

    from dist_forget import cli

    out = plan(fits, "wiki", 1e5, 1e7, max_forgetting=1e-4)
    assert out["reachable"] is False and out["inject_fraction"] == float("inf")
    pt = next(f["params"] for f in fits if f["form"] == "forgetting")
    at_p1 = pt["A"] * 1e7 ** pt["beta"] / ((1 + pt["B"]) * 1e5) ** pt["alpha"]
    assert out["forgetting_at_p1"] == pytest.approx(at_p1, rel=1e-9) and at_p1 > 1e-4
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"fits": fits}))
    argv = ["plan", "--fit", str(path), "--domain", "wiki", "--model-params", "1e5", "--target-tokens", "1e7",
            "--max-forgetting", "1e-4"]  # fmt: skip
    assert cli.main(argv) == 1
    text = capsys.readouterr().out
    assert (
        f"not reachable by injection alone at N=1e+05, D=1e+07: predicted forgetting at p = 100 % is {at_p1:.4g}"
        in text
    )
    assert "e+2" not in text.split("is", 1)[1]  # no astronomically large "p" anywhere
    assert cli.main([*argv, "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["reachable"] is False and answer["inject_fraction"] is None
    assert answer["forgetting_at_p1"] == pytest.approx(at_p1, rel=1e-9)


def _degenerate(fits, form: str, code: str, params: list[str]) -> list[dict]:
    """The same fits with one warning added to `form`'s record, as diagnostics would write it."""
    out = [dict(f) for f in fits]
    for rec in out:
        if rec["form"] == form:
            rec["warnings"] = [{"code": code, "message": "made up for the test", "params": params}]
    return out


@pytest.mark.parametrize(
    "code, params", [("exponent_near_zero", ["alpha"]), ("param_at_bound", ["B"]), ("ci_too_wide", ["A"])]
)
def test_planner_refuses_a_forgetting_fit_with_a_warning_it_depends_on(fits, code, params):
    bad = _degenerate(fits, "forgetting", code, params)
    with pytest.raises(UserError, match=rf"the forgetting fit for 'wiki' cannot answer: {code}: .*--force"):
        plan(bad, "wiki", 3e6, 1e6, max_forgetting=0.05)
    forced = plan(bad, "wiki", 3e6, 1e6, max_forgetting=0.05, force=True)
    assert forced["warnings"][0]["code"] == code and forced["warnings"][0]["form"] == "forgetting"
    assert forced["inject_fraction"] == plan(fits, "wiki", 3e6, 1e6, max_forgetting=0.05)["inject_fraction"]


def test_a_finetune_fit_warning_withholds_only_the_predicted_finetune_loss(fits):
    from dist_forget.laws.plan import format_plan

    bad = _degenerate(fits, "finetune", "ci_too_wide", ["E"])
    out = plan(bad, "wiki", 3e6, 1e6, max_forgetting=0.05)
    clean = plan(fits, "wiki", 3e6, 1e6, max_forgetting=0.05)
    assert out["inject_fraction"] == clean["inject_fraction"] and out["ci95"] == clean["ci95"]
    assert out["predicted_ft_loss"] is None and out["ft_loss_ci95"] is None
    assert out["ft_loss_withheld"].startswith("ci_too_wide") and out["warnings"][0]["form"] == "finetune"
    assert "predicted finetune loss: withheld, the finetune fit carries ci_too_wide" in format_plan(out)
    assert plan(bad, "wiki", 3e6, 1e6, max_forgetting=0.05, force=True)["predicted_ft_loss"] == pytest.approx(
        clean["predicted_ft_loss"]
    )


def test_planner_ignores_a_warning_on_a_parameter_it_does_not_use(fits):
    """K (Anchored AdamW's multiplier) does not enter the answer at anchor_decay = 0."""
    bad = _degenerate(fits, "forgetting", "ci_too_wide", ["K"])
    assert plan(bad, "wiki", 3e6, 1e6, max_forgetting=0.05)["warnings"] == []


def test_planner_refusal_from_the_cli_is_one_line_exit_2(fits, tmp_path, capsys):
    import json

    from dist_forget import cli

    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"fits": _degenerate(fits, "forgetting", "exponent_near_zero", ["alpha"])}))
    argv = ["plan", "--fit", str(path), "--domain", "wiki", "--model-params", "3e6", "--target-tokens", "1e6",
            "--max-forgetting", "0.05"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exponent_near_zero" in err and str(path) in err
    assert cli.main([*argv, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"][0]["code"] == "exponent_near_zero"


def test_tiny_exponent_is_unreachable_not_an_overflow():
    """A degenerate fit (alpha ~ 0, as tiny sweeps give) makes (A D^b / eps)^(1/alpha) overflow a float."""
    from dist_forget.laws.forms import get_form

    params = {"A": 0.55, "alpha": 3e-4, "beta": 0.0, "B": 1e26}
    assert get_form("forgetting").solve_p(params, 3e5, 1e5, 0.02) == float("inf")
    params = {"A": 2.0, "alpha": 0.5, "beta": 0.3, "B": 100.0}
    closed = ((2.0 * 1e5**0.3 / 0.02) ** 2 / 1e6 - 1) / 100
    assert get_form("forgetting").solve_p(params, 1e6, 1e5, 0.02) == pytest.approx(closed, rel=1e-9)


def test_an_unreachable_budget_outside_the_fitted_range_still_says_extrapolated(fits):
    from dist_forget.laws.plan import format_plan

    n_lo = min(f["range"]["model_params"][0] for f in fits)
    out = plan(fits, "wiki", n_lo / 100, 1e9, max_forgetting=1e-4)
    assert out["reachable"] is False and out["extrapolated"]
    text = format_plan(out)
    assert "not reachable by injection alone" in text
    assert text.splitlines()[-1].startswith("EXTRAPOLATED: model_params ")
