"""The forgetting-budget controller (engine/inject_control.py): rising, falling, saturating, the projection
to the bottom of the U-curve, its state, the prior from a fit.json, and the one-line errors of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dist_forget.data.mixture import MixtureConfig
from dist_forget.engine.inject_control import DEFAULT_START, P_MIN, InjectController, Prior, read_prior
from dist_forget.errors import UserError
from dist_forget.laws.forms import get_form

EPS = 0.5
LAW = {"A": 2.0, "alpha": 0.3, "beta": 0.2, "B": 100.0}  # F = A D^beta / ((1 + B p) N)^alpha


def test_forgetting_over_the_budget_raises_p_every_evaluation():
    c = InjectController(EPS, p_start=0.01)
    ps = [c.update(0.6) for _ in range(3)]  # 0.6 > eps
    assert 0.01 < ps[0] < ps[1] < ps[2] < c.p_max


def test_forgetting_under_the_setpoint_lowers_p_to_its_floor():
    c = InjectController(EPS, p_start=0.05)
    ps = [c.update(0.05) for _ in range(12)]  # a tenth of the budget
    assert all(b < a for a, b in zip(ps, ps[1:]) if a > ps[-1])
    assert ps[0] < 0.05 and ps[-1] == pytest.approx(P_MIN)


def test_forgetting_at_the_setpoint_keeps_p():
    c = InjectController(EPS, p_start=0.03)
    assert c.update(c.setpoint * EPS) == pytest.approx(0.03)
    assert c.update(c.setpoint * EPS) == pytest.approx(0.03)


def test_p_saturates_at_inject_max_without_winding_up():
    """Held at inject_max by a budget it cannot meet, p comes down at the first evaluation under the
    setpoint: the integral did not grow while p sat at the bound."""
    c = InjectController(EPS, p_start=0.01, p_max=0.2)
    ps = [c.update(5.0) for _ in range(20)]
    assert ps[-1] == 0.2 and ps.count(0.2) >= 18
    integral = c.integral
    assert c.update(5.0) == 0.2 and c.integral == integral
    assert c.update(0.1) < 0.05


def test_a_non_finite_measurement_keeps_p():
    c = InjectController(EPS, p_start=0.02)
    assert c.update(math.nan) == 0.02 and c.updates == 0


def test_state_dict_continues_the_same_sequence():
    measured = [0.1, 0.7, 0.9, 0.45, 0.3, 0.6]
    whole = InjectController(EPS, p_start=0.01)
    expected = [whole.update(f) for f in measured]
    first = InjectController(EPS, p_start=0.01)
    [first.update(f) for f in measured[:3]]
    state = json.loads(json.dumps(first.state_dict()))  # plain data, as in a checkpoint
    second = InjectController(EPS, p_start=0.01)
    second.load_state_dict(state)
    assert [second.update(f) for f in measured[3:]] == expected[3:]


@pytest.mark.parametrize("law", [dict(LAW), dict(LAW, alpha=0.5, B=300.0), dict(LAW, alpha=0.15)])
@pytest.mark.parametrize("p_static", [0.005, 0.05, 0.15])
def test_controller_holds_a_simulated_run_under_the_budget(law, p_static):
    """On the law itself, with forgetting growing as data is seen (10 evaluations up to D = 1e6, the
    bottom at the last), the loop ends under the eps that the constant p_static just meets at the end."""
    form, n = get_form("forgetting"), 1e5

    def forgetting(p: float, d: float) -> float:
        cols = dict(model_params=n, target_tokens=d, inject_fraction=p, anchor_decay=0.0, pt_loss_base=1.0)
        return float(form.forgetting(form.to_internal(law), {k: np.array([v]) for k, v in cols.items()})[0])

    eps = forgetting(p_static, 1e6)
    c = InjectController(eps, p_start=DEFAULT_START, bottom_step=10)
    for evaluation, d in enumerate(range(100_000, 1_000_001, 100_000), start=1):
        f = forgetting(c.p, d)
        c.update(f, evaluation)
    assert f <= eps


def test_early_forgetting_is_read_as_what_it_projects_to_at_the_bottom():
    """At step 25 of a run whose bottom is due at step 400, forgetting at a quarter of the budget is on
    course for the budget there: p stays up. Read as measured, it cut p to under a fiftieth (the 4 runs of
    reports/adaptive/first_rule that missed their budget)."""
    measured = InjectController(EPS, p_start=0.02, setpoint=0.8, growth=0.0)
    projected = InjectController(EPS, p_start=0.02, bottom_step=400.0, growth=0.5)
    assert projected.projected(0.25 * EPS, 25) == pytest.approx(0.25 * EPS * 4.0)
    assert projected.projected(0.25 * EPS, 400) == 0.25 * EPS  # at or past the bottom: as measured
    assert measured.update(0.25 * EPS, 25) < 0.02 / 50
    assert projected.update(0.25 * EPS, 25) >= 0.02


def test_no_forgetting_yet_keeps_p_before_the_bottom():
    c = InjectController(EPS, p_start=0.03, bottom_step=300.0)
    assert c.update(-0.01, 25) == 0.03 and c.updates == 0  # the pretraining loss first fell: no reading
    assert c.update(-0.01, 300) < 0.03  # at the bottom, none is none: p comes down


def _fit_file(tmp_path: Path, domain: str, bottom: dict[str, float] | None = None) -> Path:
    fits = [{"domain": domain, "form": "forgetting", "params": LAW, "warnings": []}]
    if bottom is not None:
        fits.append({"domain": domain, "form": "bottom-step", "params": bottom, "warnings": []})
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"fits": fits}))
    return path


def test_start_from_the_planner_with_a_prior_fit(tmp_path):
    data = MixtureConfig(target="t", pretrain="p", inject_fraction="auto", max_forgetting=0.5,
                         inject_prior=str(_fit_file(tmp_path, "code")))  # fmt: skip
    prior = read_prior(data, "code", 1e5, 1e6, 0.0)
    expected = get_form("forgetting").solve_p(LAW, 1e5, 1e6, 0.5)
    assert prior.p == pytest.approx(expected) and 0 < prior.p < 1 and "planner" in prior.source
    assert math.isnan(prior.bottom_step)  # a fit without the bottom-step law: no projection
    no_prior = MixtureConfig(target="t", pretrain="p", inject_fraction="auto", max_forgetting=0.1)
    assert read_prior(no_prior, "code", 1e5, 1e6, 0.0) == Prior(DEFAULT_START, "default")


def test_the_prior_places_the_bottom_by_its_bottom_step_law(tmp_path):
    bottom = {"A": 0.005, "alpha": 0.11, "beta": 1.23}
    data = MixtureConfig(target="t", pretrain="p", inject_fraction="auto", max_forgetting=0.5,
                         inject_prior=str(_fit_file(tmp_path, "code", bottom)))  # fmt: skip
    prior = read_prior(data, "code", 8e4, 4.5e4, 0.0)
    assert prior.bottom_step == pytest.approx(0.005 * 4.5e4**1.23 / 8e4**0.11)
    c = InjectController(0.5, prior.p, bottom_step=prior.bottom_step)
    c.update(0.1, 25)
    state = json.loads(json.dumps(c.state_dict()))
    resumed = InjectController(0.5, prior.p)  # a refitted prior may move T̂: the run keeps its own
    resumed.load_state_dict(state)
    assert resumed.bottom_step == c.bottom_step and resumed.update(0.2, 50) == c.update(0.2, 50)


def test_a_prior_fit_for_another_domain_is_one_line(tmp_path):
    data = MixtureConfig(target="t", pretrain="p", inject_fraction="auto", max_forgetting=0.1,
                         inject_prior=str(_fit_file(tmp_path, "legal")))  # fmt: skip
    with pytest.raises(UserError) as exc:
        read_prior(data, "code", 1e5, 1e6, 0.0)
    msg = str(exc.value)
    assert "\n" not in msg and "data.inject_prior" in msg and "'code'" in msg and "legal" in msg


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"inject_fraction": "auto"}, "needs data.max_forgetting"),
        ({"inject_fraction": "auto", "max_forgetting": 0.0}, "data.max_forgetting = 0.0 must be > 0"),
        ({"inject_fraction": "auto", "max_forgetting": -0.2}, "data.max_forgetting = -0.2 must be > 0"),
        ({"inject_fraction": "auto", "max_forgetting": 0.1, "inject_max": 1.5}, "data.inject_max = 1.5"),
        ({"inject_fraction": 0.01, "max_forgetting": 0.1}, "inject_fraction=auto only"),
    ],
)
def test_bad_auto_config_is_one_line(fields, needle):
    with pytest.raises(UserError) as exc:
        MixtureConfig(target="t", pretrain="p", **fields).validate()
    assert needle in str(exc.value) and "\n" not in str(exc.value)
