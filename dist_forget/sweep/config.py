"""The sweep YAML (configs/sweep/*.yaml): stages, grid, where runs go, how they are launched.

A sweep never knows what a run *is*: each point becomes
`COMMAND STAGE --config CONFIG --resume auto key=value...`
where the overrides come from the stage's `set:` templates filled with the point's values, e.g.
`data.inject_fraction: "{inject_fraction}"`. The defaults of `set:` match the engine's RunConfig keys.
Placeholders: {size} {domain} {domain_dir} {target_tokens} {inject_fraction} {anchor_decay} {seed}
{pretrain_dir} (finetune) and {size} {steps} {seed} (pretrain); `out_dir` and `name` are always set.
A point at inject_fraction `auto` also gets `data.max_forgetting` (one point per budget in
grid.max_forgetting) and, from the `adaptive:` section, `data.inject_max` and `data.inject_prior`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dist_forget.errors import UserError
from dist_forget.tracking.config import TrackingConfig


def _pretrain_set() -> dict[str, str]:
    return {"model.size": "{size}", "schedule.steps": "{steps}", "train.seed": "{seed}"}


def _finetune_set() -> dict[str, str]:
    return {
        "model.init_from": "{pretrain_dir}",
        "data.target": "{domain_dir}",
        "domain": "{domain}",
        "data.target_tokens": "{target_tokens}",
        "data.inject_fraction": "{inject_fraction}",
        "optim.anchor_decay": "{anchor_decay}",
        "train.seed": "{seed}",
        "data.seed": "{seed}",
    }


@dataclass
class PretrainStage:
    """One model per ladder size, trained for tokens_per_param · N tokens (N = non-embedding params)."""

    config: str = ""  # the pretrain run YAML each size starts from (configs/pretrain/)
    sizes: list[str] = field(default_factory=list)  # ladder names (configs/model/), one pretrained model each
    tokens_per_param: float = 20.0  # Chinchilla-like; tokens = tokens_per_param · (the parameters below)
    # which parameters tokens_per_param counts: "total" includes the (tied) embedding, which dominates
    # the micro sizes; "non_embedding" is the N of the laws
    count: Literal["total", "non_embedding"] = "non_embedding"
    # a floor on those tokens: the tiniest sizes would otherwise stop near the uniform-guess loss, where a
    # finetune lowers the pretraining loss too and forgetting cannot be measured
    min_tokens: int = 0
    seq_len: int = 0  # tokens per sequence; 0 = read from the manifest.json of the config's data.target
    vocab_size: int = 0  # for count: total; 0 = read from that manifest.json
    batch_size: int = 0  # sequences per step; 0 = the config's train.batch_size
    seed: int = 0  # the {seed} of every pretrain run
    overrides: list[str] = field(default_factory=list)  # key=value overrides of every pretrain run
    set: dict[str, str] = field(
        default_factory=_pretrain_set
    )  # run key -> template filled per size ({size} {steps} {seed})

    def validate(self) -> None:
        if not self.config or not self.sizes:
            raise UserError(
                "sweep pretrain: set pretrain.config (a YAML in configs/pretrain/) and pretrain.sizes"
            )
        if self.tokens_per_param <= 0:
            raise UserError(f"sweep pretrain.tokens_per_param = {self.tokens_per_param} must be > 0; try 20")


@dataclass
class FinetuneStage:
    config: str = ""  # the finetune run YAML every point starts from (configs/finetune/)
    domains: dict[str, str] = field(default_factory=dict)  # domain name → its shard dir ({domain_dir})
    overrides: list[str] = field(default_factory=list)  # key=value overrides of every finetune run
    # per ladder size, after `overrides`: e.g. a smaller lr for larger models, as every LM ladder tunes
    size_overrides: dict[str, list[str]] = field(default_factory=dict)
    set: dict[str, str] = field(default_factory=_finetune_set)  # run key -> template filled per point

    def validate(self) -> None:
        if not self.config or not self.domains:
            raise UserError(
                "sweep finetune: set finetune.config (a YAML in configs/finetune/) and "
                "finetune.domains (name: shard dir)"
            )


@dataclass
class Grid:
    """The cross product of these lists is the set of finetune points."""

    sizes: list[str] = field(default_factory=list)  # default: pretrain.sizes
    domains: list[str] = field(default_factory=list)  # default: every finetune.domains key
    target_tokens: list[int] = field(default_factory=list)  # D values: unique target tokens of a finetune
    # a fraction, or `auto`: the run adapts p to hold forgetting under each budget of max_forgetting
    inject_fraction: list[float | Literal["auto"]] = field(default_factory=lambda: [0.0])
    max_forgetting: list[float] = field(default_factory=list)  # budgets ε (nats/token) of the auto points
    # budgets as shares of the forgetting that adaptive.baseline measured at p = 0 on the same point
    # (e.g. [0.7, 0.5]): one ε per (size, domain, D) where the p = 0 forgetting spans 10x across a ladder
    max_forgetting_share: list[float] = field(default_factory=list)
    anchor_decay: list[float] = field(default_factory=lambda: [0.0])  # Anchored AdamW decays (0 = AdamW)
    seeds: list[int] = field(default_factory=lambda: [0])  # data and init seeds: one run each


@dataclass
class AdaptiveArms:
    """The forgetting-budget comparison: inject_fraction `auto` against the static planner.

    `prior_fit` (a fit.json of `dist-forget fit`) is each auto run's data.inject_prior, so it starts from
    the planner's p for its ε; with `static_arm`, every auto point gets a twin run at that constant p
    (laws/plan.py, capped at inject_max as the controller is), named `..._pplan_..-eps<ε>`: the
    comparison then isolates what adapting p online adds over the plan it starts from.
    """

    prior_fit: str = ""  # empty: auto runs start from the controller's default p and there is no static arm
    static_arm: bool = False  # a twin run at the planner's constant p for every auto point
    inject_max: float = 0.2  # data.inject_max of the auto runs and the cap on the static arm's p
    # a sweep folder holding this grid's p = 0 runs under the same protocol (e.g. work/sweeps/micro): the
    # budgets of grid.max_forgetting_share are shares of their forgetting, and they are the p = 0 arm of
    # `study adaptive --baseline` (not rerun here)
    baseline: str = ""

    def validate(self) -> None:
        if self.static_arm and not self.prior_fit:
            raise UserError(
                "sweep adaptive.static_arm needs adaptive.prior_fit, the fit.json the planner reads "
                "(e.g. work/sweeps/micro/fit/fit.json)"
            )
        if not 0 < self.inject_max < 1:
            raise UserError(f"sweep adaptive.inject_max = {self.inject_max} must be in (0, 1) (0.2 = 20 %)")


@dataclass
class FitStage:
    enabled: bool = True  # fit the laws to runs.csv after the grid
    # Arguments of `dist-forget fit` after the grid; {runs_csv} and {sweep_dir} are filled in.
    args: list[str] = field(default_factory=lambda: ["--runs", "{runs_csv}", "--out", "{sweep_dir}/fit"])


@dataclass
class SlurmConfig:
    """For `--backend slurm`: each point is one task of an `sbatch --array` job."""

    partition: str = ""  # sbatch --partition; empty = the cluster default
    time: str = "04:00:00"  # sbatch --time of each task
    cpus_per_task: int = 1  # sbatch --cpus-per-task
    mem: str = ""  # sbatch --mem, e.g. 8G; empty = the cluster default
    sbatch: list[str] = field(default_factory=list)  # extra #SBATCH options, e.g. --gpus-per-task=1
    setup: list[str] = field(default_factory=list)  # shell lines run first, e.g. source .venv/bin/activate
    poll_s: float = 5.0  # --wait: seconds between two looks at the queue (squeue)


@dataclass
class SweepConfig:
    name: str = ""  # the sweep's name: its folder and MLflow parent run
    out_dir: str = ""  # the sweep folder (runs, runs.csv, fit/); default work/sweeps/<name>
    # a folder to commit with the study (e.g. reports/micro/runs): each finished run's small outputs are
    # copied there as it lands, and copied back into an empty sweep folder before any run starts when the
    # sweep still runs the command that made them (sweep/keep.py), so a study can go on on another machine;
    # "" = none
    keep_runs: str = ""
    # what starts a run; default: this Python's `-m dist_forget.cli`
    command: list[str] = field(default_factory=list)
    # added to every run's command line, so that a rerun of the sweep continues each run
    resume_args: list[str] = field(default_factory=lambda: ["--resume", "auto"])
    max_parallel: int = 0  # runs at once; 0 = CPU cores // threads_per_run
    threads_per_run: int = 1  # OMP_NUM_THREADS of each run
    pretrain: PretrainStage | None = None
    finetune: FinetuneStage = field(default_factory=FinetuneStage)
    grid: Grid = field(default_factory=Grid)
    extra_grids: list[dict[str, Any]] = field(default_factory=list)  # partial grids over `grid`
    adaptive: AdaptiveArms = field(default_factory=AdaptiveArms)
    fit: FitStage = field(default_factory=FitStage)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UserError(f"sweep name = {self.name!r}: set `name:` to letters, digits, - _ . (e.g. micro)")
        if self.max_parallel < 0 or self.threads_per_run < 1:
            raise UserError(
                f"sweep max_parallel = {self.max_parallel} must be >= 0 and "
                f"threads_per_run = {self.threads_per_run} >= 1"
            )
        known = set(Grid.__dataclass_fields__)
        for i, extra in enumerate(self.extra_grids):
            unknown = sorted(set(extra) - known)
            if unknown:
                raise UserError(
                    f"sweep extra_grids[{i}]: unknown key {unknown[0]!r}; known: {', '.join(sorted(known))}"
                )
