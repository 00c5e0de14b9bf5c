"""The runs table: one row per finetuning run, read from CSV, Parquet, summary.json files or MLflow.

The engine writes a `summary.json` per run with exactly the keys in SUMMARY_KEYS; the sweep collects
them. The columns are defined once, in dist_forget/schema.py. Every row remembers where it came from (`runs.csv line 7`, `sweep/r3/summary.json`) so that a bad
value is reported by name, in one line, before any fitting starts.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dist_forget.errors import UserError
from dist_forget.redact import redact_uri
from dist_forget.schema import (
    LOSS_COLUMNS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SIZE_COLUMNS,
    SUMMARY_KEYS,
)


@dataclass
class Runs:
    """Columns as arrays; `source[i]` names where row i came from (for error messages)."""

    domain: np.ndarray  # str, shape (n,)
    values: dict[str, np.ndarray]  # numeric columns, float64
    run_id: list[str]
    source: list[str]
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.run_id)

    def cols(self) -> dict[str, np.ndarray]:
        return self.values

    def domains(self) -> list[str]:
        return sorted(set(self.domain.tolist()))

    def subset(self, index: np.ndarray | Sequence[int]) -> Runs:
        idx = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, dtype=int)
        return Runs(
            domain=self.domain[idx],
            values={k: v[idx] for k, v in self.values.items()},
            run_id=[self.run_id[i] for i in idx],
            source=[self.source[i] for i in idx],
            extra={k: [v[i] for i in idx] for k, v in self.extra.items()},
        )

    def for_domain(self, domain: str) -> Runs:
        return self.subset(self.domain == domain)


def from_rows(
    rows: Iterable[dict[str, Any]],
    sources: Sequence[str],
    where: str,
    required: Sequence[str] = REQUIRED_COLUMNS,
) -> Runs:
    """Validate raw rows (dicts of strings or numbers) into a `Runs`; the first bad value is a UserError."""
    rows = list(rows)
    if not rows:
        raise UserError(f"{where}: the runs table is empty; it needs one row per finetuning run")
    present = set().union(*(r.keys() for r in rows))
    missing = [c for c in required if c not in present]
    if missing:
        raise UserError(
            f"{where}: missing columns {', '.join(missing)}; a runs table needs {', '.join(required)}"
        )
    numeric = [c for c in NUMERIC_COLUMNS + OPTIONAL_COLUMNS if c in present]
    numeric += ["steps"] if "steps" in present else []
    values = {c: np.empty(len(rows)) for c in numeric}
    domain, run_ids = [], []
    for i, (row, src) in enumerate(zip(rows, sources)):
        run_id = str(row.get("run_id") or "").strip() or src
        label = f"{src} (run {run_id})" if run_id != src else src
        dom = "" if row.get("domain") is None else str(row.get("domain")).strip()
        if "domain" in required and not dom:
            raise UserError(f"{label}: domain is empty; give every run the name of its finetuning domain")
        domain.append(dom)
        run_ids.append(run_id)
        for c in numeric:
            values[c][i] = _number(row.get(c), c, label)
    extra_names = sorted(present - set(numeric) - {"domain", "run_id"})
    extra = {c: [r.get(c) for r in rows] for c in extra_names}
    return Runs(
        domain=np.array(domain, dtype=object),
        values=values,
        run_id=run_ids,
        source=list(sources),
        extra=extra,
    )


# optional columns no law reads: they describe the run (forgetting may be < 0, p_final may be 0)
_DESCRIPTIVE = ("inject_fraction_final", "forgetting")


def _number(raw: Any, column: str, label: str) -> float:
    fix = "fix or drop that run"
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if column in ("steps",) + _DESCRIPTIVE:  # absent from runs written before these columns existed
            return math.nan
        raise UserError(f"{label}: {column} is empty; {fix}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise UserError(f"{label}: {column} = {raw!r} is not a number; {fix}") from None
    if column == "steps":
        return value
    if not math.isfinite(value):
        raise UserError(f"{label}: {column} = {value} is not a finite number; {fix}")
    if column in SIZE_COLUMNS + LOSS_COLUMNS + ("ft_loss_base",) and value <= 0:
        raise UserError(f"{label}: {column} = {value:g} must be positive; {fix}")
    if column == "anchor_decay" and value < 0:
        raise UserError(f"{label}: anchor_decay = {value:g} must be >= 0; {fix}")
    if column in ("inject_fraction", "inject_fraction_final") and not 0 <= value <= 1:
        raise UserError(f"{label}: {column} = {value:g} must be a fraction in [0, 1] (0.01 = 1 %); {fix}")
    return value


def read_runs(path: str | os.PathLike[str], required: Sequence[str] = REQUIRED_COLUMNS) -> Runs:
    """Read a runs table: a .csv / .parquet file, one summary.json, or a directory tree of summary.json."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("summary.json"))
        if not files:
            raise UserError(
                f"{path}: no summary.json found under this directory; point --runs at a sweep "
                f"output directory or a runs CSV"
            )
        rows = [_read_summary(f) for f in files]
        return from_rows(rows, [str(f) for f in files], str(path), required)
    if not path.is_file():
        raise UserError(f"{path}: no such runs table; pass a .csv, .parquet or a directory of summary.json")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise UserError(f"{path}: the runs table is empty; it needs a header row and one row per run")
            rows = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
        return from_rows(
            rows,
            [f"{path} line {reader_line}" for reader_line in range(2, len(rows) + 2)],
            str(path),
            required,
        )
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(
                f"{path}: reading Parquet needs pyarrow; pip install pyarrow or pass a CSV"
            ) from None
        rows = pq.read_table(path).to_pylist()
        return from_rows(rows, [f"{path} row {i + 1}" for i in range(len(rows))], str(path), required)
    if suffix == ".json":
        return from_rows([_read_summary(path)], [str(path)], str(path), required)
    raise UserError(f"{path}: unknown runs-table format {suffix!r}; use .csv, .parquet or summary.json files")


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}); rerun or delete that run") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a summary.json must hold an object with keys {', '.join(SUMMARY_KEYS)}")
    return data


