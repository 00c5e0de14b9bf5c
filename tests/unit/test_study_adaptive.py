"""The forgetting-budget comparison: the shipped sweep's arms and the report on run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_forget.cli import main as cli_main
from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.errors import UserError
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.models.ladder import shape_of
from dist_forget.study import adaptive as study
from dist_forget.sweep.config import SweepConfig
from dist_forget.sweep.grid import arm_of, expand

ROOT = Path(__file__).resolve().parents[2]
# a forgetting law of the micro ladder's scale (1-3 nats/token at p = 0 on this grid), so every budget needs p > 0
LAW = {"A": 6.0, "alpha": 0.4, "beta": 0.3, "B": 1000.0}
CONFIG = ROOT / "configs/sweep/adaptive.yaml"


@pytest.fixture(scope="module")
def fit_json(tmp_path_factory) -> Path:
    """A forgetting law fitted on synthetic runs of the micro study's three domains (no bootstrap)."""
    syn = SyntheticConfig(domains=("code", "legal", "medical"), fractions=(0.0, 0.01, 0.05),
                          sizes=(1e4, 3e4, 1e5, 3e5), tokens=(1e4, 3e4, 1e5), forgetting=LAW)  # fmt: skip
    runs = synthetic_runs(syn)
    fits = fit_runs(runs, ["forgetting"], FitConfig(bootstrap=0), progress=False)
    path = tmp_path_factory.mktemp("fit") / "fit.json"
    path.write_text(json.dumps({"fits": fits}))
    return path


# forgetting at p = 0 of the baseline's runs by (size, domain): the micro study's range (reports/micro)
BASE_F = {"cpu-0.015m": 2.7, "cpu-0.03m": 2.2, "cpu-0.1m": 1.86, "cpu-0.3m": 0.88}


def make_baseline(root: Path) -> Path:
    """The micro sweep's p = 0 runs as the adaptive sweep reads them: finetune/<name>/summary.json."""
    for size, f in BASE_F.items():
        for domain, d in (("legal", 15000), ("legal", 45000), ("medical", 25000), ("medical", 45000)):
            folder = root / "finetune" / f"{size}_{domain}_D{d}_p0_a0_s0"
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"pt_loss": 3.5 + f, "pt_loss_base": 3.5}))
    return root


def _expand(tmp_path: Path, *overrides: str) -> list:
    baseline = tmp_path / "micro"
    if not baseline.exists():
        make_baseline(baseline)
    return expand(load_config(SweepConfig, CONFIG, [f"out_dir={tmp_path / 'sweep'}",
                                                    f"adaptive.baseline={baseline}", *overrides]))  # fmt: skip


def _arg(argv: list[str], key: str) -> str:
    """The value the run gets: the last `key=` on its command line."""
    return [a.split("=", 1)[1] for a in argv if a.startswith(key + "=")][-1]


def test_the_shipped_sweep_has_two_arms_per_budget_taken_from_the_baseline(tmp_path, fit_json):
    points = _expand(tmp_path, f"adaptive.prior_fit={fit_json}")
    assert all(p.stage == "finetune" for p in points)
    # 4 sizes x (legal, medical) x 2 D x 2 budgets x (adaptive, plan); p = 0 is the baseline's, not rerun
    assert len(points) == 4 * 2 * 2 * 2 * 2 == len({p.name for p in points})
    assert not any("_p0_" in p.name for p in points)
    # ε = 0.7 and 0.5 of the baseline's p = 0 forgetting at that point, 3 significant digits
    auto = next(p for p in points if p.name == "cpu-0.1m_legal_D45000_pauto_a0_s0-eps1.3")
    assert (
        _arg(auto.argv, "data.inject_fraction") == "auto" and _arg(auto.argv, "data.max_forgetting") == "1.3"
    )
    assert {p.name for p in points if p.name.startswith("cpu-0.3m_medical_D25000_pauto")} == {
        "cpu-0.3m_medical_D25000_pauto_a0_s0-eps0.616",
        "cpu-0.3m_medical_D25000_pauto_a0_s0-eps0.44",
    }
    assert (
        _arg(auto.argv, "data.inject_prior") == str(fit_json) and _arg(auto.argv, "data.inject_max") == "0.2"
    )
    assert _arg(auto.argv, "model.init_from") == "work/sweeps/micro/pretrain/cpu-0.1m"
    assert _arg(auto.argv, "optim.lr") == "4.0e-4"  # the micro ladder's lr for that size
    assert _arg(auto.argv, "train.stop_sustained") == "true"  # the micro protocol's early stop
    # the static arm runs the planner's constant p for the same ε, capped where the controller is
    law = next(f["params"] for f in json.loads(fit_json.read_text())["fits"] if f["domain"] == "legal")
    n = shape_of("cpu-0.1m").non_embedding_params()
    by_eps = {}
    for eps in (1.3, 0.93):
        twin = next(p for p in points if p.name == f"cpu-0.1m_legal_D45000_pplan_a0_s0-eps{eps:g}")
        # the closed form of the forgetting law (laws/plan.py), from the fitted parameters
        expected = ((law["A"] * 45000 ** law["beta"] / eps) ** (1 / law["alpha"]) / n - 1) / law["B"]
        by_eps[eps] = float(_arg(twin.argv, "data.inject_fraction"))
        assert by_eps[eps] == pytest.approx(min(expected, 0.2), rel=1e-12)
        assert "data.max_forgetting" not in " ".join(twin.argv)  # a constant-p run: no budget of its own
    assert by_eps[0.93] > by_eps[1.3] > 0  # a tighter budget needs more injection
    for point in points:  # every run's config is valid as the finetune command would load it
        i = point.argv.index("--config")
        cfg = load_config(RunConfig, ROOT / point.argv[i + 1], [a for a in point.argv[i + 2 :] if "=" in a])
        assert cfg.data.adaptive == ("_pauto_" in point.name)
        assert arm_of(point.name)[0] in ("auto", "plan")


