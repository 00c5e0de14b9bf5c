"""Seed means for the fit (`--seed-mean`) and the ladder walk (fit on the k smallest sizes, score the next)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dist_forget import cli
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.pipeline import fit_runs, walk_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.laws.table import Runs, seed_means, write_runs_csv
from dist_forget.study import findings as fd
from dist_forget.study.law_sections import ladder_walk_text

SIZES = (1e5, 3e5, 1e6, 3e6)
TRUTH = SyntheticConfig()  # the law the tables below are drawn from


def seeded(seed: int, noise: float = 0.003) -> Runs:
    """A 4-size table drawn from TRUTH with its own noise draw, tagged with `seed`."""
    cfg = SyntheticConfig(sizes=SIZES, tokens=(1e5, 1e6, 1e7), fractions=(0.0, 0.01, 0.05), noise=noise,
                          seed=seed)  # fmt: skip
    runs = synthetic_runs(cfg)
    runs.run_id = [f"{r}-s{seed}" for r in runs.run_id]
    runs.extra["seed"] = [str(seed)] * len(runs)
    return runs


def concat(tables: list[Runs]) -> Runs:
    return Runs(
        domain=np.concatenate([t.domain for t in tables]),
        values={c: np.concatenate([t.values[c] for t in tables]) for c in tables[0].values},
        run_id=[r for t in tables for r in t.run_id],
        source=[s for t in tables for s in t.source],
        extra={c: [x for t in tables for x in t.extra[c]] for c in tables[0].extra},
    )


def with_replicates() -> tuple[Runs, np.ndarray]:
    """Seed 0 everywhere, seeds 1 and 2 at the largest size only; the index of seed 0's replicated rows."""
    s0, s1, s2 = seeded(0), seeded(1), seeded(2)
    top = s0.values["model_params"] == SIZES[-1]
    return concat([s0, s1.subset(top), s2.subset(top)]), np.flatnonzero(top)


def test_seed_mean_averages_exactly_the_replicate_rows_and_the_fit_recovers_the_law():
    runs, top = with_replicates()
    single = seeded(0)
    means, averaged = seed_means(runs, "runs.csv")
    assert len(means) == len(single) and averaged == {
        "wiki": {"points_averaged": len(top), "runs_averaged": 3 * len(top)}
    }
    n_seeds = np.array(means.extra["n_seeds"])
    assert (n_seeds[top] == 3).all() and (np.delete(n_seeds, top) == 1).all()
    for col in ("ft_loss", "pt_loss", "pt_loss_base", "model_params"):
        replicas = np.stack([seeded(s).values[col][top] for s in (0, 1, 2)])
        assert means.values[col][top] == pytest.approx(replicas.mean(axis=0), rel=1e-15)
        assert np.array_equal(np.delete(means.values[col], top), np.delete(single.values[col], top))
    assert means.extra["seed"][top[0]] == "0+1+2" and "mean of 3 seeds" in means.run_id[top[0]]
    fits = fit_runs(means, ["finetune", "forgetting"], FitConfig(bootstrap=0), progress=False)
    for rec in fits:
        truth = TRUTH.finetune if rec["law"] == "finetune" else TRUTH.forgetting
        assert rec["params"]["alpha"] == pytest.approx(truth["alpha"], rel=0.05)
        assert rec["params"]["beta"] == pytest.approx(truth["beta"], rel=0.05)