def read_mlflow(experiment: str, required: Sequence[str] = REQUIRED_COLUMNS) -> Runs:
    """Read the runs of an MLflow experiment (honours MLFLOW_TRACKING_URI).

    Each run's `summary.json` artifact is used when present; otherwise its metrics, params and tags with
    the same names (the tracker logs summary.json's keys as metrics).
    """
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--mlflow needs the mlflow package; pip install mlflow==3.17.2") from None
    from dist_forget.tracking.store import install

    install()  # summary.json artifacts of a local sqlite store live beside it (tracking/store.py)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        uri = redact_uri(mlflow.get_tracking_uri())
        raise UserError(
            f"MLflow experiment {experiment!r} not found at {uri}; check the name or MLFLOW_TRACKING_URI"
        )
    rows, sources = [], []
    for run in _all_runs(client, exp.experiment_id):
        if run.data.tags.get("stage") in ("pretrain", "sweep"):
            continue  # a sweep's parent run and its base models: not finetunes (the engine tags `stage`)
        row: dict[str, Any] = {}
        row.update(run.data.tags)
        row.update(run.data.params)
        row.update(run.data.metrics)
        summary = _mlflow_summary(client, run.info.run_id)
        if summary is not None:
            row.update(summary)
        row.setdefault("run_id", run.info.run_id)
        if not any(k in row for k in NUMERIC_COLUMNS):
            continue  # a parent or bookkeeping run, not a finetune
        rows.append(row)
        sources.append(f"MLflow run {run.info.run_id}")
    return from_rows(rows, sources, f"MLflow experiment {experiment!r}", required)