def test_budgets_in_nats_keep_their_names(tmp_path, fit_json):
    points = _expand(tmp_path, f"adaptive.prior_fit={fit_json}", "grid.max_forgetting_share=[]",
                     "grid.max_forgetting=[0.5, 1.0]", "grid.inject_fraction=[0.0, auto]")  # fmt: skip
    names = {p.name for p in points}
    assert "cpu-0.03m_legal_D15000_p0_a0_s0" in names  # p = 0: the micro study's name, unchanged
    assert {"cpu-0.1m_legal_D45000_pauto_a0_s0-eps0.5", "cpu-0.1m_legal_D45000_pplan_a0_s0-eps1"} <= names


def test_a_missing_prior_fit_budget_or_baseline_fails_in_one_line(tmp_path, fit_json):
    with pytest.raises(UserError, match=r"^sweep adaptive.prior_fit: .*nope.json: no such fit file") as exc:
        _expand(tmp_path, f"adaptive.prior_fit={tmp_path / 'nope.json'}")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="inject_fraction auto needs max_forgetting"):
        _expand(tmp_path, f"adaptive.prior_fit={fit_json}", "grid.max_forgetting_share=[]")
    with pytest.raises(UserError, match=r"max_forgetting_share = \[1.5\]: each share .* must be in \(0, 1\)"):
        _expand(tmp_path, f"adaptive.prior_fit={fit_json}", "grid.max_forgetting_share=[1.5]")
    with pytest.raises(UserError, match="static_arm needs adaptive.prior_fit"):
        _expand(tmp_path, "adaptive.prior_fit=''")
    with pytest.raises(UserError, match="domain 'bio' is not in the fit"):
        _expand(tmp_path, f"adaptive.prior_fit={fit_json}", "finetune.domains={bio: x, legal: y, medical: z}",
                "grid.domains=[bio]", "grid.max_forgetting=[0.5]", "grid.max_forgetting_share=[]",
                "extra_grids=[]")  # fmt: skip
    with pytest.raises(UserError, match="max_forgetting_share needs adaptive.baseline"):
        _expand(tmp_path, f"adaptive.prior_fit={fit_json}", "adaptive.baseline=''")
    with pytest.raises(UserError, match=r"adaptive.baseline: .*cpu-0.015m_legal_D45000_p0_a0_s0/summary.json "
                                        r"is missing; finish that p = 0 run first") as exc:  # fmt: skip
        _expand(tmp_path, f"adaptive.prior_fit={fit_json}", f"adaptive.baseline={tmp_path / 'empty'}")
    assert "\n" not in str(exc.value)


SEQ_LEN = 128


def _run(sweep: Path, name: str, forgetting: float, ft: float, injected: int, p: float) -> None:
    """A finished finetune folder as the trainer leaves it (summary.json, report.json, run_config.json)."""
    folder = sweep / "finetune" / name
    folder.mkdir(parents=True)
    summary = {"domain": "code", "model_params": 30_000, "target_tokens": 15_000, "inject_fraction": p,
               "anchor_decay": 0.0, "ft_loss": ft, "pt_loss": 4.0 + forgetting, "pt_loss_base": 4.0,
               "ft_loss_base": 5.0, "inject_fraction_final": p, "forgetting": forgetting, "steps": 100}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "report.json").write_text(
        json.dumps({"best_step": 100, "pretrain_sequences_at_best": injected})
    )
    cfg = {"data": {"target": str(sweep / "shards")}, "train": {"batch_size": 16, "eval_sequences": 128}}
    (folder / "run_config.json").write_text(json.dumps(cfg))


