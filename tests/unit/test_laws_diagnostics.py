"""Fit diagnostics: each warning fires on a synthetic table built to trigger it, and not on a clean one."""

from __future__ import annotations

import numpy as np
import pytest

from dist_forget.laws.fit import FitConfig
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs

CFG = FitConfig(bootstrap=60, workers=1)


def _codes(records, form: str) -> dict[str, list[str]]:
    rec = next(r for r in records if r["form"] == form)
    return {w["code"]: w["params"] for w in rec["warnings"]}


def test_a_clean_table_from_known_laws_has_no_warning():
    records = fit_runs(
        synthetic_runs(SyntheticConfig()), ["finetune", "forgetting"], CFG, "largest", progress=False
    )
    assert all(r["warnings"] == [] for r in records), [r["warnings"] for r in records]


def test_absent_size_effect_is_exponent_near_zero():
    runs = synthetic_runs(SyntheticConfig(forgetting={"A": 2.0, "alpha": 0.0, "beta": 0.3, "B": 1000.0}))
    codes = _codes(fit_runs(runs, ["forgetting"], CFG, progress=False), "forgetting")
    assert "exponent_near_zero" in codes and codes["exponent_near_zero"] == ["alpha"]


def test_no_irreducible_loss_puts_e_on_its_bound():
    runs = synthetic_runs(SyntheticConfig(finetune={"E": 1e-20, "A": 200.0, "alpha": 0.3, "beta": 0.2}))
    codes = _codes(fit_runs(runs, ["finetune"], CFG, progress=False), "finetune")
    assert codes.get("param_at_bound") == ["E"]


def test_injection_too_small_to_act_leaves_b_undetermined():
    """B*p << 1 at every p: the runs cannot tell B = 10 from B = 1e4."""
    runs = synthetic_runs(SyntheticConfig(fractions=(0.0, 1e-6, 3e-6), noise=0.01))
    codes = _codes(fit_runs(runs, ["forgetting"], CFG, progress=False), "forgetting")
    assert "B" in codes.get("ci_too_wide", []) + codes.get("param_at_bound", [])


def test_two_sizes_cannot_identify_alpha():
    runs = synthetic_runs(SyntheticConfig(sizes=(1e5, 1e6)))
    for form in ("finetune", "forgetting"):
        assert _codes(fit_runs(runs, [form], CFG, progress=False), form)["too_few_sizes"] == ["alpha"]


def test_a_law_that_breaks_at_the_held_out_size_is_flagged():
    runs = synthetic_runs(SyntheticConfig(noise=0.001))
    largest = runs.values["model_params"] == runs.values["model_params"].max()
    runs.values["pt_loss"] = np.where(largest, runs.values["pt_loss"] * 1.2, runs.values["pt_loss"])
    records = fit_runs(runs, ["forgetting"], CFG, "largest", progress=False)
    assert "holdout_worse_than_noise" in _codes(records, "forgetting")


@pytest.mark.parametrize("flag", [[], ["--holdout", "largest"]])
def test_fit_cli_prints_warnings_and_report_lists_them(tmp_path, capsys, flag):
    import json

    from dist_forget import cli

    runs = synthetic_runs(SyntheticConfig(sizes=(1e5, 1e6)))
    rows = [
        "domain,model_params,target_tokens,inject_fraction,anchor_decay,ft_loss,pt_loss,pt_loss_base,steps,run_id"
    ]
    v = runs.values
    rows += [
        f"wiki,{v['model_params'][i]},{v['target_tokens'][i]},{v['inject_fraction'][i]},0,{v['ft_loss'][i]},"
        f"{v['pt_loss'][i]},{v['pt_loss_base'][i]},10,r{i}"
        for i in range(len(runs))
    ]
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    if flag:  # two sizes leave one for the fit: the holdout refuses with its own one-line error
        assert cli.main(["fit", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "f"), *flag,
                         "--bootstrap", "20", "--no-plots"]) == 2  # fmt: skip
        return
    assert cli.main(["fit", "--runs", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "f"),
                     "--bootstrap", "20", "--no-plots"]) == 0  # fmt: skip
    assert "warning too_few_sizes" in capsys.readouterr().out
    fit = json.loads((tmp_path / "f" / "fit.json").read_text())
    assert all(any(w["code"] == "too_few_sizes" for w in r["warnings"]) for r in fit["fits"])
    assert "**warning** too_few_sizes" in (tmp_path / "f" / "REPORT.md").read_text()