def test_fit_seed_mean_says_so_in_fit_json_and_report(tmp_path, capsys):
    runs, top = with_replicates()
    write_runs_csv(runs, tmp_path / "runs.csv")
    argv = [
        "fit",
        "--runs",
        str(tmp_path / "runs.csv"),
        "--forms",
        "finetune",
        "--bootstrap",
        "0",
        "--no-plots",
    ]
    assert cli.main([*argv, "--out", str(tmp_path / "means"), "--seed-mean"]) == 0
    meta = json.loads((tmp_path / "means" / "fit.json").read_text())["meta"]
    assert meta["seed_mean"] is True and meta["n_runs"] == len(runs) - 2 * len(top)
    assert meta["seed_mean_points"] == {"wiki": {"points_averaged": len(top), "runs_averaged": 3 * len(top)}}
    assert (
        f"points averaged per domain: wiki {len(top)} from {3 * len(top)} runs"
        in (tmp_path / "means" / "REPORT.md").read_text()
    )
    assert cli.main([*argv, "--out", str(tmp_path / "plain")]) == 0  # default: no key, every run fitted
    assert "seed_mean" not in json.loads((tmp_path / "plain" / "fit.json").read_text())["meta"]
    capsys.readouterr()
    no_seed = synthetic_runs(SyntheticConfig(sizes=SIZES, fractions=(0.0, 0.01)))
    write_runs_csv(no_seed, tmp_path / "no_seed.csv")
    assert (
        cli.main(
            ["fit", "--runs", str(tmp_path / "no_seed.csv"), "--out", str(tmp_path / "x"), "--seed-mean"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--seed-mean needs a seed column" in err and err.count("\n") == 1


def test_ladder_walk_is_exact_on_a_clean_table_and_finds_a_shifted_top_size():
    runs = seeded(0, noise=0.0)
    walk = walk_runs(runs, ["finetune", "forgetting"], FitConfig(bootstrap=0))
    assert [(w["form"], w["k"], w["model_params"]) for w in walk] == [
        (form, k, SIZES[k]) for form in ("finetune", "forgetting") for k in (2, 3)
    ]
    assert all(w["mre"] < 1e-4 for w in walk)
    assert (
        walk[1]["sizes_fitted"] == list(SIZES[:3])
        and walk[1]["n_test"] == 9
        and walk[1]["n_seeds"] == [1] * 9
    )
    top = runs.values["model_params"] == SIZES[-1]
    for col in ("ft_loss", "pt_loss"):
        runs.values[col][top] *= 1.05  # the law breaks at the last rung
    shifted = {
        (w["form"], w["k"]): w for w in walk_runs(runs, ["finetune", "forgetting"], FitConfig(bootstrap=0))
    }
    for form in ("finetune", "forgetting"):
        assert shifted[(form, 2)]["mre"] < 1e-4  # fitted on 2 sizes, scored on the third: untouched
        assert shifted[(form, 3)]["mre"] == pytest.approx(0.05 / 1.05, abs=1e-4)


def walked(domain: str, form: str, law: str, k: int, mre: float, n_seeds: list[int]) -> dict:
    return {"domain": domain, "law": law, "form": form, "k": k, "sizes_fitted": list(SIZES[:k]),
            "model_params": SIZES[k], "mre": mre, "max_re": 2 * mre, "n_seeds": n_seeds}  # fmt: skip


def test_ladder_summary_picks_the_best_mean_form_and_states_the_floor_then_renders():
    walk = [
        walked("a", "finetune", "finetune", 3, 0.02, [1, 3]),
        walked("b", "finetune", "finetune", 3, 0.04, [1, 1]),
        walked("a", "chinchilla", "finetune", 3, 0.01, [1, 3]),
        walked("b", "chinchilla", "finetune", 3, 0.06, [1, 1]),  # mean 3.5 % > finetune's 3 %
        walked("a", "forgetting", "forgetting", 2, 0.10, [1]),  # walked on one domain only: not compared
    ]
    noise = [{"model_params": SIZES[3], "ft_rel_std": 0.01, "pt_rel_std": 0.02},
             {"model_params": SIZES[3], "ft_rel_std": 0.03, "pt_rel_std": 0.02}]  # fmt: skip
    out = fd.ladder_summary(walk, noise)
    (ft,) = out["summary"]
    floor = math.sqrt(2 / math.pi) * 0.02 * np.mean([(1 + 1 / math.sqrt(3)) / 2, 1.0])
    assert ft["best_form"] == "finetune" and ft["mre"] == pytest.approx(0.03)
    assert ft["floor"] == pytest.approx(floor) and ft["ratio_to_floor"] == pytest.approx(0.03 / floor)
    assert out["goal"]["finetune"]["reached"] is False  # 0.03 / 0.0142 > 1.5
    text = "\n".join(ladder_walk_text(out))
    assert "## Held-out error as the fit sees more sizes" in text
    assert (
        f"| 3,000,000 | 100,000, 300,000, 1,000,000 | finetune | 3.00 % | {100 * floor:.2f} % | {0.03 / floor:.2f} |"
        in text
    )
    assert "not reached" in text
    # no seeds at the held-out size: the floor and the goal are not measured, and the report says so
    unseeded = fd.ladder_summary(walk, [])
    assert unseeded["goal"]["finetune"]["reached"] is None
    assert "no seed floor measured at this size" in "\n".join(ladder_walk_text(unseeded))


def test_study_report_seed_mean_fits_the_means_and_walks_against_the_floor_at_the_top(tmp_path):
    """Three seeds at the largest size: the report fits their means, says so, and the walk's last rung is
    read against the floor those seeds measure (divided by √3: each held-out point is a mean of 3)."""
    from dist_forget.study.report import report
    from tests.unit.test_study_protocol import make_sweep

    runs, top = with_replicates()
    sweep = make_sweep(tmp_path / "sweep", losses=(4.5, 4.3, 4.0, 3.8))
    write_runs_csv(runs, sweep / "runs.csv")
    assert report(sweep, tmp_path / "out", forms=("finetune", "forgetting"), bootstrap=0, seed_mean=True) == 0
    meta = json.loads((tmp_path / "out" / "fit.json").read_text())["meta"]
    assert meta["seed_mean"] is True and meta["seed_mean_points"]["wiki"]["points_averaged"] == len(top)
    facts = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert len(facts["noise_floor"]) == len(top)  # the findings keep every seed's run
    last = [s for s in facts["ladder_walk"]["summary"] if s["model_params"] == SIZES[-1]]
    assert {s["law"] for s in last} == {"finetune", "forgetting"}
    for s in last:
        assert s["floor"] == pytest.approx(math.sqrt(2 / math.pi) * s["seed_rel_std"] / math.sqrt(3))
        assert facts["ladder_walk"]["goal"][s["law"]]["reached"] in (True, False)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert (
        "Fitted and scored on seed means" in text and "## Held-out error as the fit sees more sizes" in text
    )
