"""The records every stage after training shares, defined once (standard library only: no torch, no numpy).

- **summary.json / the runs table.** A run writes one `summary.json` holding exactly `SUMMARY_KEYS`, in
  that order; the sweep gathers them into runs.csv and the law fitter reads them (`laws/table.py`).
  `REQUIRED_COLUMNS` are what a runs table must have to be fitted; `steps` and `run_id` are optional
  there (a hand-made table may lack them).
- **metrics.jsonl.** One JSON object per line, written by rank 0 of a run: `{"kind": "train", "step": s,
  "loss": ..., "lr": ..., ...}` after each optimizer step and `{"kind": "eval", "step": s, "ft_loss": ...,
  "pt_loss": ...}` at each evaluation (step 0 is the starting model). `read_metrics` is the one reader.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

# ------------------------------------------------------------------------------ summary.json / runs table

SIZE_COLUMNS = ("model_params", "target_tokens")  # N (non-embedding parameters) and D (unique target tokens)
LOSS_COLUMNS = ("ft_loss", "pt_loss", "pt_loss_base")  # nats per token
NUMERIC_COLUMNS = SIZE_COLUMNS + ("inject_fraction", "anchor_decay") + LOSS_COLUMNS
REQUIRED_COLUMNS = ("domain",) + NUMERIC_COLUMNS
# Read when present: the starting model's target loss (the Kalajdzievski form relates forgetting to it);
# the p of the last step (differs from inject_fraction, the mean p up to the best step, only under
# data.inject_fraction=auto) and forgetting = pt_loss - pt_loss_base (nats/token, at the best step).
OPTIONAL_COLUMNS = ("ft_loss_base", "inject_fraction_final", "forgetting")
SUMMARY_KEYS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS + ("steps", "run_id")  # summary.json, in this order
SUMMARY_FILE = "summary.json"


def summary_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` as a summary.json object: exactly SUMMARY_KEYS, in their order (a missing or extra key is a
    bug in the writer, so it raises KeyError / ValueError rather than a UserError)."""
    extra = sorted(set(values) - set(SUMMARY_KEYS))
    if extra:
        raise ValueError(f"summary.json takes only {', '.join(SUMMARY_KEYS)}; got also {', '.join(extra)}")
    return {key: values[key] for key in SUMMARY_KEYS}


# ------------------------------------------------------------------------------------------- metrics.jsonl

METRICS_FILE = "metrics.jsonl"
Kind = Literal["train", "eval"]


def train_record(step: int, metrics: Mapping[str, float]) -> dict[str, Any]:
    """The metrics.jsonl line of optimizer step `step` (loss, lr, grad_norm, tokens_per_s, mfu, ...)."""
    return {"kind": "train", "step": step, **metrics}


def eval_record(step: int, ft_loss: float, pt_loss: float) -> dict[str, Any]:
    """The metrics.jsonl line of an evaluation after `step` steps: target and pretraining validation loss."""
    return {"kind": "eval", "step": step, "ft_loss": ft_loss, "pt_loss": pt_loss}


def read_metrics(
    path: str | Path, kind: Kind | None = None, until_step: int | None = None
) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl in file order: only those of `kind` when given, only those at
    step <= `until_step` when given (what a resume from that step keeps)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [
        r
        for r in records
        if (kind is None or r["kind"] == kind) and (until_step is None or r["step"] <= until_step)
    ]
