"""dist_forget/schema.py is the one definition of the runs-table columns and the metrics.jsonl records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dist_forget import schema
from dist_forget.laws import table


def test_the_law_table_reads_the_columns_the_schema_defines():
    assert table.REQUIRED_COLUMNS is schema.REQUIRED_COLUMNS and table.SUMMARY_KEYS is schema.SUMMARY_KEYS
    assert schema.SUMMARY_KEYS == (
        "domain",
        "model_params",
        "target_tokens",
        "inject_fraction",
        "anchor_decay",
        "ft_loss",
        "pt_loss",
        "pt_loss_base",
        "ft_loss_base",
        "inject_fraction_final",
        "forgetting",
        "steps",
        "run_id",
    )


def test_summary_row_orders_the_keys_and_refuses_others():
    values = {k: i for i, k in enumerate(reversed(schema.SUMMARY_KEYS))}
    assert tuple(schema.summary_row(values)) == schema.SUMMARY_KEYS
    with pytest.raises(ValueError, match="got also seed"):
        schema.summary_row({**values, "seed": 0})
    with pytest.raises(KeyError, match="run_id"):
        schema.summary_row({k: v for k, v in values.items() if k != "run_id"})


def test_a_summary_row_is_a_valid_runs_table_row(tmp_path: Path):
    row = schema.summary_row(
        {
            "domain": "code",
            "model_params": 26784,
            "target_tokens": 2048,
            "inject_fraction": 0.01,
            "anchor_decay": 0.0,
            "ft_loss": 3.2,
            "pt_loss": 4.1,
            "pt_loss_base": 4.0,
            "ft_loss_base": 3.9,
            "inject_fraction_final": 0.0,
            "forgetting": -0.1,
            "steps": 6,
            "run_id": "local:x",
        }
    )
    (tmp_path / schema.SUMMARY_FILE).write_text(json.dumps(row))
    runs = table.read_runs(tmp_path)
    assert runs.run_id == ["local:x"] and runs.values["pt_loss"][0] == 4.1
    assert runs.values["ft_loss_base"][0] == 3.9  # optional column, read when present
    # descriptive columns: a final p of 0 and a negative forgetting are valid values
    assert runs.values["inject_fraction_final"][0] == 0.0 and runs.values["forgetting"][0] == -0.1


def test_runs_written_before_the_adaptive_columns_still_read(tmp_path: Path):
    """A sweep mixes old summary.json files (no inject_fraction_final, forgetting) with new ones."""
    base = {"domain": "code", "model_params": 1, "target_tokens": 2, "inject_fraction": 0.01,
            "anchor_decay": 0.0, "ft_loss": 3.0, "pt_loss": 4.1, "pt_loss_base": 4.0}  # fmt: skip
    for name, extra in (("old", {}), ("new", {"inject_fraction_final": 0.02, "forgetting": 0.1})):
        (tmp_path / name).mkdir()
        (tmp_path / name / schema.SUMMARY_FILE).write_text(json.dumps({**base, **extra, "run_id": name}))
    runs = table.read_runs(tmp_path)
    final = dict(zip(runs.run_id, runs.values["inject_fraction_final"]))
    assert final["new"] == 0.02 and final["old"] != final["old"]  # NaN where the column was absent


def test_read_metrics_filters_by_kind_and_step(tmp_path: Path):
    path = tmp_path / schema.METRICS_FILE
    records = [
        schema.eval_record(0, 5.0, 4.0),
        schema.train_record(1, {"loss": 5.5, "lr": 1e-3}),
        schema.train_record(2, {"loss": float("nan"), "lr": 1e-3}),
        schema.eval_record(2, 4.5, 4.2),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")  # a blank line is skipped
    assert [r["step"] for r in schema.read_metrics(path)] == [0, 1, 2, 2]
    assert schema.read_metrics(path, "eval") == [records[0], records[3]]
    assert [r["loss"] for r in schema.read_metrics(path, "train", until_step=1)] == [5.5]
    assert schema.read_metrics(path, until_step=0) == [records[0]]
