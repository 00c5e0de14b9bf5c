"""The training loop, top to bottom: pretrain and finetune are the same run with different data and init.

stream → model → optimizer → backend → (resume | evaluate the starting model) → steps: train, log,
evaluate both validation splits every `eval_every` steps, keep the best-target-loss checkpoint (bottom of
the U-curve), early stop on patience → final evaluation, checkpoint, HF export, summary.json.

Outputs in `out_dir`: checkpoints/ (see engine/checkpoint.py), metrics.jsonl (one line per step and per
evaluation; what a resume rewrites up to its step), summary.json (exactly the runs-table columns),
report.json (everything else about the run), run_config.json (the resolved config), model/ and best/
(HF folders), loss_curves.png.

MLflow (rank 0): per step `train/*` (loss, lr, grad_norm, tokens_per_s, mfu, inject_fraction[_cum],
injected_sequences cumulative); per evaluation `val/ft_loss`, `val/pt_loss`, `val/best_ft_loss` and, on a
finetune, `val/forgetting` = val/pt_loss − the starting model's; at step 0 `val/pt_loss_base` and
`val/ft_loss_base`; at the end `best/ft_loss`, `best/step` and, on a finetune, `best/pt_loss`,
`best/forgetting`, `best/injected_sequences` (at the bottom of the U-curve, the summary's row). Params,
axis tags and dataset inputs: engine/run_meta.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from dist_forget.checkpoint import init_from
from dist_forget.checkpoint.meta import check_compatible, pack_client, read_meta, unpack_client
from dist_forget.config import flatten, to_dict
from dist_forget.data.mixture import MixedStream, validation_batches
from dist_forget.data.remote import location_name, tokenizer_folder
from dist_forget.engine.backend import Backend, BackendConfig, make_backend
from dist_forget.engine.checkpoint import CheckpointManager, prepare_resume, resolve_resume
from dist_forget.engine.config import RunConfig
from dist_forget.engine.flops import flops_per_token, measure_peak
from dist_forget.engine.schedule import lr_at
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic, write_text_atomic
from dist_forget.models import hf
from dist_forget.redact import redact_tree
from dist_forget.schema import (
    METRICS_FILE,
    SUMMARY_FILE,
    eval_record,
    read_metrics,
    summary_row,
    train_record,
)


@dataclass
class TrainState:
    """Everything about the loop's progress that a resume needs (plain data: goes in the checkpoint)."""

    step: int = 0
    best_ft: float = math.inf
    best_pt: float = math.nan
    best_step: int = 0
    pt_loss_base: float = math.nan
    ft_loss_base: float = math.nan
    bad_evals: int = 0
    rise_after_best: float = 0.0  # highest target loss since the best evaluation, minus the best
    sequences: int = 0
    pretrain_sequences: int = 0
    pretrain_sequences_at_best: int = 0  # injected by the best step: does injection have room to act?
    mlflow_run_id: str | None = None


@dataclass
class _Timer:
    """Step times of the recent past, for tokens/s and ETA that ignore evaluation and checkpoint pauses."""

    times: list[float] = field(default_factory=list)

    def add(self, dt: float) -> None:
        self.times = (self.times + [dt])[-20:]

    def mean(self) -> float:
        return sum(self.times) / len(self.times) if self.times else math.nan


