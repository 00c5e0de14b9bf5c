"""Bootstrap intervals: nominal coverage over repeats, and the same samples with 1 or 2 processes."""

from __future__ import annotations

import numpy as np

from dist_forget.laws.bootstrap import BootstrapJob, bootstrap
from dist_forget.laws.fit import FitConfig, fit_form
from dist_forget.laws.forms import FORMS
from dist_forget.laws.pipeline import fit_runs
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    hits = []
    for seed in range(16):
        syn = SyntheticConfig(fractions=(0.0, 0.01, 0.05), noise=0.003, seed=seed)
        records = fit_runs(
            synthetic_runs(syn),
            ["finetune", "forgetting"],
            FitConfig(bootstrap=150, seed=seed, workers=1, top_k=4),
            progress=False,
        )
        for rec in records:
            truth = syn.finetune if rec["form"] == "finetune" else syn.forgetting
            hits += [rec["ci95"][k][0] <= v <= rec["ci95"][k][1] for k, v in truth.items()]
    coverage = float(np.mean(hits))
    # 128 intervals at a nominal 95 %: a binomial 99 % range is about 0.89..0.99.
    assert 0.87 <= coverage <= 0.995, coverage


def test_samples_do_not_depend_on_the_number_of_processes():
    runs = synthetic_runs(SyntheticConfig(fractions=(0.0, 0.01)))
    form = FORMS["finetune"]
    point = fit_form(form, runs, FitConfig())
    jobs = [BootstrapJob("finetune", runs.values, point.observed, point.theta)] * 2
    one = bootstrap(jobs, FitConfig(bootstrap=260, workers=1), progress=False)
    two = bootstrap(jobs, FitConfig(bootstrap=260, workers=2), progress=False)
    assert one[0].shape == (260, 4)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(one[0], one[1])  # each job draws its own resamples
