"""`dist-forget study held-out-slice`: forgetting of a sweep's finished runs on a slice none of them trained on,
evaluated exactly as the runs evaluate (shown by giving back their own losses on their own shards)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from dist_forget.cli import main as cli_main
from dist_forget.data.manifest import read_manifest
from tests.conftest import tiny_finetune_overrides

ROOT = Path(__file__).resolve().parents[2]


def _finetune(tiny_data, base_model, out: Path, p: float) -> dict:  # noqa: ANN001
    from dist_forget.config import load_config
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.trainer import train

    overrides = tiny_finetune_overrides(
        tiny_data, base_model, out, f"data.inject_fraction={p}", "schedule.steps=6"
    )
    train(load_config(RunConfig, ROOT / "configs/finetune/tiny.yaml", overrides), "finetune")
    return json.loads((out / "summary.json").read_text())


def _read_summary(sweep: Path, name: str) -> dict:
    return json.loads((sweep / "finetune" / name / "summary.json").read_text())


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as fh:
        return {row["run"]: row for row in csv.DictReader(fh)}


def test_held_out_slice_gives_back_the_runs_own_losses_and_measures_another_slice(
    tiny_data,
    base_model,
    one_thread,
    tmp_path: Path,  # noqa: ANN001
    capsys: pytest.CaptureFixture[str],
) -> None:
    sweep = tmp_path / "sweep"
    summaries = {
        f"p{p}": _finetune(tiny_data, base_model, sweep / "finetune" / f"p{p}", p) for p in (0.0, 0.5)
    }
    (sweep / "finetune" / "unfinished").mkdir()  # no summary.json: not a finished run, left out

    # on the runs' own pretraining shards, their first 8 validation sequences (train.eval_sequences = 8): the
    # losses each run logged at its best step, and its base model's
    own = tmp_path / "own.csv"
    argv = ["study", "held-out-slice", "--sweep", str(sweep), "--shards", str(tiny_data.english), "--out", str(own),
            "--sequences", "8", "--micro-batch", "2"]  # fmt: skip
    assert cli_main(argv) == 0
    rows = _rows(own)
    assert set(rows) == set(summaries)
    for name, summary in summaries.items():
        row = rows[name]
        assert float(row["slice_loss"]) == pytest.approx(summary["pt_loss"], abs=1e-6)
        assert float(row["slice_loss_base"]) == pytest.approx(summary["pt_loss_base"], abs=1e-6)
        assert float(row["slice_forgetting"]) == pytest.approx(summary["forgetting"], abs=1e-6)
        assert float(row["pt_forgetting"]) == summary["forgetting"] and row["best_step"] == str(
            summary["steps"]
        )
    assert rows["p0.5"]["slice_loss"] != rows["p0.0"]["slice_loss"]  # two models, two losses

    # rerun as a sweep grows: a run measured before with the same settings is kept, a new one evaluated
    before = own.read_text()
    _finetune(tiny_data, base_model, sweep / "finetune" / "p0.25", 0.25)
    capsys.readouterr()
    assert cli_main(argv) == 0
    said = capsys.readouterr().out
    assert said.count("kept from") == 2 and "p0.25: slice loss" in said
    again = _rows(own)
    assert {k: again[k] for k in rows} == rows and own.read_text().startswith(before.splitlines()[0])
    assert float(again["p0.25"]["slice_loss"]) == pytest.approx(
        _read_summary(sweep, "p0.25")["pt_loss"], abs=1e-6
    )

    # runs copied to another machine without their best model (best/ is not committed): a run with a row
    # keeps it, one without is skipped, never dropped from the CSV by mistake nor evaluated without a model
    shutil.rmtree(sweep / "finetune" / "p0.25" / "best")
    shutil.copytree(sweep / "finetune" / "p0.25", sweep / "finetune" / "p0.25-copy")
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "p0.25-copy: skipped, no best model" in capsys.readouterr().out
    assert _rows(own) == again

    # spread over the whole split: every sequence once when asked for all of them, so the same as the first n;
    # asked for fewer, another sample than the first ones
    n_val = read_manifest(tiny_data.english).split("val").sequences
    assert n_val >= 16
    every, first, few = tmp_path / "every.csv", tmp_path / "first.csv", tmp_path / "few.csv"
    for out, seqs, spread in (
        (every, n_val, "--spread"),
        (first, n_val, "--no-spread"),
        (few, 8, "--spread"),
    ):
        assert (
            cli_main([*argv[:6], "--out", str(out), "--sequences", str(seqs), "--micro-batch", "2", spread])
            == 0
        )
    assert _rows(every)["p0.0"]["slice_loss"] == _rows(first)["p0.0"]["slice_loss"]
    assert _rows(few)["p0.0"]["slice_loss"] != rows["p0.0"]["slice_loss"]


def test_held_out_slice_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep" / "finetune" / "running").mkdir(parents=True)
    shards = tmp_path / "no-shards"
    argv = ["study", "held-out-slice", "--sweep", str(tmp_path / "sweep"), "--out", str(tmp_path / "x.csv")]
    assert cli_main([*argv, "--shards", str(shards)]) == 2
    assert f"--shards {shards}: no such folder" in capsys.readouterr().err
    assert cli_main([*argv, "--shards", str(tmp_path)]) == 2
    assert "no finished run with its best model" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()