class _NullTracker:
    run_id: str | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_inputs(self, datasets: list[dict[str, Any]]) -> None: ...
    def register_model(self, folder: str | Path, name: str, tags: dict[str, str] | None = None) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def _tracker(
    cfg: RunConfig,
    rank: int,
    run_name: str,
    out: Path,
    resumed_run_id: str | None,
    mode: str,
    sig: dict[str, Any],
    stream: MixedStream,
) -> Any:
    """Rank 0's MLflow tracker; a resume continues the run id its checkpoint recorded (unless the config or
    $MLFLOW_RUN_ID names one). Params are the config as written, so a resume does not 'change' them."""
    if not cfg.tracking.enabled:
        return _NullTracker()
    from dist_forget.tracking import Tracker  # imports mlflow: only when tracking

    tracking = cfg.tracking
    if resumed_run_id and not tracking.run_id and not os.environ.get("MLFLOW_RUN_ID"):
        tracking = replace(tracking, run_id=resumed_run_id)
    from dist_forget.engine.run_meta import datasets, params_and_tags

    flat = flatten(redact_tree(to_dict(cfg)))  # a tracking URI's password never becomes a param
    params, tags = params_and_tags(flat, mode, sig, stream.unique_target_tokens, out)
    tracker = Tracker.create(
        tracking,
        rank=rank,
        run_name=run_name,
        params=params,
        out_dir=out,
        tags=tags,
        source_name=f"dist-forget {mode}",
    )
    if rank == 0:
        tracker.log_inputs(datasets(stream, cfg.data.inject_fraction, out))
    return tracker


def _precision(cfg: RunConfig) -> Literal["fp32", "bf16"]:
    if cfg.train.precision == "auto":
        return "bf16" if torch.cuda.is_available() else "fp32"
    return cfg.train.precision


def _init_folder(cfg: RunConfig, mode: str) -> Path | None:
    """The HF folder a finetune starts from (None for pretraining from scratch)."""
    m = cfg.model
    if mode == "pretrain":
        if m.init_from or not m.size:
            raise UserError(
                "pretrain starts from scratch: set model.size (e.g. cpu-1m) and leave model.init_from empty"
            )
        return None
    if not m.init_from:
        raise UserError("finetune needs model.init_from: a pretrain run folder, an HF folder, or smollm2")
    return init_from.resolve(m.init_from, m.cache_dir)


def _model_factory(cfg: RunConfig, folder: Path | None, stream: MixedStream) -> Any:
    m = cfg.model
    if folder is None:
        return hf.build(m.size, stream.vocab_size, stream.seq_len, cfg.train.seed)
    model = hf.load_folder(folder)
    if m.size:
        from dist_forget.models.ladder import shape_of

        want, have = shape_of(m.size), model.config
        if (want.hidden, want.layers, want.ffn) != (
            have.hidden_size,
            have.num_hidden_layers,
            have.intermediate_size,
        ):
            raise UserError(
                f"model.init_from = {m.init_from} is not size {m.size} (hidden {have.hidden_size}, "
                f"layers {have.num_hidden_layers}); drop model.size or pick the matching one"
            )
    return model


def _check_tokenizer(folder: Path | None, stream: MixedStream) -> None:
    """The shards (target and pretraining) must come from the tokenizer the model folder ships, not just one
    of a size that fits: same vocabulary size, other ids would train silently on the wrong tokens."""
    tok = folder / "tokenizer.json" if folder is not None else None
    if tok is None or not tok.is_file():
        return  # a folder without its tokenizer: only the vocabulary size can be checked (_check_fits)
    from dist_forget.data.tokenizer import file_sha256

    have = file_sha256(tok)
    for manifest in filter(None, (stream.target_manifest, stream.pretrain_manifest)):
        if manifest.tokenizer_sha256 != have:
            raise UserError(
                f"{manifest.where}: shards tokenized with tokenizer sha256 {manifest.tokenizer_sha256}, "
                f"but the model's {tok} has sha256 {have}; re-shard with the model's tokenizer "
                f"(`dist-forget data shard --tokenizer {folder} ...`) or start from the matching model"
            )


def _check_fits(model: Any, stream: MixedStream, where: str) -> None:
    if stream.vocab_size > model.config.vocab_size:
        raise UserError(
            f"data.target shards use a {stream.vocab_size}-token vocabulary but {where} has "
            f"{model.config.vocab_size}: build the shards with the model's tokenizer"
        )
    if stream.seq_len > getattr(model.config, "max_position_embeddings", stream.seq_len):
        raise UserError(
            f"sequence length {stream.seq_len} exceeds {where}'s max_position_embeddings "
            f"{model.config.max_position_embeddings}"
        )