def _all_runs(client: Any, experiment_id: str) -> list[Any]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _mlflow_summary(client: Any, run_id: str) -> dict[str, Any] | None:
    import tempfile

    try:
        names = {a.path for a in client.list_artifacts(run_id)}
    except Exception:  # an unreadable artifact store: fall back to metrics
        return None
    if "summary.json" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "summary.json", tmp)
        return _read_summary(Path(local))


def write_runs_csv(runs: Runs, path: str | os.PathLike[str]) -> None:
    """Write a runs table as CSV (atomically), the format `read_runs` reads back."""
    from dist_forget.io import atomic_path

    numeric = list(runs.values)
    header = ["run_id", "domain"] + numeric + list(runs.extra)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i in range(len(runs)):
            writer.writerow(
                [runs.run_id[i], runs.domain[i]]
                + [repr(float(runs.values[c][i])) for c in numeric]
                + [runs.extra[c][i] for c in runs.extra]
            )


CHINCHILLA_CSV = Path(__file__).parent / "data" / "chinchilla_epoch_svg_extracted.csv"


def chinchilla_runs(path: Path = CHINCHILLA_CSV) -> Runs:
    """Epoch AI's digitized Chinchilla runs as a runs table, the 5 highest losses dropped (240 left),
    exactly as in their published refit; D = C / (6 N). Used to check the fitter against that refit."""
    with open(path, newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: float(r["loss"]))[:-5]
    table = [
        {
            "domain": "chinchilla",
            "model_params": r["Model Size"],
            "ft_loss": r["loss"],
            "target_tokens": float(r["Training FLOP"]) / (6 * float(r["Model Size"])),
        }
        for r in rows
    ]
    return from_rows(
        table,
        [f"row {i}" for i in range(len(table))],
        str(path),
        required=("domain", "model_params", "target_tokens", "ft_loss"),
    )


# the knobs that make two runs the same experiment: rows agreeing on these differ only in their seed
SEED_GROUP_COLUMNS = ("model_params", "target_tokens", "inject_fraction", "anchor_decay")


def seed_means(runs: Runs, where: str) -> tuple[Runs, dict[str, dict[str, int]]]:
    """One row per (domain, N, D, p, anchor_decay): the mean of its seeds' rows, for fitting on the mean.

    Every numeric column is averaged: the losses, and with them forgetting = pt_loss - pt_loss_base (the
    mean is linear, so the averaged columns stay consistent; pt_loss_base is one base model's loss, equal
    across seeds). A row that stands alone is kept as it is. `extra["n_seeds"]` says how many runs each
    row averages (a seed mean's noise is σ/√m). Returns the table and, per domain, how many points are
    means of several runs and of how many runs.
    """
    if "seed" not in runs.extra:
        raise UserError(f"{where}: --seed-mean needs a seed column; add one or drop --seed-mean")
    keys = [c for c in SEED_GROUP_COLUMNS if c in runs.values]
    groups: dict[tuple, list[int]] = {}
    for i in range(len(runs)):
        groups.setdefault((runs.domain[i], *(runs.values[c][i] for c in keys)), []).append(i)
    first = [rows[0] for rows in groups.values()]
    out = runs.subset(first)
    out.values = {c: np.array([v[rows].mean() for rows in groups.values()]) for c, v in runs.values.items()}
    out.extra["n_seeds"] = [len(rows) for rows in groups.values()]
    out.extra["seed"] = ["+".join(str(runs.extra["seed"][i]) for i in rows) for rows in groups.values()]
    out.run_id = [
        runs.run_id[rows[0]] if len(rows) == 1 else f"{runs.run_id[rows[0]]} (mean of {len(rows)} seeds)"
        for rows in groups.values()
    ]
    averaged: dict[str, dict[str, int]] = {}
    for (domain, *_), rows in groups.items():
        counts = averaged.setdefault(str(domain), {"points_averaged": 0, "runs_averaged": 0})
        if len(rows) > 1:
            counts["points_averaged"] += 1
            counts["runs_averaged"] += len(rows)
    return out, dict(sorted(averaged.items()))
