"""The demo's end screen, from a finished sweep folder: laws that can answer end on a planner answer in
(0, 1]; a degenerate fit or a protocol failure ends on the refusal, exit 1, and no planner number."""

from __future__ import annotations

import re

import pytest

from dist_forget import cli
from dist_forget.laws.report import forgetting_plot_tokens
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.laws.table import write_runs_csv
from dist_forget.study.demo import summarize
from tests.unit.test_study_protocol import make_sweep


def finished_sweep(
    tmp_path, forgetting=None, finetune=None, forms=("finetune", "forgetting"), **protocol_changes
):
    root = make_sweep(tmp_path / "sweep", **protocol_changes)
    cfg = SyntheticConfig(sizes=(1.3e4, 2.7e4, 8.3e4), tokens=(2e4, 6e4), fractions=(0.0, 0.01, 0.05),
                          domains=("legal",), noise=0.002)  # fmt: skip
    if forgetting:
        cfg.forgetting = forgetting
    if finetune:
        cfg.finetune = finetune
    write_runs_csv(synthetic_runs(cfg), root / "runs.csv")
    assert cli.main(["fit", "--runs", str(root / "runs.csv"), "--out", str(root / "fit"), "--holdout", "largest",
                     "--bootstrap", "40", "--forms", *forms]) == 0  # fmt: skip
    return root


def test_the_demo_shows_and_plans_with_the_power_law_when_its_fit_has_it(tmp_path, capsys):
    """What `make demo` fits (finetune-power and forgetting): the end screen shows the E-free law, and the
    planner's finetune-loss line comes from it (an older fit.json with only `finetune` still works above)."""
    root = finished_sweep(tmp_path, finetune={"E": 1e-9, "A": 20.0, "alpha": 0.075, "beta": 0.09},
                          forms=("finetune-power", "forgetting"))  # fmt: skip
    capsys.readouterr()
    assert summarize(root) == 0
    out = capsys.readouterr().out
    assert "finetune   L_ft = A / (N^alpha * D^beta)" in out and "L_ft = E +" not in out
    assert "WARNING" not in out and "predicted finetune loss: withheld" not in out
    assert "smallest p with forgetting" in out


def test_laws_that_can_answer_end_on_a_plan_with_p_in_0_1(tmp_path, capsys):
    root = finished_sweep(tmp_path)
    capsys.readouterr()
    assert summarize(root) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "WARNING" not in out
    assert "held-out MRE on N=83,000 (fitted without it)" in out
    assert str(root / "fit" / "forgetting_vs_p_legal_forgetting.png") in out
    # the forgetting table, the plot beside it and the plot's own title are at one D: the largest of a
    # grid that holds each D equally often (the plot once showed the first one, beside a table at the last)
    assert "forgetting (nats/token) at D = 60,000:" in out and "per N at D = 60,000," in out
    assert (
        forgetting_plot_tokens([2e4, 6e4, 6e4, 2e4]) == 6e4 and forgetting_plot_tokens([2e4, 2e4, 6e4]) == 2e4
    )
    p = float(re.search(r"smallest p with forgetting <= [\d.]+ nats/token: ([\d.e+-]+) \(", out).group(1))
    assert 0 < p <= 1
    assert "e+2" not in out and "inf" not in out  # nothing astronomically large or unbounded is printed


@pytest.mark.parametrize(
    "forgetting, changes, reason",
    [
        (
            {"A": 2.0, "alpha": 0.0, "beta": 0.3, "B": 1000.0},
            {},
            "forgetting-law warnings above",
        ),  # no size effect
        (None, {"best": (100, 300)}, "protocol not met: u_curve_bottom"),
    ],  # fmt: skip
)
def test_runs_that_cannot_answer_say_why_and_print_no_plan(tmp_path, capsys, forgetting, changes, reason):
    root = finished_sweep(tmp_path, forgetting, **changes)
    capsys.readouterr()
    assert summarize(root) == 1
    out = capsys.readouterr().out
    assert f"These runs cannot answer the paper's questions ({reason})" in out
    assert "smallest p with forgetting" not in out


def test_the_demo_says_whether_its_runs_repeat_the_committed_ones(tmp_path):
    """The README quotes the committed demo runs; a user's `make demo` says whether it repeated them bit for
    bit, or by how much another machine's runs differ, instead of leaving two sets of figures unexplained."""
    from dist_forget.study.demo import against_committed

    def write(path, rows):
        path.write_text(
            "name,ft_loss,pt_loss,steps\n" + "".join(f"{n},{f!r},{p!r},{s}\n" for n, f, p, s in rows)
        )
        return path

    rows = [("a", 3.4419, 6.3697, 925.0), ("b", 3.8475, 5.2482, 175.0)]
    committed = write(tmp_path / "committed.csv", rows)
    same = against_committed(write(tmp_path / "same.csv", rows), committed)
    assert "all 2 runs repeat" in same and "bit for bit" in same
    moved = against_committed(
        write(tmp_path / "moved.csv", [rows[0], ("b", 3.8475, 5.2482 * 1.01, 175.0)]), committed
    )
    assert "1 of 2 runs differ" in moved and "up to 1 %" in moved and "not across CPUs" in moved
    later = against_committed(
        write(tmp_path / "later.csv", [rows[0], ("b", 3.8475, 5.2482, 200.0)]), committed
    )
    assert "1 of 2 runs differ" in later  # the same losses at another best step are another run
    other = against_committed(write(tmp_path / "other.csv", [("c", 1.0, 2.0, 5.0)]), committed)
    assert "nothing to compare" in other
    assert "not here" in against_committed(committed, tmp_path / "missing.csv")
