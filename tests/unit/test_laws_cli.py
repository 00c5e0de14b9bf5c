"""`dist-forget fit` / `plan` end to end: fit.json contract, REPORT.md, plots, holdout, MLflow, bad input."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from dist_forget import cli
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.laws.table import read_mlflow, write_runs_csv

SCHEMA = {"law", "form", "domain", "params", "ci95", "mre", "max_re", "r2", "n_runs", "holdout"}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    path = tmp_path_factory.mktemp("laws") / "runs.csv"
    write_runs_csv(
        synthetic_runs(SyntheticConfig(domains=("wiki", "math"), fractions=(0.0, 0.01, 0.05), outliers=0.05)),
        path,
    )
    return path


def test_fit_writes_the_contract_report_and_plots_then_plan_reads_it(table, tmp_path, capsys):
    out = tmp_path / "fit"
    assert (
        cli.main(
            [
                "fit",
                "--runs",
                str(table),
                "--out",
                str(out),
                "--bootstrap",
                "60",
                "--holdout",
                "largest",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    fits = json.loads((out / "fit.json").read_text())["fits"]
    assert {(f["domain"], f["form"]) for f in fits} == {
        (d, f) for d in ("wiki", "math") for f in ("finetune", "forgetting")
    }
    for rec in fits:
        assert SCHEMA <= set(rec)
        assert set(rec["params"]) == set(rec["ci95"]) and rec["n_runs"] == 75
        assert all(lo <= rec["params"][k] <= hi for k, (lo, hi) in rec["ci95"].items())
        assert rec["holdout"]["mode"] == "largest" and rec["holdout"]["held_out_model_params"] == 1e7
        assert rec["holdout"]["n_test"] == 15 and rec["holdout"]["mre"] < 0.05
        assert len(rec["residuals"]) == 75
    report = (out / "REPORT.md").read_text()
    assert "held-out MRE" in report and "forgetting" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "predicted_vs_observed.png" in pngs and "forgetting_vs_p_wiki_forgetting.png" in pngs
    assert "loss_vs_D_math_finetune.png" in pngs
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    capsys.readouterr()
    assert (
        cli.main(
            [
                "plan",
                "--fit",
                str(out / "fit.json"),
                "--domain",
                "wiki",
                "--model-params",
                "3e6",
                "--target-tokens",
                "1e6",
                "--max-forgetting",
                "0.05",
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert list(result)[:5] == [
        "inject_fraction",
        "ci95",
        "predicted_forgetting",
        "predicted_ft_loss",
        "extrapolated",
    ]
    assert result["inject_fraction"] > 0 and result["extrapolated"] is False


def test_leave_one_size_out_reports_every_size(table):
    from dist_forget.laws.table import read_runs

    runs = read_runs(table).for_domain("wiki")
    rec = fit_runs(runs, ["finetune"], FitConfig(bootstrap=0), "leave-one-size-out", progress=False)[0]
    held = rec["holdout"]
    assert [s["model_params"] for s in held["per_size"]] == [1e5, 3e5, 1e6, 3e6, 1e7]
    assert held["n_test"] == 75 and held["mre"] >= rec["mre"] * 0.5


def test_compares_alternative_forms(table, tmp_path):
    from dist_forget.laws.table import read_runs

    runs = read_runs(table).for_domain("math")
    recs = fit_runs(
        runs,
        ["finetune", "chinchilla", "finetune-eff-data", "finetune-eff-params"],
        FitConfig(bootstrap=0),
        "largest",
        progress=False,
    )
    assert [r["form"] for r in recs] == ["finetune", "chinchilla", "finetune-eff-data", "finetune-eff-params"]
    assert all(r["holdout"]["mre"] < 0.1 for r in recs)


def test_reads_an_mlflow_experiment(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts in ./mlruns: here, not in the repository
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("study")
    for i in range(2):
        summary = {
            "domain": "wiki",
            "model_params": 1e6 * (i + 1),
            "target_tokens": 3e5,
            "inject_fraction": 0.01,
            "anchor_decay": 0.0,
            "ft_loss": 2.5,
            "pt_loss": 3.1,
            "pt_loss_base": 3.0,
            "steps": 10,
            "run_id": f"r{i}",
        }
        with mlflow.start_run():
            if i == 0:
                mlflow.log_dict(summary, "summary.json")
            else:  # no artifact: the tracker's metrics and params stand in
                mlflow.log_params({"domain": "wiki", "run_id": "r1"})
                mlflow.log_metrics({k: v for k, v in summary.items() if isinstance(v, float | int)})
    runs = read_mlflow("study")
    assert sorted(runs.run_id) == ["r0", "r1"] and sorted(runs.values["model_params"]) == [1e6, 2e6]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["fit", "--out", "X"], "give exactly one of --runs PATH"),
        (["fit", "--runs", "RUNS", "--out", "X", "--forms", "nope"], "law form 'nope' is unknown"),
        (["fit", "--runs", "RUNS", "--out", "X", "--delta", "0"], "--delta 0.0 must be > 0"),
        (["fit", "--runs", "RUNS", "--out", "X", "--domains", "code"], "--domains 'code' has no runs"),
        (
            [
                "plan",
                "--fit",
                "X/fit.json",
                "--domain",
                "wiki",
                "--model-params",
                "1e6",
                "--target-tokens",
                "1e6",
                "--max-forgetting",
                "0.1",
            ],
            "no such fit file",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(table, tmp_path, capsys, argv, message):
    argv = [a.replace("RUNS", str(table)).replace("X", str(tmp_path / "o")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_holdout_needs_enough_sizes():
    from dist_forget.errors import UserError

    runs = synthetic_runs(SyntheticConfig(sizes=(1e5, 1e6), fractions=(0.0, 0.01)))
    with pytest.raises(UserError, match="holdout needs one more model size than the law"):
        fit_runs(runs, ["finetune"], FitConfig(bootstrap=0), "largest", progress=False)


def test_the_fitter_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, dist_forget.laws.commands, dist_forget.laws.report; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.skipif(platform.machine() != "x86_64" or "avx2" not in Path("/proc/cpuinfo").read_text(),
                    reason="OpenBLAS's Haswell kernels need an x86-64 CPU with AVX2")  # fmt: skip
def test_fit_json_says_which_openblas_kernels_fitted_it(table, tmp_path):
    """A fit's bits follow the kernels OpenBLAS picked for the CPU: fit.json and REPORT.md name them, and
    OPENBLAS_CORETYPE, read when OpenBLAS loads, is what they say."""
    out = tmp_path / "fit"
    env = {**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    argv = [sys.executable, "-m", "dist_forget.cli", "fit", "--runs", str(table), "--out", str(out),
            "--bootstrap", "0", "--no-plots"]  # fmt: skip
    subprocess.run(argv, env=env, check=True, capture_output=True)
    assert json.loads((out / "fit.json").read_text())["meta"]["blas_kernels"] == ["Haswell"]
    assert "Fitted on OpenBLAS's Haswell kernels" in (out / "REPORT.md").read_text()
