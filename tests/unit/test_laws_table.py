"""The runs table: CSV, Parquet and summary.json trees in; every bad value named in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dist_forget.errors import UserError
from dist_forget.laws.synthetic import SyntheticConfig, synthetic_runs
from dist_forget.laws.table import REQUIRED_COLUMNS, read_runs, write_runs_csv

HEADER = ",".join(REQUIRED_COLUMNS)
GOOD = "wiki,1000000,300000,0.01,0,2.5,3.1,3.0"


def _csv(tmp_path: Path, *lines: str, header: str = HEADER) -> Path:
    path = tmp_path / "runs.csv"
    path.write_text("\n".join((header,) + lines) + "\n")
    return path


def test_csv_round_trip_keeps_values_and_extra_columns(tmp_path):
    runs = synthetic_runs(SyntheticConfig(domains=("wiki", "math"), fractions=(0.0, 0.01)))
    runs.extra["note"] = ["x"] * len(runs)
    write_runs_csv(runs, tmp_path / "runs.csv")
    back = read_runs(tmp_path / "runs.csv")
    assert back.run_id == runs.run_id and back.domains() == ["math", "wiki"]
    for col, values in runs.values.items():
        np.testing.assert_array_equal(back.values[col], values)
    assert back.extra["note"] == ["x"] * len(runs)


def test_directory_of_summary_json_and_parquet(tmp_path):
    rows = []
    for i in range(3):
        row = {
            "domain": "wiki",
            "model_params": 1e6 * (i + 1),
            "target_tokens": 3e5,
            "inject_fraction": 0.01,
            "anchor_decay": 0.0,
            "ft_loss": 2.5,
            "pt_loss": 3.1,
            "pt_loss_base": 3.0,
            "steps": 100,
            "run_id": f"run-{i}",
        }
        (tmp_path / "sweep" / f"r{i}").mkdir(parents=True)
        (tmp_path / "sweep" / f"r{i}" / "summary.json").write_text(json.dumps(row))
        rows.append(row)
    runs = read_runs(tmp_path / "sweep")
    assert runs.run_id == ["run-0", "run-1", "run-2"]
    assert (
        runs.values["model_params"].tolist() == [1e6, 2e6, 3e6] and runs.values["steps"].tolist() == [100] * 3
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "runs.parquet")
    assert read_runs(tmp_path / "runs.parquet").run_id == runs.run_id


def test_missing_columns_are_named(tmp_path):
    path = _csv(
        tmp_path,
        "wiki,1000000,300000,0.01,0,2.5",
        header="domain,model_params,target_tokens,inject_fraction,anchor_decay,ft_loss",
    )
    with pytest.raises(
        UserError, match=r"runs.csv: missing columns pt_loss, pt_loss_base; a runs table needs"
    ):
        read_runs(path)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("wiki,1000000,300000,0.01,0,nan,3.1,3.0", "line 3: ft_loss = nan is not a finite number"),
        ("wiki,1000000,300000,0.01,0,2.5,-3.1,3.0", "line 3: pt_loss = -3.1 must be positive"),
        ("wiki,-5,300000,0.01,0,2.5,3.1,3.0", "line 3: model_params = -5 must be positive"),
        ("wiki,1000000,0,0.01,0,2.5,3.1,3.0", "line 3: target_tokens = 0 must be positive"),
        ("wiki,1000000,300000,1.5,0,2.5,3.1,3.0", "line 3: inject_fraction = 1.5 must be a fraction"),
        ("wiki,1000000,300000,0.01,0,abc,3.1,3.0", "line 3: ft_loss = 'abc' is not a number"),
        ("wiki,1000000,300000,0.01,0,,3.1,3.0", "line 3: ft_loss is empty"),
        (",1000000,300000,0.01,0,2.5,3.1,3.0", "line 3: domain is empty"),
    ],
)
def test_bad_values_name_the_row(tmp_path, bad, message):
    with pytest.raises(UserError, match=message) as info:
        read_runs(_csv(tmp_path, GOOD, bad))
    assert "\n" not in str(info.value)


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no such runs table"):
        read_runs(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="no summary.json found"):
        read_runs(tmp_path)
    (tmp_path / "runs.xlsx").write_text("x")
    with pytest.raises(UserError, match="unknown runs-table format"):
        read_runs(tmp_path / "runs.xlsx")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "summary.json").write_text("{broken")
    with pytest.raises(UserError, match="summary.json: not valid JSON"):
        read_runs(tmp_path / "d")
