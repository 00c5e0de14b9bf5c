"""`study closed-loop`: the first-order forgetting plant, its calibration, and the replay of the measured
adaptive sweeps (reports/adaptive and its first_rule) on the runs of the micro study they ran beside
(its 4-size ladder on the English mix, reports/micro/pilots/english-19m-4-sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_forget.engine.inject_control import InjectController
from dist_forget.errors import UserError
from dist_forget.study.closed_loop import KAPPA, Plant, calibrate, compare, growth_exponents, run

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def test_without_injection_forgetting_grows_as_a_power_of_the_step():
    plant = Plant(c=0.08, r=0.05)
    assert plant.constant(0.0, 1000) == pytest.approx(0.08 * 1000**KAPPA, rel=0.02)
    # injection levels it off: at 5 % the second half of the run adds little
    half, full = plant.constant(0.05, 500), plant.constant(0.05, 1000)
    assert full < 0.08 * 1000**KAPPA / 2 and full / half < 1.1


def test_calibration_recovers_the_plant_it_was_measured_on():
    truth = Plant(c=0.07, r=0.03)
    fitted = calibrate(truth.constant(0.0, 600), 600, truth.constant(0.05, 800), 800)
    assert fitted.c == pytest.approx(truth.c, rel=0.02) and fitted.r == pytest.approx(truth.r, rel=0.02)
    with pytest.raises(UserError, match="not below the p = 0 drift"):
        calibrate(1.0, 600, 5.0, 800)


def test_a_constant_controller_injects_p_times_the_sequences():
    class Constant:
        p = 0.02

        def update(self, forgetting: float, step: int) -> float:
            return self.p

    f, injected = run(Plant(0.05, 0.04), Constant(), 400)
    assert injected == pytest.approx(0.02 * 16 * 400) and f > 0
    controller = InjectController(1.0, 0.02)
    run(Plant(0.05, 0.04), controller, 400)
    assert controller.updates == 400 // 25 - 1  # every evaluation but the last, as in the trainer


def test_replay_of_the_measured_sweeps():
    """On the committed reports: the plant predicts the p = 1 % runs it was not fitted on, and reproduces
    both measured sweeps under the rule each ran: the first rule (reports/adaptive/first_rule) and the
    shipped rule (reports/adaptive), which held the budget where the first rule did not."""
    runs = REPORTS / "micro" / "pilots" / "english-19m-4-sizes" / "runs.csv"
    first = compare(runs, REPORTS / "adaptive" / "first_rule" / "adaptive.json")
    shipped = compare(runs, REPORTS / "adaptive" / "adaptive.json")
    assert first["check"]["points"] >= 24 and first["check"]["mean_abs_error"] < 0.2
    # tokens: the shipped rule injects longer at a high p, where the plant over-predicts forgetting (the
    # check above), so its replay injects more than the real sweep did (1.36x against 1.13x)
    for result, rule, tokens in ((first, "measured-F rule", 0.15), (shipped, "shipped rule", 0.25)):
        real, replay = result["arms"]["measured sweep (real)"], result["arms"][rule]
        assert real["runs"] == replay["runs"] == 32
        assert abs(replay["share_held"] - real["share_held"]) <= 0.125  # within 4 of 32 budgets
        assert replay["injected_ratio"] == pytest.approx(real["injected_ratio"], abs=tokens)
    arms, real = shipped["arms"], shipped["arms"]["measured sweep (real)"]
    assert real["share_held"] >= 0.9 > first["arms"]["measured sweep (real)"]["share_held"]
    assert arms["shipped rule"]["ratio_max"] <= 1.0 < arms["measured-F rule"]["ratio_max"]
    # a constant p capped at inject_max cannot hold every budget, even chosen in hindsight
    assert 0.9 <= arms["hindsight constant p"]["share_held"] < 1.0
    assert arms["static plan"]["share_held"] < 0.5  # the plan is cheap because it under-injects
    json.dumps(shipped)  # plain data for closed_loop.json


def test_growth_exponent_is_read_from_the_runs_metrics(tmp_path):
    """Two finetunes whose forgetting grows as t^0.7 (p = 0) and t^0.3 (p = 5 %) up to their best step."""
    for name, p, kappa in (("n_legal_D1_p0_a0_s0", 0.0, 0.7), ("n_legal_D1_p0.05_a0_s0", 0.05, 0.3)):
        run = tmp_path / "finetune" / name
        run.mkdir(parents=True)
        evals = [
            {"kind": "eval", "step": t, "ft_loss": 3.0, "pt_loss": 4.0 + 0.01 * t**kappa}
            for t in range(0, 425, 25)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
        summary = {"inject_fraction": p, "anchor_decay": 0.0, "steps": 400, "forgetting": 0.01 * 400**kappa}
        (run / "summary.json").write_text(json.dumps(summary))
    growth = growth_exponents(tmp_path)
    assert growth["0"]["exponent_median"] == pytest.approx(0.7) and growth["0.05"][
        "exponent_median"
    ] == pytest.approx(0.3)
    assert growth["0"]["first_eval_share_median"] == pytest.approx((25 / 400) ** 0.7)
