"""The study report: paired findings on hand-made runs, and the whole report on runs drawn from known laws."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dist_forget.errors import UserError
from dist_forget.laws.fit import FitConfig
from dist_forget.laws.forms import get_form
from dist_forget.laws.pipeline import walk_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.laws.table import read_runs, seed_means, write_runs_csv
from dist_forget.numfmt import json_finite, pct
from dist_forget.study import findings as fd
from dist_forget.study.law_sections import heldout_rows, ladder_walk_text
from dist_forget.study.report import _findings_text, _slice_runs, report
from tests.unit.test_study_protocol import make_sweep


def run(n, d, p=0.0, a=0.0, seed=0, ft=3.0, f=0.5, domain="code"):
    name = f"{n}_{domain}_D{d}_p{p:g}_a{a:g}_s{seed}"
    return fd.Run(name, domain, n, d, p, a, seed, ft, 5.0 + f, 5.0)


def test_trend_reads_endpoints_of_each_series():
    runs = [
        run(1e4, 1e4, f=0.8),
        run(3e4, 1e4, f=0.6),
        run(1e5, 1e4, f=0.4),  # shrinks with N
        run(1e4, 1e5, f=0.9),
        run(1e5, 1e5, f=1.0),
    ]  # grows with N
    t = fd.trend(runs, "n", decreasing=True)
    assert t["n_series"] == 2 and t["share_agreeing"] == 0.5 and t["verdict"] == "mixed"
    assert t["mean_ratio_last_first"] == pytest.approx((0.4 / 0.8 + 1.0 / 0.9) / 2)
    assert t["series"][0]["points"] == pytest.approx({1e4: 0.8, 3e4: 0.6, 1e5: 0.4})


def test_injection_pairs_only_runs_that_differ_in_p():
    runs = [
        run(1e4, 1e4, f=0.8, ft=3.0),
        run(1e4, 1e4, p=0.01, f=0.2, ft=3.03),
        run(1e4, 1e4, p=0.01, seed=1, f=0.1),  # no p = 0 partner with seed 1: not paired
        run(1e4, 1e4, a=10.0, f=0.3),
    ]
    e = fd.injection_effect(runs, 0.01)
    assert e["n_pairs"] == 1
    assert e["forgetting_removed_mean"] == pytest.approx(0.75)
    assert e["ft_change_mean"] == pytest.approx(0.01)


def test_anchored_run_meets_the_injection_run_with_the_closest_target_loss():
    runs = [
        run(1e4, 1e4, ft=3.00, f=0.8),
        run(1e4, 1e4, p=0.01, ft=3.10, f=0.5),
        run(1e4, 1e4, p=0.05, ft=3.30, f=0.2),
        run(1e4, 1e4, a=10.0, ft=3.12, f=0.4),
    ]
    pairs = fd.anchored_vs_injection(runs)["pairs"]
    assert len(pairs) == 1 and pairs[0]["rival_p"] == 0.01
    assert pairs[0]["forgetting_diff"] == pytest.approx(-0.1)
    assert fd.anchor_effect(runs)[10.0]["forgetting_removed_mean"] == pytest.approx(0.5)


def test_noise_floor_and_identity_check():
    fts = [3.0, 3.1, 3.2]
    runs = [run(1e4, 1e4, p=0.01, seed=s, ft=ft) for s, ft in enumerate(fts)] + [run(1e4, 1e4, ft=3.0)]
    (row,) = fd.noise_floor(runs)
    assert row["seeds"] == [0, 1, 2]
    assert row["ft_rel_std"] == pytest.approx(np.std(fts, ddof=1) / np.mean(fts))
    assert fd.same_as_p0(runs, 0.01)[0]["ft_diff"] == pytest.approx(0.0)


def test_report_on_runs_from_known_laws_states_the_findings(tmp_path):
    cfg = SyntheticConfig(
        sizes=(1e5, 3e5, 1e6, 3e6),
        tokens=(1e5, 1e6, 1e7),
        fractions=(0.0, 0.01, 0.05),
        domains=("code", "legal"),
        noise=0.001,
    )
    sweep = make_sweep(tmp_path / "sweep")  # run files that meet the protocol
    write_runs_csv(synthetic_runs(cfg), sweep / "runs.csv")
    out = tmp_path / "report"
    assert report(sweep, out, forms=("finetune", "forgetting"), bootstrap=20) == 0
    text = (out / "REPORT.md").read_text()
    # the generating forgetting law has alpha = 0.4, beta = 0.3, B = 1000: all three findings hold
    assert "Forgetting shrinks with model size — holds" in text
    assert "Forgetting grows with target data D — holds" in text
    assert "p = 1 % removes most forgetting — holds" in text
    fits = json.loads((out / "fit.json").read_text())["fits"]
    assert {f["form"] for f in fits} == {"finetune", "forgetting"}
    assert all(f["holdout"]["mre"] < 0.01 for f in fits)  # noise is 0.1 %: the held-out size is predicted
    facts = json.loads((out / "findings.json").read_text())
    assert facts["protocol"]["met"] is True and "## Protocol (checked in the run data)" in text
    # the ladder's data is named where the report says what was pretrained
    assert "Pretrained ladder (from scratch on `english-xl`, 100,000,000 unique training tokens):" in text
    assert (
        "| ladder on fresh tokens | passes over the unique pretraining tokens 0.01, 0.02, 0.07 | ≤ 1 | met |"
        in text
    )
    removed = facts["injection"]["0.01"]["forgetting_removed_mean"]
    assert removed == pytest.approx(1 - 11**-0.4, abs=0.02)  # 1 - (1 + B p)^-alpha
    assert (out / "runs.csv").read_text() == (sweep / "runs.csv").read_text()
    assert (out / "study_forgetting_vs_D.png").stat().st_size > 1000
    # forgetting ~ N^-0.4 at p = 0: the same local exponent at every step of every (domain, D) series, up to
    # the 0.1 % noise on the losses (~1 % on forgetting)
    table = text.split("## Forgetting's local exponent in N")[1].split("\n\n")[2].splitlines()
    assert table[0] == "| domain | D | 100,000 → 300,000 | 300,000 → 1,000,000 | 1,000,000 → 3,000,000 |"
    cells = [float(c) for row in table[2:] for c in row.strip("|").split("|")[2:]]
    assert len(cells) == 2 * 3 * 3 and cells == pytest.approx([-0.4] * 18, abs=0.05)
    # every form's held-out error per domain at each rung of the walk, as findings.json records it
    walk = {(w["form"], w["domain"], w["model_params"]): w["mre"] for w in facts["ladder_walk"]["records"]}
    assert "| forgetting form | domain | 1,000,000 | 3,000,000 |" in text
    assert (
        f"| forgetting | legal | {pct(walk['forgetting', 'legal', 1e6])} | {pct(walk['forgetting', 'legal', 3e6])} |"
        in text
    )
    (out / "NOTES.md").write_text("Why the numbers look like this.\n")
    (out / "stale.png").write_text("from an older report")
    report(sweep, out, forms=("finetune",), bootstrap=0)
    assert "Why the numbers look like this." in (out / "REPORT.md").read_text()  # the notes survive a rerun
    assert (out / "NOTES.md").is_file() and not (out / "stale.png").exists()


def test_findings_on_runs_off_the_protocol_carry_no_verdict(tmp_path):
    cfg = SyntheticConfig(sizes=(1e5, 3e5, 1e6), tokens=(1e5, 1e6), fractions=(0.0, 0.01), noise=0.001)
    sweep = make_sweep(tmp_path / "sweep", injected=2)  # p = 1 % injects 2 sequences: injection cannot act
    write_runs_csv(synthetic_runs(cfg), sweep / "runs.csv")
    report(sweep, tmp_path / "out", forms=("finetune", "forgetting"), bootstrap=0)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "p = 1 % removes most forgetting — protocol not met (the runs alone would say: holds)" in text
    assert "Forgetting shrinks with model size — holds" in text  # not undermined by the injection check
    facts = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert facts["protocol"]["failed"] == ["injection_acts"] and facts["protocol"]["met"] is False


def test_forms_these_runs_cannot_identify_are_left_out_and_said_so(tmp_path, capsys):
    """No Anchored AdamW runs and no ft_loss_base column: the default forms that need them are skipped."""
    cfg = SyntheticConfig(sizes=(1e5, 3e5, 1e6), tokens=(1e5, 1e6), fractions=(0.0, 0.01), noise=0.001)
    sweep = make_sweep(tmp_path / "sweep")
    write_runs_csv(synthetic_runs(cfg), sweep / "runs.csv")
    assert report(sweep, tmp_path / "out", bootstrap=0) == 0
    out = capsys.readouterr().out
    assert "form forgetting-anchored: left out" in out and "form kalajdzievski: left out" in out
    fits = json.loads((tmp_path / "out" / "fit.json").read_text())["fits"]
    assert {"finetune", "forgetting", "chinchilla"} <= {f["form"] for f in fits}
    assert not {"forgetting-anchored", "kalajdzievski"} & {f["form"] for f in fits}


@pytest.mark.parametrize("name", ["micro", "demo", "smollm2"])
def test_committed_reports_render_from_their_findings(name):
    """findings.json holds every verdict and threshold: it is recomputed byte for byte from the committed
    runs.csv, fit.json, protocol block, ladder-walk fits and held-out-slice CSV, and REPORT.md's findings
    and held-out goal render from it alone. The walk's point fits are read back, not refitted: where two
    sizes cannot pin a form down, the optimum they land on moves with the BLAS kernel of the CPU
    (test_the_ladder_walk_repeats_where_its_fits_are_determined)."""
    folder = Path(__file__).resolve().parents[2] / "reports" / name
    committed = (folder / "findings.json").read_text()
    facts, fit = json.loads(committed), json.loads((folder / "fit.json").read_text())
    table = read_runs(folder / "runs.csv")
    fits, runs = fit["fits"], fd.runs_of(table)
    recomputed = fd.collect(runs, facts["protocol"], fits, facts["ladder_walk"]["records"])
    if "held_out_slice" in facts:  # finding 3 on the slice: from the CSV the report copied beside itself
        source = facts["held_out_slice"]["source"]
        slice_runs = _slice_runs(folder / source, runs)
        recomputed["held_out_slice"] = fd.slice_findings(slice_runs, source, facts["protocol"])
    assert json.dumps(json_finite(recomputed), indent=2) + "\n" == committed
    text = (folder / "REPORT.md").read_text()
    assert "\n".join(_findings_text(facts)) in text
    assert "\n".join(ladder_walk_text(facts["ladder_walk"])) in text
    if fits:  # one model size (smollm2) fits no law, and its report has no held-out table
        assert "\n".join(heldout_rows(fits, facts["heldout"])) in text
        for law, best in facts["heldout"]["best"].items():
            assert f"- {law}: best form **{best['form']}**" in text


@pytest.mark.parametrize("name", ["micro", "demo"])
def test_the_ladder_walk_repeats_where_its_fits_are_determined(name):
    """Refitted here, the committed walk repeats to 1e-5 wherever its data determine the fit: a form
    without a free loss floor E, or one fitted on three sizes or more. On two sizes, E and A·N^-alpha trade
    off along a valley so flat that the optimum reached moves with the rounding of the CPU's BLAS kernel
    (measured: OpenBLAS's Haswell against its SkylakeX kernels move such an MRE up to 3x); those records
    are only checked to exist."""
    folder = Path(__file__).resolve().parents[2] / "reports" / name
    committed = json.loads((folder / "findings.json").read_text())["ladder_walk"]["records"]
    meta = json.loads((folder / "fit.json").read_text())["meta"]
    table = read_runs(folder / "runs.csv")
    if meta.get("seed_mean"):  # `study report --seed-mean` walked the ladder on each point's seed mean
        table, _ = seed_means(table, "runs.csv")
    walk = walk_runs(table, meta["forms"], FitConfig(bootstrap=0))
    key = ("domain", "form", "k")
    assert [[r[k] for k in key] for r in walk] == [[r[k] for k in key] for r in committed]
    determined = [
        (a, b) for a, b in zip(committed, walk) if b["k"] >= 3 or "E" not in get_form(b["form"]).param_names
    ]
    assert len(determined) >= 3  # the check is not empty
    for a, b in determined:
        assert b["mre"] == pytest.approx(a["mre"], rel=1e-5), (b["form"], b["domain"], b["k"])


def test_report_on_one_pretrained_size_gives_forgetting_by_p_and_says_why_no_law(tmp_path):
    """The SmolLM2 study's shape: one size, no pretrain stage, two domains, p in {0, 1 %, 5 %}."""
    cfg = SyntheticConfig(sizes=(1.06e8,), tokens=(1e5,), fractions=(0.0, 0.01, 0.05), domains=("german", "legal"),
                          noise=0.001)  # fmt: skip
    sweep = make_sweep(tmp_path / "sweep", losses=(), best=(100,))
    write_runs_csv(synthetic_runs(cfg), sweep / "runs.csv")
    assert report(sweep, tmp_path / "out", bootstrap=0) == 0
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert "## Laws: not fitted" in text and "needs >= 3 sizes" in text
    # nothing fitted, so no fitted-laws section nor its plot, and finding 1 says why it is not measured
    assert "## Fitted laws" not in text and not (tmp_path / "out" / "predicted_vs_observed.png").exists()
    assert "**1. Forgetting shrinks with model size — not measured.** No (domain, D) has runs at two" in text
    assert "n/a: no pretraining ladder" in text and "The protocol is met" in text
    facts = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert facts["injection"]["0.01"]["n_pairs"] == 2 and facts["injection"]["0.05"]["n_pairs"] == 2
    assert json.loads((tmp_path / "out" / "fit.json").read_text())["fits"] == []


def test_finding_3_says_when_injection_removes_more_than_all_of_the_forgetting(tmp_path):
    """A p = 1 % run whose pretraining loss ends below the base model's "removes" over 100 % of the forgetting:
    the injected data taught the evaluated distribution. The report says so and where the slice is."""
    cfg = SyntheticConfig(sizes=(1.06e8,), tokens=(1e5,), fractions=(0.0, 0.01, 0.05), domains=("german",),
                          noise=0.0)  # fmt: skip
    sweep = make_sweep(tmp_path / "sweep", losses=(), best=(100,))
    write_runs_csv(synthetic_runs(cfg), sweep / "runs.csv")
    with open(sweep / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if float(row["inject_fraction"]) == 0.01:
            row["pt_loss"] = str(float(row["pt_loss_base"]) - 0.05)
    with open(sweep / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert report(sweep, tmp_path / "out", bootstrap=0) == 0
    injection = json.loads((tmp_path / "out" / "findings.json").read_text())["injection"]
    assert injection["0.01"]["n_removed_above_all"] == 1 and injection["0.05"]["n_removed_above_all"] == 0
    assert injection["0.01"]["forgetting_removed_mean"] > 1
    text = (tmp_path / "out" / "REPORT.md").read_text()
    assert (
        "In 1 of 1 pairs it removes more than all of it: the pretraining validation loss ends below" in text
    )
    assert "`dist-forget study held-out-slice` measures it on text no run injects or trains on." in text

    names = [r.name for r in fd.runs_of(read_runs(sweep / "runs.csv"))]
    sliced = tmp_path / "code_slice.csv"
    sliced.write_text("run,slice_loss,slice_loss_base\n" + "".join(f"{n},2.6,2.5\n" for n in names))
    assert report(sweep, tmp_path / "out", bootstrap=0, held_out_slice=sliced) == 0
    assert (
        "the held-out slice below measures forgetting without that."
        in (tmp_path / "out" / "REPORT.md").read_text()
    )


@pytest.mark.parametrize("alpha, b", [(0.3, 500.0), (0.6, 50.0)])
def test_implied_strength_recovers_the_law_it_was_drawn_from(alpha, b):
    """Runs drawn without noise from F = A·D^β / ((1 + B·p)·N)^α: each (domain, N, D) gives back B and α."""
    law = {"A": 2.0, "alpha": alpha, "beta": 0.3, "B": b}
    cfg = SyntheticConfig(forgetting=law, sizes=(1e5, 1e6), tokens=(1e5, 1e6), fractions=(0.0, 0.01, 0.05),
                          domains=("code", "legal"), noise=0.0)  # fmt: skip
    implied = fd.implied_injection_strength(fd.runs_of(synthetic_runs(cfg)))
    assert len(implied["records"]) == 8 and all(x["identified"] for x in implied["records"])
    for x in implied["records"]:
        assert x["B"] == pytest.approx(b, rel=1e-6) and x["alpha"] == pytest.approx(alpha, rel=1e-6)
        assert x["ratio_p1"] == pytest.approx((1 + b * 0.01) ** -alpha, rel=1e-9)
    assert [s["model_params"] for s in implied["by_size"]] == [1e5, 1e6]
    assert all(s["n"] == s["n_identified"] == 4 for s in implied["by_size"])
    assert implied["by_size"][0]["B_median"] == pytest.approx(b, rel=1e-6)


@pytest.mark.parametrize(
    "r1, r2, why",
    [
        (1.0, 0.5, "p = 1 % removed nothing"),
        (1.2, 0.5, "p = 1 % removed nothing"),
        (0.8, 0.8, "p = 5 % removed no more than p = 1 %"),  # the B → ∞ limit reached exactly
        (0.8, 0.9, "p = 5 % removed no more than p = 1 %"),
        (0.9, 0.9**5, "the B → 0 limit"),  # ln r2 = 5 ln r1: exactly the limit
        (0.9, 0.9**6, "the B → 0 limit"),  # beyond it: more than any B allows
        (0.8, 0.8**1.01, "the B → ∞ limit"),  # a root beyond the bracket's upper end
        (0.8, -0.1, "forgetting at p = 5 % is not above 0"),
        (float("nan"), float("nan"), "no forgetting at p = 0"),
    ],
)
def test_implied_strength_says_why_the_ratios_fix_no_b(r1, r2, why):
    b, alpha, reason = fd.implied_strength(r1, r2, 0.01, 0.05)
    assert np.isnan(b) and np.isnan(alpha) and why in reason


def test_implied_strength_of_several_seeds_adds_their_mean_and_counts_it_once():
    runs = [run(1e4, 1e4, p=p, seed=s, f=f0 * r) for s, f0 in ((0, 1.0), (1, 3.0))
            for p, r in ((0.0, 1.0), (0.01, 0.8), (0.05, 0.5))]  # fmt: skip
    runs.append(run(1e4, 1e4, p=0.01, seed=2, f=0.1))  # no p = 0 or 5 % partner: no record
    implied = fd.implied_injection_strength(runs)
    assert [x["seeds"] for x in implied["records"]] == [[0], [1], [0, 1]]
    mean = implied["records"][-1]
    assert mean["seed"] is None and mean["forgetting_p0"] == pytest.approx(2.0)
    assert mean["B"] == pytest.approx(implied["records"][0]["B"], rel=1e-9)  # the same ratios
    assert implied["by_size"][0]["n"] == 1


@pytest.mark.parametrize("injected", [25, 2])
def test_report_shows_the_implied_strength_under_finding_3(tmp_path, injected):
    """One size (the SmolLM2 study's shape), B = 500 and α = 0.3; legal's p = 1 % run forgets more than at
    p = 0, so its B is not identified. With p = 1 % injecting 2 sequences the values are context only."""
    law = {"A": 2.0, "alpha": 0.3, "beta": 0.3, "B": 500.0}
    cfg = SyntheticConfig(forgetting=law, sizes=(1.06e8,), tokens=(1e5,), fractions=(0.0, 0.01, 0.05),
                          domains=("german", "legal"), noise=0.0)  # fmt: skip
    table = synthetic_runs(cfg)
    v = table.values
    bad = (table.domain == "legal") & (v["inject_fraction"] == 0.01)
    v["pt_loss"][bad] = (
        v["pt_loss_base"][bad]
        + 1.1 * (v["pt_loss"] - v["pt_loss_base"])[(table.domain == "legal") & (v["inject_fraction"] == 0.0)]
    )
    sweep = make_sweep(tmp_path / "sweep", losses=(), best=(100,), injected=injected)
    write_runs_csv(table, sweep / "runs.csv")
    report(sweep, tmp_path / "out", bootstrap=0)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    section = text[text.index("**Injection strength implied at each size.**") : text.index("**4. ")]
    assert text.index("**3. ") < text.index("**Injection strength implied")
    assert "N = 106,000,000: median B 500 (range 500 to 500), median α 0.30; identified at 1 of 2" in section
    r1, r2 = (1 + 500 * 0.01) ** -0.3, (1 + 500 * 0.05) ** -0.3
    assert f"| german | 100,000 | {r1:.3f} | {r2:.3f} | 500 | 0.30 |" in section
    assert "| legal | 100,000 | 1.100 |" in section
    assert "not identified (p = 1 % removed nothing) | – |" in section
    facts = json.loads((tmp_path / "out" / "findings.json").read_text())["implied_injection_strength"]
    assert facts["undermined"] is (injected == 2)
    assert ("**Protocol not met** (injection_acts): these values are context, not a verdict" in section) is (
        injected == 2
    )
    legal = next(x for x in facts["records"] if x["domain"] == "legal")
    assert legal["B"] is None and legal["identified"] is False  # NaN is null in findings.json


def test_report_keeps_what_it_does_not_write_and_reads_finding_3_on_a_held_out_slice(tmp_path, capsys):
    """Replacing the report folder keeps hand-written files (a pilot, run files); a held-out-slice CSV puts
    finding 3 measured on that slice beside the runs' own: here p = 1 % removes 120 % of the forgetting on
    the injected corpus's validation set but half of it on the slice."""
    cfg = SyntheticConfig(sizes=(1.06e8,), tokens=(1e5,), fractions=(0.0, 0.01, 0.05), domains=("german",),
                          noise=0.0)  # fmt: skip
    table = synthetic_runs(cfg)
    sweep = make_sweep(tmp_path / "sweep", losses=(), best=(100,))
    write_runs_csv(table, sweep / "runs.csv")
    out = tmp_path / "out"
    (out / "runs" / "a").mkdir(parents=True)
    (out / "runs" / "a" / "summary.json").write_text("{}")
    (out / "PILOT.md").write_text("a pilot, by hand\n")
    names = {r.p: r.name for r in fd.runs_of(table)}
    base, f0 = 2.5, 0.1
    sliced = tmp_path / "code_slice.csv"
    sliced.write_text(
        "run,slice_loss,slice_loss_base\n"
        + "".join(f"{names[p]},{base + f0 * r},{base}\n" for p, r in ((0.0, 1.0), (0.01, 0.5), (0.05, 0.25)))
    )
    assert report(sweep, out, bootstrap=0, held_out_slice=sliced) == 0
    assert (out / "PILOT.md").read_text() == "a pilot, by hand\n" and (
        out / "runs" / "a" / "summary.json"
    ).is_file()
    assert "kept in" in capsys.readouterr().out and (out / "code_slice.csv").read_text() == sliced.read_text()
    facts = json.loads((out / "findings.json").read_text())["held_out_slice"]
    assert facts["injection"]["0.01"]["forgetting_removed_mean"] == pytest.approx(0.5)
    assert facts["injection"]["0.05"]["forgetting_removed_mean"] == pytest.approx(0.75)
    assert facts["verdict"] == "holds" and facts["n_runs"] == 3
    # r(1 %) = 0.5 and r(5 %) = 0.25 fix the law's B and α: (1 + B/100)^α = 2, (1 + B/20)^α = 4
    b = facts["implied_injection_strength"]["records"][0]["B"]
    assert math.log1p(b * 0.05) / math.log1p(b * 0.01) == pytest.approx(2.0)
    text = (out / "REPORT.md").read_text()
    assert "**Finding 3 on a held-out slice** ([code_slice.csv](code_slice.csv), 3 runs" in text
    assert "| german | 100,000 | +0.1000 | +0.0500 | 50.00 % | +0.0250 | 75.00 % |" in text

    sliced.write_text("name,loss\nx,1\n")
    with pytest.raises(
        UserError, match=r"--held-out-slice .*code_slice.csv: not a CSV of `dist-forget study"
    ):
        report(sweep, out, bootstrap=0, held_out_slice=sliced)
    with pytest.raises(UserError, match="the report writes a file of that name"):  # it would replace runs.csv
        report(sweep, out, bootstrap=0, held_out_slice=sliced.rename(tmp_path / "runs.csv"))
