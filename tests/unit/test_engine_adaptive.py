"""data.inject_fraction=auto in the trainer (engine=single): p set at each evaluation, logged, summarised,
and a resume that is bit-identical to the uninterrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dist_forget import cli
from dist_forget.checkpoint.zero import MODEL_FILE
from dist_forget.config import load_config
from dist_forget.data.mixture import Schedule
from dist_forget.engine.config import RunConfig
from dist_forget.engine.inject_control import InjectController
from dist_forget.engine.trainer import train
from dist_forget.safeload import load_pt
from dist_forget.schema import SUMMARY_KEYS, read_metrics
from tests.conftest import sigkill_after_step, tiny_finetune_overrides

CONFIG = Path(__file__).parents[2] / "configs" / "finetune" / "tiny.yaml"
# A prior fit that asks for more than inject_max for this budget: p starts at 0.5; the random tiny model's
# pretraining loss then falls (negative forgetting), so the step-2 evaluation lowers p (8 sequences per step).
LAW = {"A": 2.0, "alpha": 0.3, "beta": 0.2, "B": 100.0}
AUTO = ("data.inject_fraction=auto", "data.max_forgetting=0.001", "data.inject_max=0.5", "train.batch_size=8",
        "train.micro_batch=4")  # fmt: skip


def _fit(folder: Path, domain: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fit.json").write_text(
        json.dumps({"fits": [{"domain": domain, "form": "forgetting", "params": LAW}]})
    )
    return folder / "fit.json"


pytestmark = pytest.mark.usefixtures("one_thread")


def _logged(run: Path) -> list[dict]:
    """The run's metrics.jsonl, all but the timings."""
    return [
        {k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")}
        for r in read_metrics(run / "metrics.jsonl")
    ]


def _overrides(tiny_data, base_model, out, prior, *extra) -> list[str]:
    return tiny_finetune_overrides(tiny_data, base_model, out, *AUTO, f"data.inject_prior={prior}", *extra)


def _cfg(tiny_data, base_model, out, prior, *extra) -> RunConfig:
    return load_config(RunConfig, CONFIG, _overrides(tiny_data, base_model, out, prior, *extra))


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> Path:
    return _fit(tmp_path_factory.mktemp("prior"), "code")


@pytest.fixture(scope="module")
def auto_run(tiny_data, base_model, prior, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("auto") / "run"
    return out, train(_cfg(tiny_data, base_model, out, prior), "finetune")


def test_p_follows_the_controller_and_the_summary_reports_it(auto_run):
    out, summary = auto_run
    steps = read_metrics(out / "metrics.jsonl", "train")
    evals = {r["step"]: r for r in read_metrics(out / "metrics.jsonl", "eval")}
    p_set = [r["inject_fraction_set"] for r in steps]
    # the controller, replayed on the forgetting measured at step 2, gives the p of steps 3 and 4
    control = InjectController(0.001, 0.5, 0.5)
    forgetting = evals[2]["pt_loss"] - evals[0]["pt_loss"]
    p3 = control.update(forgetting)
    assert p_set[:2] == [0.5, 0.5] and p_set[2:] == [pytest.approx(p3)] * 2
    assert (p3 < 0.5) == (forgetting < 0.8 * 0.001)
    assert steps[1]["injected_sequences"] == 8  # half of the first 16 sequences
    report = json.loads((out / "report.json").read_text())
    schedule = Schedule.from_list(report["inject_schedule"])
    assert [s for s, _ in report["inject_schedule"]] == [0, 16]
    assert report["inject_control"]["updates"] == 1  # saved in the run state
    # the injected sequences are exactly what the schedule implies after 32 sequences
    assert steps[-1]["injected_sequences"] == schedule.count(32)
    assert tuple(json.loads((out / "summary.json").read_text())) == SUMMARY_KEYS
    assert summary["inject_fraction"] == pytest.approx(schedule.mean(summary["steps"] * 8))
    assert summary["inject_fraction_final"] == pytest.approx(p3)
    assert summary["forgetting"] == pytest.approx(summary["pt_loss"] - summary["pt_loss_base"])


def test_the_controller_state_is_saved_inside_the_run_state(auto_run):
    """The on-disk client state every checkpoint so far has: the controller's state is the run state's
    `inject_control` key (not a key of its own), and report.json starts from that run state."""
    out, _ = auto_run
    client = load_pt(out / "checkpoints" / "step-00000004" / MODEL_FILE)
    assert set(client) == {"module", "optimizer", "data", "train", "config"}
    report = json.loads((out / "report.json").read_text())
    assert client["train"]["inject_control"]["updates"] == 1
    same = lambda d: json.dumps(d, sort_keys=True)  # noqa: E731 - NaN (no T̂ here) equals itself as text
    assert same({k: report[k] for k in client["train"]}) == same(client["train"])


def test_resume_with_an_adaptive_schedule_is_bit_identical(tiny_data, base_model, auto_run, prior, tmp_path):
    """As if killed after the step-2 checkpoint (which holds the new p): the same losses, bit for bit."""
    full, summary = auto_run
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "checkpoints" / "latest").write_text("step-00000002\n")
    resumed = train(_cfg(tiny_data, base_model, part, prior), "finetune", resume="auto")

    assert _logged(part) == _logged(full)
    report = lambda run: json.loads((run / "report.json").read_text())  # noqa: E731
    assert report(part)["inject_schedule"] == report(full)["inject_schedule"]
    assert report(part)["inject_control"] == report(full)["inject_control"]
    assert {k: v for k, v in resumed.items() if k != "run_id"} == {
        k: v for k, v in summary.items() if k != "run_id"
    }


def test_sigkill_then_resume_auto_with_an_adaptive_schedule_is_bit_identical(
    tiny_data, base_model, prior, tmp_path
):
    """A real crash: the run is SIGKILLed one step past the step-2 checkpoint (whose evaluation changed p),
    then `--resume auto` ends as the uninterrupted run did: the same losses, schedule and summary. Six
    steps, so that the resumed run's controller updates again at step 4 from its restored state."""
    six = ("schedule.steps=6",)
    full = tmp_path / "full"
    summary = train(_cfg(tiny_data, base_model, full, prior, *six), "finetune")
    out = tmp_path / "killed"
    argv = ["finetune", "--config", str(CONFIG), *_overrides(tiny_data, base_model, out, prior, *six)]
    sigkill_after_step(argv, out, 3)
    assert not (out / "summary.json").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert cli.main([*argv, "--resume", "auto"]) == 0
    assert _logged(out) == _logged(full)
    report = lambda run: json.loads((run / "report.json").read_text())  # noqa: E731
    assert len(report(full)["inject_schedule"]) == 3  # p set at steps 2 and 4
    assert report(out)["inject_schedule"] == report(full)["inject_schedule"]
    assert report(out)["inject_control"] == report(full)["inject_control"]
    resumed = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in resumed.items() if k != "run_id"} == {
        k: v for k, v in summary.items() if k != "run_id"
    }


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("data.inject_fraction=auto",), "needs data.max_forgetting"),
        (("data.inject_fraction=auto", "data.max_forgetting=0"), "data.max_forgetting = 0.0 must be > 0"),
        (("data.inject_fraction=auto", "data.max_forgetting=-1"), "data.max_forgetting = -1.0 must be > 0"),
        (("data.inject_fraction=sometimes",), "inject_fraction"),
    ],
)
def test_bad_auto_input_is_one_line(tiny_data, base_model, tmp_path, capsys, extra, needle):
    argv = [
        "finetune",
        "--config",
        str(CONFIG),
        *tiny_finetune_overrides(tiny_data, base_model, tmp_path / "c"),
        *extra,
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("error: ")


def test_a_prior_fit_for_another_domain_is_refused_before_training(tiny_data, base_model, tmp_path, capsys):
    fit = _fit(tmp_path, "legal")
    extra = ["data.inject_fraction=auto", "data.max_forgetting=0.5", f"data.inject_prior={fit}"]
    argv = [
        "finetune",
        "--config",
        str(CONFIG),
        *tiny_finetune_overrides(tiny_data, base_model, tmp_path / "c"),
        *extra,
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.inject_prior" in err and "'code'" in err and "legal" in err
    assert not (tmp_path / "c" / "metrics.jsonl").exists()
