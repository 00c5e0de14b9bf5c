"""Expand a sweep config into its points: deterministic order, a stable name and command per point.

The name encodes every grid value (`cpu-1m_code_D100000_p0.01_a0_s0`), so a point's folder is the same
on every expansion: that is what makes a killed sweep resumable and a finished run recognisable. A point
of the forgetting-budget comparison (sweep/config.py: AdaptiveArms) is `..._pauto_a0_s0-eps0.05` (p
adapted to hold ε = 0.05 nats/token) or `..._pplan_a0_s0-eps0.05` (the planner's constant p for that ε);
`arm_of` reads a name back.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dist_forget.config import merge, parse_overrides, read_yaml
from dist_forget.errors import UserError
from dist_forget.laws.plan import budget_p, load_fits
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


AUTO, PLAN = "auto", "plan"  # the p of a name in the adaptive arm and the static-planner arm


def run_name(
    size: str,
    domain: str,
    target_tokens: int,
    p: float | str,
    anchor: float,
    seed: int,
    eps: float | None = None,
) -> str:
    """The point's folder name; `eps` (a forgetting budget) only on the adaptive and planner arms."""
    p_txt = p if isinstance(p, str) else f"{p:g}"
    suffix = "" if eps is None else f"-eps{eps:g}"
    return f"{size}_{domain}_D{target_tokens}_p{p_txt}_a{anchor:g}_s{seed}{suffix}"


_NAME = re.compile(r"_p(?P<p>[^_]+)_a(?P<a>[^_]+)_s(?P<seed>\d+)(?:-eps(?P<eps>[^_]+))?$")


def arm_of(name: str) -> tuple[str, float | None, float, int] | None:
    """(arm, ε, anchor_decay, seed) of a finetune point's name: arm is AUTO, PLAN or the constant p as
    text (`0`, `0.01`); ε is None outside the adaptive and planner arms. None: not a grid point's name."""
    match = _NAME.search(name)
    if match is None:
        return None
    eps = float(match["eps"]) if match["eps"] else None
    return match["p"], eps, float(match["a"]), int(match["seed"])


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
    plans = _Planner(cfg.adaptive.prior_fit)
    baseline = _Baseline(cfg.adaptive.baseline)
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
            values = {"size": size, "domain": domain, "domain_dir": ft.domains[domain], "target_tokens": d,
                      "inject_fraction": p, "anchor_decay": a, "seed": seed}  # fmt: skip
            if size in pretrain_dirs:
                values["pretrain_dir"] = pretrain_dirs[size]
            for name, vals, extra in _arms(cfg, g, values, plans, baseline):
                if name in seen:
                    continue
                seen.add(name)
                out = str(root / "finetune" / name)
                argv = [*command, "finetune", "--config", ft.config, *cfg.resume_args, *ft.overrides,
                        *ft.size_overrides.get(size, []), *_fill(ft.set, vals, "finetune"), *extra,
                        f"out_dir={out}", f"name={name}"]  # fmt: skip
                needs = f"pretrain-{size}" if size in pretrain_dirs else None
                points.append(Point(name, "finetune", out, argv, needs, vals))
    return points


def _arms(
    cfg: SweepConfig, g: Grid, values: dict[str, Any], plans: _Planner, baseline: _Baseline
) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(name, values, extra overrides) of a grid point: itself, or at inject_fraction auto one adaptive
    point per budget ε plus, with adaptive.static_arm, its twin at the planner's constant p."""
    size, domain, d, p, a, seed = (values[k] for k in ("size", "domain", "target_tokens", "inject_fraction",
                                                      "anchor_decay", "seed"))  # fmt: skip
    if p != AUTO:
        return [(run_name(size, domain, d, p, a, seed), values, [])]
    arms = cfg.adaptive
    if not (g.max_forgetting or g.max_forgetting_share) or not all(e > 0 for e in g.max_forgetting):
        raise UserError(
            f"sweep grid: inject_fraction auto needs max_forgetting, a list of budgets > 0 in nats/token "
            f"(e.g. [0.05, 0.1]), or max_forgetting_share; got {g.max_forgetting}"
        )
    if not all(0 < s < 1 for s in g.max_forgetting_share):
        raise UserError(
            f"sweep grid.max_forgetting_share = {g.max_forgetting_share}: each share of the p = 0 forgetting "
            "must be in (0, 1), e.g. [0.7, 0.5]"
        )
    budgets = list(g.max_forgetting)
    if g.max_forgetting_share:
        measured = baseline.forgetting(run_name(size, domain, d, 0.0, a, seed))
        budgets += [float(f"{share * measured:.3g}") for share in g.max_forgetting_share]  # names stay short
    out = []
    for eps in budgets:
        extra = [f"data.max_forgetting={eps}", f"data.inject_max={arms.inject_max}"]
        if arms.prior_fit:
            extra.append(f"data.inject_prior={arms.prior_fit}")
        out.append((run_name(size, domain, d, AUTO, a, seed, eps), {**values, "max_forgetting": eps}, extra))
        if arms.static_arm:
            planned = plans.p(domain, shape_of(size).non_embedding_params(), d, eps, a)
            static = min(planned, arms.inject_max)
            vals = {**values, "inject_fraction": static, "max_forgetting": eps,
                    "planned_p": planned if math.isfinite(planned) else None}  # fmt: skip
            out.append((run_name(size, domain, d, PLAN, a, seed, eps), vals, []))
    return out


class _Baseline:
    """The p = 0 forgetting of adaptive.baseline's finished runs, read from their summary.json by name."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def forgetting(self, name: str) -> float:
        if not self.folder:
            raise UserError(
                "sweep grid.max_forgetting_share needs adaptive.baseline, the sweep folder with the p = 0 "
                "runs (e.g. work/sweeps/micro)"
            )
        path = Path(self.folder) / "finetune" / name / SUMMARY_FILE
        try:
            summary = json.loads(path.read_text())
            return float(summary["pt_loss"] - summary["pt_loss_base"])
        except FileNotFoundError:
            raise UserError(
                f"sweep adaptive.baseline: {path} is missing; finish that p = 0 run first (the baseline "
                "sweep, e.g. make study) or drop its point from the grid"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"sweep adaptive.baseline: {path} has no pt_loss and pt_loss_base; rerun that p = 0 run"
            ) from None


class _Planner:
    """The static arm's p from adaptive.prior_fit (laws/plan.py), the fit read once, each answer cached."""

    def __init__(self, fit: str) -> None:
        self.fit = fit
        self._fits: list[dict[str, Any]] | None = None
        self._cache: dict[tuple[str, float, float, float, float], float] = {}

    def p(self, domain: str, n: float, d: float, eps: float, anchor_decay: float) -> float:
        """The planner's smallest constant p with forgetting <= eps (inf where no p reaches it): the same
        answer the engine starts an adaptive run from (inject_control.read_prior)."""
        key = (domain, n, d, eps, anchor_decay)
        if self._fits is None:
            try:
                self._fits = load_fits(self.fit)
            except UserError as exc:
                raise UserError(f"sweep adaptive.prior_fit: {exc}") from None
        if key not in self._cache:  # plan's errors name `where`, e.g. a domain the fit lacks
            where = f"sweep adaptive.prior_fit = {self.fit}"
            self._cache[key] = budget_p(self._fits, domain, n, d, eps, anchor_decay, where)
        return self._cache[key]
