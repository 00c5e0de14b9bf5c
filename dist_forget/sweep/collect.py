"""After the grid: upload any MLflow fallbacks, gather summary.json files into runs.csv, fit the laws."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from dist_forget.errors import UserError
from dist_forget.laws.table import from_rows, write_runs_csv
from dist_forget.sweep.grid import Point
from dist_forget.tracking.fallback import FALLBACK_NAME


def sync_fallbacks(points: list[Point], say: Any = print) -> None:
    """Runs that could not reach MLflow (e.g. a locked sqlite store) left a JSONL: upload it now."""
    from dist_forget.tracking.commands import sync

    for p in points:
        path = Path(p.out_dir) / FALLBACK_NAME
        if path.is_file():
            try:
                sync(path)
            except UserError as exc:
                say(f"warning: {p.name}: MLflow fallback not uploaded ({exc})")


def write_runs_table(points: list[Point], path: Path) -> int:
    """runs.csv from the finished finetune points (plus their sweep name and seed); returns the row count."""
    rows, sources = [], []
    for p in points:
        if p.stage == "finetune" and p.done():
            row = json.loads(p.summary.read_text())
            row.update(name=p.name, seed=p.values.get("seed"))
            rows.append(row)
            sources.append(str(p.summary))
    if not rows:
        return 0
    # the laws' reader validates every value and names the bad run; its writer owns the column order
    write_runs_csv(from_rows(rows, sources, str(path.parent)), path)
    return len(rows)


def _key(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", part)  # what an MLflow metric key may hold (besides /)


def fit_metrics(fit: dict[str, Any]) -> dict[str, float]:
    """fit.json as metrics of the sweep's parent run, so two sweeps compare in the MLflow UI:
    `fit/<domain>/<form>/<param>` (the fitted value), `.../mre`, `.../max_re`, `.../r2`, `.../heldout_mre`,
    `.../heldout_max_re` (with a holdout) and `.../warnings` (how many diagnostics the fit carries).
    A form names its law (finetune, forgetting, ...), so (domain, form) is (domain, law, form)."""
    out: dict[str, float] = {}
    for rec in fit.get("fits", []):
        prefix = f"fit/{_key(str(rec.get('domain')))}/{_key(str(rec.get('form')))}"
        values = {**(rec.get("params") or {}), "mre": rec.get("mre"), "max_re": rec.get("max_re"),
                  "r2": rec.get("r2")}  # fmt: skip
        held = rec.get("holdout") or {}
        if held:
            values.update(heldout_mre=held.get("mre"), heldout_max_re=held.get("max_re"))
        values["warnings"] = len(rec.get("warnings") or [])
        for name, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"{prefix}/{_key(name)}"] = float(value)
    return out


def run_fit(args: list[str], runs_csv: Path, root: Path, say: Any = print) -> bool:
    """`dist-forget fit ARGS` on the table (a subprocess, like any run); whether it succeeded."""
    filled = [a.format(runs_csv=runs_csv, sweep_dir=root) for a in args]
    cmd = [sys.executable, "-m", "dist_forget.cli", "fit", *filled]
    say(f"fit: {' '.join(cmd[2:])}")
    return subprocess.run(cmd).returncode == 0
