"""Expand a sweep config into its points: deterministic order, a stable name and command per point.

The name encodes every grid value (`cpu-1m_code_D100000_p0.01_a0_s0`), so a point's folder is the same
on every expansion: that is what makes a killed sweep resumable and a finished run recognisable.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dist_forget.config import merge, parse_overrides, read_yaml
from dist_forget.errors import UserError
from dist_forget.models.ladder import shape_of
from dist_forget.schema import SUMMARY_FILE
from dist_forget.sweep.config import Grid, SweepConfig


@dataclass
class Point:
    name: str
    stage: str  # "pretrain" or "finetune"
    out_dir: str  # absolute
    argv: list[str]
    needs: str | None = None  # a point that must finish first (the pretrained model)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> Path:
        return Path(self.out_dir) / SUMMARY_FILE

    def done(self) -> bool:
        return self.summary.is_file()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep_dir(cfg: SweepConfig) -> Path:
    return Path(cfg.out_dir or f"work/sweeps/{cfg.name}").resolve()


def run_name(size: str, domain: str, target_tokens: int, p: float, anchor: float, seed: int) -> str:
    return f"{size}_{domain}_D{target_tokens}_p{p:g}_a{anchor:g}_s{seed}"


def _fill(templates: dict[str, str], values: dict[str, Any], where: str) -> list[str]:
    out = []
    for key, template in templates.items():
        try:
            out.append(f"{key}={template.format_map(values)}")
        except KeyError as exc:
            known = ", ".join("{" + k + "}" for k in values)
            raise UserError(
                f"{where}.set.{key} = {template!r} uses {{{exc.args[0]}}}, unknown here; use {known}"
            ) from None
    return out


def _pretrain_steps(cfg: SweepConfig, size: str) -> tuple[int, int]:
    """(steps, tokens) so that max(tokens_per_param · N, min_tokens) tokens are seen (whole steps)."""
    stage = cfg.pretrain
    assert stage is not None
    raw = merge(read_yaml(stage.config), parse_overrides(stage.overrides))
    batch = stage.batch_size or (raw.get("train") or {}).get("batch_size")
    seq_len, vocab = stage.seq_len, stage.vocab_size
    if not seq_len or (stage.count == "total" and not vocab):
        manifest = Path(str((raw.get("data") or {}).get("target", ""))) / "manifest.json"
        try:
            read = json.loads(manifest.read_text())
            seq_len, vocab = seq_len or int(read["seq_len"]), vocab or int(read["vocab_size"])
        except (OSError, KeyError, ValueError):
            raise UserError(
                f"sweep pretrain: cannot read seq_len and vocab_size from {manifest}; prepare the data first "
                f"(dist-forget data prepare) or set pretrain.seq_len and pretrain.vocab_size"
            ) from None
    if not batch:
        raise UserError(f"sweep pretrain: {stage.config} has no train.batch_size; set pretrain.batch_size")
    shape = shape_of(size)
    params = shape.total_params(vocab) if stage.count == "total" else shape.non_embedding_params()
    tokens = max(stage.tokens_per_param * params, stage.min_tokens)
    steps = max(1, math.ceil(tokens / (int(batch) * seq_len)))
    return steps, steps * int(batch) * seq_len


def _grids(cfg: SweepConfig) -> list[Grid]:
    base = asdict(cfg.grid)
    return [cfg.grid] + [Grid(**{**base, **extra}) for extra in cfg.extra_grids]


def expand(cfg: SweepConfig) -> list[Point]:
    """All points: pretraining runs (one per size) first, then the finetune grid, de-duplicated."""
    root = sweep_dir(cfg)
    command = list(cfg.command) or [sys.executable, "-m", "dist_forget.cli"]
    points: list[Point] = []
    pretrain_dirs: dict[str, str] = {}
    if cfg.pretrain is not None:
        stage = cfg.pretrain
        for size in stage.sizes:
            steps, tokens = _pretrain_steps(cfg, size)
            name, out = f"pretrain-{size}", str(root / "pretrain" / size)
            values = {"size": size, "steps": steps, "seed": stage.seed, "tokens": tokens}
            argv = [*command, "pretrain", "--config", stage.config, *cfg.resume_args, *stage.overrides,
                    *_fill(stage.set, values, "pretrain"), f"out_dir={out}", f"name={name}"]  # fmt: skip
            points.append(Point(name, "pretrain", out, argv, None, values))
            pretrain_dirs[size] = out
    ft = cfg.finetune
    seen: set[str] = set()
    for g in _grids(cfg):
        sizes = g.sizes or (cfg.pretrain.sizes if cfg.pretrain else [])
        domains = g.domains or list(ft.domains)
        if not sizes or not g.target_tokens:
            raise UserError(
                "sweep grid: needs sizes (or pretrain.sizes) and target_tokens, e.g. [100000, 1000000]"
            )
        for size in ft.size_overrides:
            if size not in sizes and size not in (cfg.pretrain.sizes if cfg.pretrain else []):
                raise UserError(
                    f"sweep finetune.size_overrides: {size!r} is not a size of this sweep "
                    f"({', '.join(sizes)})"
                )
        for domain in domains:
            if domain not in ft.domains:
                raise UserError(
                    f"sweep grid.domains: {domain!r} is not in finetune.domains ({', '.join(ft.domains)})"
                )
        for size, domain, d, p, a, seed in itertools.product(
            sizes, domains, g.target_tokens, g.inject_fraction, g.anchor_decay, g.seeds
        ):
            name = run_name(size, domain, d, p, a, seed)
            if name in seen:
                continue
            seen.add(name)
            out = str(root / "finetune" / name)
            values = {"size": size, "domain": domain, "domain_dir": ft.domains[domain], "target_tokens": d,
                      "inject_fraction": p, "anchor_decay": a, "seed": seed}  # fmt: skip
            if size in pretrain_dirs:
                values["pretrain_dir"] = pretrain_dirs[size]
            argv = [*command, "finetune", "--config", ft.config, *cfg.resume_args, *ft.overrides,
                    *ft.size_overrides.get(size, []), *_fill(ft.set, values, "finetune"), f"out_dir={out}",
                    f"name={name}"]  # fmt: skip
            needs = f"pretrain-{size}" if size in pretrain_dirs else None
            points.append(Point(name, "finetune", out, argv, needs, values))
    return points