def make_sweep(root: Path, auto_forgetting=(0.45, 0.9), auto_ft=3.0, auto_injected=(30, 10)) -> Path:
    """Two budgets: the adaptive runs, their static-plan twins (held, more injection), one p = 0 run."""
    (root / "shards").mkdir(parents=True)
    (root / "shards" / "manifest.json").write_text(json.dumps({"seq_len": SEQ_LEN}))
    base = "size_code_D15000"
    for eps, f_auto, inj, plan_inj in zip((0.5, 1.0), auto_forgetting, auto_injected, (60, 20)):
        _run(root, f"{base}_pauto_a0_s0-eps{eps:g}", f_auto, auto_ft, inj, inj / 1600)
        _run(root, f"{base}_pplan_a0_s0-eps{eps:g}", 0.8 * eps, 3.0, plan_inj, plan_inj / 1600)
    _run(root, f"{base}_p0_a0_s0", 0.75, 3.01, 0, 0.0)  # holds ε = 1.0, not 0.5
    _run(root, f"{base}_p0.01_a0_s0", 0.3, 3.0, 16, 0.01)  # another constant p: not an arm here
    return root


def test_the_report_groups_arms_per_budget_and_meets_the_goal(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    assert cli_main(["study", "adaptive", "--sweep", str(sweep), "--out", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "adaptive.json").read_text())
    rows = {(r["max_forgetting"], r["arm"]): r for r in data["rows"]}
    assert sorted(rows) == [
        (0.5, "auto"),
        (0.5, "p0"),
        (0.5, "plan"),
        (1.0, "auto"),
        (1.0, "p0"),
        (1.0, "plan"),
    ]
    assert rows[(0.5, "p0")]["share_held"] == 0.0 and rows[(1.0, "p0")]["share_held"] == 1.0
    assert rows[(0.5, "auto")]["injected_tokens_mean"] == 30 * SEQ_LEN
    assert rows[(1.0, "plan")]["injected_tokens_mean"] == 20 * SEQ_LEN
    goal = data["goal"]
    assert goal["share_held"] == 1.0 and goal["pairs"] == 2
    assert goal["injected_ratio"] == pytest.approx(40 / 80)
    assert goal["injected_tokens_mean"] == 20 * SEQ_LEN and goal["plan_injected_tokens_mean"] == 40 * SEQ_LEN
    assert goal["ft_change_mean"] == 0.0 and goal["met"] is True
    text = (tmp_path / "out" / "ADAPTIVE.md").read_text()
    assert (
        "goal met: yes" in text
        and "| code | 30,000 | 15,000 | 0.5 | adaptive | 1 | 100.00 % | 3,840 |" in text
    )
    assert (tmp_path / "out" / "adaptive.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "change, failed",
    [
        ({"auto_forgetting": (0.55, 0.9)}, "budget_held"),  # one of two over its budget: 50 % < 90 %
        ({"auto_injected": (70, 30)}, "fewer_injected"),  # 100 sequences against the plan's 80
        ({"auto_ft": 3.0 * 1.006}, "target_loss_kept"),  # 0.6 % worse than the plan's target loss
    ],
)
def test_each_part_of_the_goal_fails_alone(tmp_path, change, failed):
    out = study.compare(study.read_runs(make_sweep(tmp_path, **change)))["goal"]
    assert out["met"] is False and [k for k, v in out["checks"].items() if not v] == [failed]


def test_the_p0_arm_comes_from_the_baseline_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    base = tmp_path / "micro"
    (base / "finetune").mkdir(parents=True)
    p0 = "size_code_D15000_p0_a0_s0"
    # the sweep's own p = 0 run moves to the baseline
    (sweep / "finetune" / p0).rename(base / "finetune" / p0)
    _run(base, "size_code_D45000_p0_a0_s0", 2.0, 3.0, 0, 0.0)  # a point the sweep does not compare
    summary = base / "finetune" / "size_code_D45000_p0_a0_s0" / "summary.json"
    summary.write_text(summary.read_text().replace('"target_tokens": 15000', '"target_tokens": 45000'))
    without = study.compare(study.read_runs(sweep))["rows"]
    assert {r["arm"] for r in without} == {"auto", "plan"}
    out = tmp_path / "out"
    args = ["study", "adaptive", "--sweep", str(sweep), "--baseline", str(base), "--out", str(out)]
    assert cli_main(args) == 0
    rows = {
        (r["max_forgetting"], r["arm"]): r for r in json.loads((out / "adaptive.json").read_text())["rows"]
    }
    assert rows[(0.5, "p0")]["run_names"] == [p0]  # judged against both budgets
    assert rows[(0.5, "p0")]["share_held"] == 0.0 and rows[(1.0, "p0")]["share_held"] == 1.0
    assert all(r["target_tokens"] == 15000 for r in rows.values())
    with pytest.raises(UserError, match=r"^--baseline .*nowhere: no finetune/ folder"):
        study.adaptive(sweep, out, tmp_path / "nowhere")


def test_a_sweep_without_adaptive_runs_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "shards").mkdir(parents=True)
    _run(sweep, "size_code_D15000_p0_a0_s0", 0.7, 3.0, 0, 0.0)
    with pytest.raises(UserError, match="no finished run at inject_fraction auto"):
        study.adaptive(sweep, tmp_path / "out")