def _make_optimizer(cfg: RunConfig) -> Any:
    from dist_forget.optim import AnchoredAdamW, param_groups

    o = cfg.optim

    def factory(model: torch.nn.Module) -> torch.optim.Optimizer:
        groups = param_groups(model, weight_decay=o.weight_decay, anchor_decay=o.anchor_decay)
        return AnchoredAdamW(
            groups,
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            anchor_decay=o.anchor_decay,
        )

    return factory


class _Log:
    """metrics.jsonl on rank 0: one JSON object per step or evaluation (records: dist_forget/schema.py)."""

    def __init__(self, path: Path, rank: int, keep_until: int | None):
        self.path, self.rank = path, rank
        if rank != 0:
            return
        kept: list[dict[str, Any]] = []
        if keep_until is not None and path.is_file():
            # a resumed run drops what the interrupted run logged after its checkpoint
            kept = read_metrics(path, until_step=keep_until)
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self.fh = open(path, "a")  # noqa: SIM115 - open for the whole run

    def write(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.rank == 0:
            self.fh.close()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(cfg: RunConfig, mode: Literal["pretrain", "finetune"], resume: str = "none") -> dict[str, Any]:
    """Run `cfg` to the end (or early stop); returns the summary row (on every rank)."""
    precision = _precision(cfg)
    backend = make_backend(
        cfg.engine, BackendConfig(cfg.parallel, precision, cfg.optim.grad_clip, cfg.train.seed)
    )
    backend.init_distributed()
    try:
        with ExitStack() as cleanup:
            return _run(cfg, mode, resume, backend, cleanup)
    finally:
        backend.close()


def _end_status(exc_type: type[BaseException] | None) -> str:
    return (
        "FINISHED" if exc_type is None else "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
    )


def _run(cfg: RunConfig, mode: str, resume: str, backend: Backend, cleanup: ExitStack) -> dict[str, Any]:
    rank0 = backend.rank == 0
    out = Path(cfg.out_dir)
    safe_cfg = redact_tree(to_dict(cfg))  # what files, checkpoints and MLflow get: URIs without credentials
    ckpt_root = out / "checkpoints"
    say = print if rank0 else (lambda *a, **k: None)

    error = ""
    if rank0:  # tidy killed saves, check the checkpoint to resume from (or fall back to an intact one)
        try:
            prepare_resume(resume, ckpt_root, cfg.checkpoint.keep, say=lambda m: print(m, flush=True))
        except UserError as exc:
            error = str(exc)
    (failed,) = backend.all_reduce_sum([1.0 if error else 0.0])  # also the barrier before the others read
    if failed:
        raise UserError(
            error or f"rank 0 found no usable checkpoint to resume from in {ckpt_root} (see its error)"
        )
    resume_path = resolve_resume(resume, ckpt_root)
    if resume_path is None and resume == "none" and (ckpt_root / "latest").is_file():
        raise UserError(
            f"out_dir {out} already holds checkpoints; pass --resume auto to continue it "
            "or choose another out_dir"
        )
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
    backend.barrier()

    t, s = cfg.train, cfg.schedule
    stream = MixedStream(cfg.data, rank=backend.dp_rank, world_size=backend.dp_size)
    stream.verify()  # every shard's hash and layout now, not after the model is built and evaluated
    # what the HF exports copy beside the weights; for shards at a URL fetched now, not at the end of the run
    tokenizer_dir = tokenizer_folder(stream.target_manifest) if rank0 else None
    per_step_micro = t.micro_batch * backend.dp_size
    if t.batch_size % per_step_micro:
        raise UserError(
            f"train.batch_size = {t.batch_size} is not a multiple of train.micro_batch "
            f"({t.micro_batch}) × {backend.dp_size} data-parallel ranks; change either"
        )
    grad_accum = t.batch_size // per_step_micro

    init_dir = _init_folder(cfg, mode)
    _check_tokenizer(init_dir, stream)
    model = _model_factory(cfg, init_dir, stream)
    _check_fits(model, stream, cfg.model.init_from or cfg.model.size or "the model")
    sig = hf.signature(model, cfg.model.size)
    hf_config = model.config
    n_params = sig["non_embedding_params"]
    fpt = flops_per_token(
        n_params, hf_config.vocab_size, hf_config.hidden_size, hf_config.num_hidden_layers, stream.seq_len
    )
    if resume_path is not None:  # refuse a mismatch before the backend builds (and shards) anything
        check_compatible(
            read_meta(resume_path),
            resume_path,
            model=sig,
            fingerprint=stream.fingerprint,
            world_size=backend.world_size,
            engine=cfg.engine,
            zero_stage=cfg.parallel.zero_stage,
        )
    handover = [model]
    del model  # the backend owns it from here (and may wrap or shard it): keep no second reference
    backend.build(handover.pop, _make_optimizer(cfg), t.micro_batch, grad_accum)

    ckpt = CheckpointManager(ckpt_root, backend, cfg.checkpoint.keep)
    state = TrainState()
    if resume_path is not None:
        data_state, train_state = unpack_client(backend.load(resume_path.parent, resume_path.name))
        stream.load_state_dict(data_state)
        state = TrainState(**json.loads(train_state))
        say(f"resumed from {resume_path} at step {state.step}")

    run_name = cfg.name or out.resolve().name
    tracker = _tracker(cfg, backend.rank, run_name, out, state.mlflow_run_id, mode, sig, stream)
    # an error or Ctrl-C still sends what is queued and closes the MLflow run as FAILED / KILLED
    cleanup.push(lambda exc_type, *_: tracker.finish(_end_status(exc_type)))
    state.mlflow_run_id = tracker.run_id or state.mlflow_run_id
    log = _Log(out / METRICS_FILE, backend.rank, state.step if resume_path is not None else None)
    cleanup.callback(log.close)
    if rank0:
        write_json_atomic(out / "run_config.json", safe_cfg)
        tracker.log_artifact(out / "run_config.json")

    # the manifests the stream opened (a URL's validation shards go to the same cache); equal manifests
    # are the same shards, evaluated once
    target_val = stream.target_manifest
    pretrain_val = stream.pretrain_manifest or stream.target_manifest

    def evaluate() -> tuple[float, float]:
        kw = dict(
            micro_batch_size=t.micro_batch,
            max_sequences=t.eval_sequences,
            rank=backend.dp_rank,
            world_size=backend.dp_size,
        )
        ft = backend.eval_loss(validation_batches(target_val, **kw))
        pt = ft if pretrain_val == target_val else backend.eval_loss(validation_batches(pretrain_val, **kw))
        return ft, pt

    def client_state() -> dict[str, Any]:
        # train state as a JSON string: weights_only loading accepts it, and inf/nan survive
        return pack_client(stream.state_dict(), json.dumps(asdict(state)), json.dumps(safe_cfg))

    def meta() -> dict[str, Any]:
        return {
            "model": sig,
            "data_fingerprint": stream.fingerprint,
            "world_size": backend.world_size,
            "engine": cfg.engine,
            "zero_stage": cfg.parallel.zero_stage,
            "config": safe_cfg,
            "mode": mode,
        }

    def export(folder: str) -> None:
        sd = backend.full_state_dict()  # collective
        if rank0:
            hf.save_folder(sd, hf_config, out / folder, tokenizer_dir)

    def on_eval(step: int, losses: tuple[float, float] | None = None) -> bool:
        """Evaluate (unless `losses` were just measured), log, keep the best; returns whether it is a new best."""
        ft, pt = losses or evaluate()
        best = ft < state.best_ft
        if best:
            state.best_ft, state.best_pt, state.best_step, state.bad_evals = ft, pt, step, 0
            state.rise_after_best = 0.0
            state.pretrain_sequences_at_best = state.pretrain_sequences
        else:
            state.bad_evals += 1
            state.rise_after_best = max(state.rise_after_best, ft - state.best_ft)
        log.write(eval_record(step, ft, pt))
        values = {"val/ft_loss": ft, "val/pt_loss": pt, "val/best_ft_loss": state.best_ft}
        if mode == "finetune":  # how far the pretraining loss rose above the starting model's
            values["val/forgetting"] = pt - state.pt_loss_base
        tracker.log_metrics(values, step)
        say(
            f"eval step {step}: ft_loss {ft:.4f}  pt_loss {pt:.4f}  (best ft {state.best_ft:.4f} at step "
            f"{state.best_step}{', new best' if best else ''})",
            flush=True,
        )
        return best

    if resume_path is None:
        state.ft_loss_base, state.pt_loss_base = evaluate()
        say(
            f"{mode}: {cfg.engine} x{backend.world_size} ({backend.cfg.precision}), N = {n_params:,} non-embedding params "
            f"({sig['total_params']:,} total), {s.steps} steps x {t.batch_size} seq x {stream.seq_len} tokens, "
            f"grad_accum {grad_accum}; start: ft_loss {state.ft_loss_base:.4f} pt_loss {state.pt_loss_base:.4f}",
            flush=True,
        )
        on_eval(0, (state.ft_loss_base, state.pt_loss_base))
        tracker.log_metrics(
            {"val/pt_loss_base": state.pt_loss_base, "val/ft_loss_base": state.ft_loss_base}, 0
        )

    peak = t.peak_flops or measure_peak(backend.device) * backend.world_size
    timer = _Timer()
    tokens_per_step = t.batch_size * stream.seq_len
    stopped_early = False
    last_saved = state.step if resume_path is not None else -1
    wall0 = time.perf_counter()
    while state.step < s.steps:
        step_index = state.step
        lr = lr_at(step_index, cfg.optim.lr, s)
        t0 = time.perf_counter()
        batches = [stream.next_batch(t.micro_batch) for _ in range(grad_accum)]
        result = backend.train_step([b.input_ids for b in batches], lr)
        n_pre = float(sum(int(b.is_pretrain.sum()) for b in batches))
        n_pre, n_seq = backend.dp_all_reduce_sum([n_pre, float(t.micro_batch * grad_accum)])
        dt = time.perf_counter() - t0
        if not math.isfinite(result.loss):
            last = ckpt.read_pointer("latest")
            tracker.finish("FAILED")
            raise UserError(
                f"training loss became {result.loss} at step {step_index + 1}; the last good "
                f"checkpoint is {ckpt_root / last if last else 'none'}; lower optim.lr or raise "
                "schedule.warmup, then --resume auto"
            )
        state.step += 1
        state.sequences += int(n_seq)
        state.pretrain_sequences += int(n_pre)
        timer.add(dt)
        tok_s = tokens_per_step / timer.mean()
        metrics = {
            "loss": result.loss,
            "lr": lr,
            "grad_norm": result.grad_norm,
            "tokens_per_s": tok_s,
            "mfu": fpt * tok_s / peak,
            "inject_fraction": n_pre / n_seq,
            "inject_fraction_cum": state.pretrain_sequences / state.sequences,
            "injected_sequences": float(state.pretrain_sequences),
        }
        log.write(train_record(state.step, metrics))
        tracker.log_metrics({f"train/{k}": v for k, v in metrics.items()}, state.step)
        eta = timer.mean() * (s.steps - state.step)
        say(
            f"step {state.step}/{s.steps} | loss {result.loss:.4f} | lr {lr:.2e} | {tok_s:,.0f} tok/s | "
            f"MFU {metrics['mfu']:.1%} | inject {metrics['inject_fraction_cum']:.4f} | ETA {_fmt_time(eta)}",
            flush=True,
        )

        final = state.step == s.steps
        is_eval = final or (t.eval_every and state.step % t.eval_every == 0)
        best = on_eval(state.step) if is_eval else False
        if t.patience and state.bad_evals >= t.patience and state.rise_after_best >= t.stop_rise:
            say(f"early stop: {state.bad_evals} evaluations without a better target loss, which rose "
                f"{state.rise_after_best:.4f} above its best", flush=True)  # fmt: skip
            stopped_early = True
        every = cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0
        if best or every or final or stopped_early:
            ckpt.save(state.step, client_state(), meta(), is_best=best, hf_config=hf_config.to_dict())
            last_saved = state.step
        if best:
            export("best")
        if stopped_early:
            break

    if last_saved != state.step:  # resumed at the end already: nothing ran, the checkpoint is current
        ckpt.save(state.step, client_state(), meta(), is_best=False, hf_config=hf_config.to_dict())
    export("model")

    summary = summary_row(
        {
            "domain": cfg.domain or location_name(cfg.data.target),
            "model_params": n_params,
            "target_tokens": stream.unique_target_tokens,
            "inject_fraction": cfg.data.inject_fraction,
            "anchor_decay": cfg.optim.anchor_decay,
            "ft_loss": state.best_ft,
            "pt_loss": state.best_pt,
            "pt_loss_base": state.pt_loss_base,
            "ft_loss_base": state.ft_loss_base,
            "steps": state.best_step,
            "run_id": state.mlflow_run_id or f"local:{out.resolve()}",
        }
    )
    if rank0:
        write_json_atomic(out / SUMMARY_FILE, summary)
        report = {
            **asdict(state),
            "mode": mode,
            "steps_trained": state.step,
            "stopped_early": stopped_early,
            "total_params": sig["total_params"],
            "world_size": backend.world_size,
            "engine": cfg.engine,
            "tokens_per_s": tokens_per_step / timer.mean() if timer.times else None,
            "wall_s": time.perf_counter() - wall0,
            "inject_fraction_observed": (
                state.pretrain_sequences / state.sequences if state.sequences else None
            ),
        }
        write_json_atomic(out / "report.json", report)
        best = {"best/ft_loss": state.best_ft, "best/step": float(state.best_step)}
        if mode == "finetune":
            best.update(
                {
                    "best/pt_loss": state.best_pt,
                    "best/forgetting": state.best_pt - state.pt_loss_base,
                    "best/injected_sequences": float(state.pretrain_sequences_at_best),
                }
            )
        tracker.log_metrics(best, state.best_step)
        if cfg.tracking.register_model and (out / "best").is_dir():
            tracker.register_model(
                out / "best",
                cfg.tracking.register_model,
                {"best_step": state.best_step, "ft_loss": state.best_ft, "pt_loss": state.best_pt},
            )
        plot = _plot(out / METRICS_FILE, out / "loss_curves.png")
        for path in (out / SUMMARY_FILE, out / "report.json", plot):
            tracker.log_artifact(path)
        say(
            f"done: {state.step} steps; best target loss {state.best_ft:.4f} at step {state.best_step} "
            f"(pretraining loss there {state.best_pt:.4f}, base {state.pt_loss_base:.4f}, forgetting "
            f"{state.best_pt - state.pt_loss_base:+.4f} nats/token); summary {out / SUMMARY_FILE}",
            flush=True,
        )
    log.close()
    tracker.finish("FINISHED")
    return summary


def _plot(metrics: Path, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_pts = [(r["step"], r["loss"]) for r in read_metrics(metrics, "train")]
    evals = read_metrics(metrics, "eval")
    fig, ax = plt.subplots(figsize=(7, 4))
    if train_pts:
        ax.plot(*zip(*train_pts), lw=0.8, alpha=0.6, label="train loss")
    if evals:
        ax.plot([r["step"] for r in evals], [r["ft_loss"] for r in evals], "o-", label="target validation")
        ax.plot(
            [r["step"] for r in evals], [r["pt_loss"] for r in evals], "s-", label="pretraining validation"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
