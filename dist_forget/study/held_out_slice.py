"""Forgetting on a held-out slice: each finished run's best model (the bottom of its U-curve) and the model it
started from, evaluated on validation sequences of a shard folder the runs never trained on.

A run measures forgetting on the validation split of the corpus it injects from. When that corpus only stands
in for the model's pretraining data (a downloaded model was trained on data we do not have), injection also
teaches the very distribution forgetting is measured on, and forgetting can fall below zero. A slice of the
model's own pretraining distribution that nothing injects (Python source for SmolLM2, whose pretraining had
code) measures forgetting without that confound. The evaluation is the runs' own: the same precision (each
run's report.json), sequences in the same fixed order, the same next-token loss; evaluated on a run's own
pretraining shards it gives back that run's pt_loss and pt_loss_base.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dist_forget.data.manifest import read_manifest
from dist_forget.errors import UserError
from dist_forget.io import write_text_atomic

COLUMNS = ("run", "domain", "target_tokens", "inject_fraction", "anchor_decay", "seed", "best_step", "precision",
           "slice_loss", "slice_loss_base", "slice_forgetting", "pt_forgetting",
           "slice_fingerprint", "sequences", "spread")  # fmt: skip


def _earlier_rows(out: Path, settings: dict[str, str]) -> dict[str, dict[str, str]]:
    """Rows an earlier call wrote to `out` with the same slice, sequences and spread, by run name."""
    try:
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    return {r["run"]: r for r in rows if all(r.get(k) == v for k, v in settings.items())}


def finished_runs(sweep: Path) -> list[Path]:
    """The sweep's finetune run folders that finished (summary.json). A run copied from elsewhere may lack its
    best model (best/): it is measured only if an earlier call kept its row."""
    root = sweep / "finetune"
    if not root.is_dir():
        raise UserError(f"{root}: no finetune runs; --sweep takes a sweep's out_dir (it holds finetune/)")
    runs = [d for d in sorted(root.iterdir()) if (d / "summary.json").is_file()]
    if not runs:
        raise _nothing_to_measure(root)
    return runs


def _nothing_to_measure(root: Path) -> UserError:
    return UserError(
        f"{root}: no finished run with its best model (summary.json and best/); finish the sweep first"
    )


def slice_loss(
    model_dir: Path, shards: Path, sequences: int, micro_batch: int, precision: str, spread: bool = False
) -> float:
    """Mean next-token loss (nats/token) of the HF model in `model_dir` on the first `sequences` validation
    sequences of `shards`, under bf16 autocast when `precision` is bf16 (as the run evaluated). With `spread`,
    `sequences` evenly spaced over the whole validation split instead (every k-th): a split stored document by
    document then yields all its documents, not the first few."""
    import torch

    from dist_forget.data.mixture import validation_batches
    from dist_forget.data.tokenizer import file_sha256
    from dist_forget.engine.backend import causal_lm_loss_sum
    from dist_forget.models.hf import load_folder

    manifest = read_manifest(shards)
    tok = model_dir / "tokenizer.json"
    if tok.is_file() and file_sha256(tok) != manifest.tokenizer_sha256:
        raise UserError(
            f"{shards}: shards tokenized with another tokenizer than {tok}; shard the slice with the model's "
            f"tokenizer (`dist-forget data prepare-model --domains ...`)"
        )
    model = load_folder(model_dir).eval()
    if manifest.vocab_size > model.config.vocab_size:
        raise UserError(f"{shards}: a {manifest.vocab_size}-token vocabulary, but {model_dir} has "
                        f"{model.config.vocab_size}; shard the slice with the model's tokenizer")  # fmt: skip
    every = max(1, manifest.split("val").sequences // sequences) if spread else 1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        for ids in validation_batches(shards, micro_batch, every * sequences, rank=0, world_size=every):
            s, n = causal_lm_loss_sum(model, ids)
            total, count = total + float(s), count + n
    return total / count if count else math.nan


def held_out_slice(
    sweep: Path, shards: Path, out: Path, sequences: int = 128, micro_batch: int = 8, spread: bool = False
) -> int:
    """Forgetting of every finished run of a sweep on a held-out slice it never trained on (CSV).

    Rerun as the sweep grows: rows of --out measured with the same slice, sequences and spread are kept for
    runs whose summary has not changed, so only new runs are evaluated.

    For each finetune run with summary.json and best/, the loss of its best model and of the model it started
    from (model.init_from, evaluated once per precision) on --sequences validation sequences of --shards;
    slice_forgetting = slice_loss - slice_loss_base, beside the run's own forgetting on its pretraining
    validation set (pt_forgetting). Losses in nats per token.

    Args:
        sweep: the sweep's out_dir (it holds finetune/<run>/)
        shards: shard folder of the slice, made with the runs' tokenizer (e.g. work/data-smollm2/shards/code)
        out: the CSV to write (one row per run)
        sequences: validation sequences evaluated (the runs' train.eval_sequences is the comparable count)
        micro_batch: sequences per forward pass
        spread: take the sequences evenly spaced over the whole validation split, not the first ones (the runs'
            own order, which reproduces their losses on their own shards)
    """
    from dist_forget.models.hf import resolve_init

    if not shards.is_dir():
        raise UserError(
            f"--shards {shards}: no such folder; make it with `dist-forget data prepare-model --domains ...`"
        )
    runs = finished_runs(sweep)
    settings = {"slice_fingerprint": read_manifest(shards).fingerprint, "sequences": str(sequences),
                "spread": str(spread)}  # fmt: skip
    earlier = _earlier_rows(out, settings)  # a growing sweep: a finished run's best model does not change
    start, base_losses, rows = time.monotonic(), {}, []
    for i, run in enumerate(runs, 1):
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "run_config.json").read_text())
        report = json.loads((run / "report.json").read_text()) if (run / "report.json").is_file() else {}
        precision = report.get("precision", "fp32")
        base = resolve_init(
            str(config["model"]["init_from"]), config["model"].get("cache_dir") or "work/models"
        )
        old = earlier.get(run.name)
        same = (str(summary.get("steps")), str(summary.get("forgetting")), precision)
        if old and (old["best_step"], old["pt_forgetting"], old["precision"]) == same:
            rows.append(old)
            base_losses.setdefault((base, precision), float(old["slice_loss_base"]))
            print(f"[{i}/{len(runs)}] {run.name}: kept from {out}", flush=True)
            continue
        if not (run / "best" / "config.json").is_file():
            print(f"[{i}/{len(runs)}] {run.name}: skipped, no best model (best/) and no row of it in {out}")
            continue
        if (base, precision) not in base_losses:
            base_losses[base, precision] = slice_loss(base, shards, sequences, micro_batch, precision, spread)
        loss = slice_loss(run / "best", shards, sequences, micro_batch, precision, spread)
        row: dict[str, Any] = {
            "run": run.name,
            **{k: summary.get(k) for k in ("domain", "target_tokens", "inject_fraction", "anchor_decay")},
            "seed": config.get("train", {}).get("seed"),
            "best_step": summary.get("steps"),
            "precision": precision,
            "slice_loss": loss,
            "slice_loss_base": base_losses[base, precision],
            "slice_forgetting": loss - base_losses[base, precision],
            "pt_forgetting": summary.get("forgetting"),
            **settings,
        }
        rows.append(row)
        print(f"[{i}/{len(runs)}] {run.name}: slice loss {loss:.4f} (base {row['slice_loss_base']:.4f}), "
              f"forgetting {row['slice_forgetting']:+.4f} on the slice, {row['pt_forgetting']:+.4f} on its "
              f"pretraining set; {time.monotonic() - start:.0f} s", flush=True)  # fmt: skip
    if not rows:
        raise _nothing_to_measure(sweep / "finetune")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out, text.getvalue())
    how = "evenly spaced" if spread else "the first"
    print(f"wrote {out}: {len(rows)} runs on {how} {sequences} validation sequences of {shards}")
    return 0
