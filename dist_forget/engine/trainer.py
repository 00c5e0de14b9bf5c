"""The training loop, top to bottom: pretrain and finetune are the same run with different data and init.

stream → model → optimizer → backend → (resume | evaluate the starting model) → steps: train, log,
evaluate both validation splits every `eval_every` steps, export the best-target-loss model to best/ (bottom
of the U-curve), early stop (patience and stop_rise) → final evaluation, checkpoint, HF export, summary.json.

Outputs in `out_dir`: checkpoints/ (see engine/run_folder.py), metrics.jsonl (one line per step and per
evaluation; what a resume rewrites up to its step), summary.json (exactly the runs-table columns),
report.json (everything else about the run), run_config.json (the resolved config), model/ and best/
(HF folders), loss_curves.png, and run.lock while the run lives (engine/run_lock.py). A resume refuses a
config that changes the result (checkpoint/meta.py config_changes) and records the changes it accepts in
the run state (report.json `config_changes`).

The parts, one file each: run_state.py (what a resume restores), evaluation.py (both validation splits,
the best step, early stop), metrics_log.py (metrics.jsonl, progress line, plot), saving.py (checkpoint +
HF export), summary.py (summary.json, report.json, the closing line).

MLflow (rank 0): per step `train/*` (loss, lr, grad_norm, tokens_per_s, mfu, inject_fraction_cum,
injected_sequences cumulative; tokens/s is wall-clock, mfu on a CPU is per CPU-second of the process, so other
jobs on the cores move neither its achieved side nor its peak: engine/flops.py); per evaluation `val/ft_loss`,
`val/pt_loss`, `val/best_ft_loss` and, on a finetune, `val/forgetting` = val/pt_loss − the starting model's;
at step 0 `val/pt_loss_base` and `val/ft_loss_base`; at the end `best/ft_loss`, `best/step` and, on a
finetune, `best/pt_loss`, `best/forgetting`, `best/injected_sequences` (at the bottom of the U-curve, the
summary's row); per step `inject_fraction`, the p the schedule set (constant, or under
`data.inject_fraction=auto` the controller's, engine/inject_control.py, updated after each evaluation and
saved with the checkpoint). Params, axis tags and dataset inputs: engine/run_meta.py.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from dist_forget.checkpoint import init_from
from dist_forget.checkpoint.meta import CONTROL, DATA, TRAIN, check_compatible, config_changes, read_meta
from dist_forget.config import flatten, to_dict
from dist_forget.data.mixture import MixedStream, few_injected
from dist_forget.data.remote import location_name, tokenizer_folder
from dist_forget.engine import precision
from dist_forget.engine.backend import Backend, BackendConfig, make_backend
from dist_forget.engine.config import RunConfig
from dist_forget.engine.evaluation import Evaluator
from dist_forget.engine.flops import flops_per_token, measure_peak
from dist_forget.engine.inject_control import InjectController, read_prior
from dist_forget.engine.metrics_log import MetricsLog, StepCost
from dist_forget.engine.peers import is_collective_error, peer_lost, say_failed
from dist_forget.engine.preemption import Preempted, Preemption
from dist_forget.engine.run_folder import CheckpointManager, prepare_resume, resolve_resume
from dist_forget.engine.run_lock import RunLock
from dist_forget.engine.run_meta import config_artifact
from dist_forget.engine.run_state import RunState
from dist_forget.engine.saving import Saver, Stateful
from dist_forget.engine.schedule import lr_at
from dist_forget.engine.summary import summary_of, write_outputs
from dist_forget.errors import UserError
from dist_forget.io import write_json_atomic
from dist_forget.models import hf
from dist_forget.models.ladder import shape_of
from dist_forget.redact import redact_tree
from dist_forget.schema import METRICS_FILE


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
    from dist_forget.tracking import Tracker  # mlflow itself loads only when a run opens

    if not cfg.tracking.enabled:
        return Tracker.inactive()
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


def _precision(cfg: RunConfig, mode: str) -> precision.Choice:
    """fp32 or bf16 and why (engine/precision.py). Auto on a CPU with native bf16 looks at the model's width:
    the ladder shape's, or the init folder's config.json (resolved here before anything is built)."""
    cuda = torch.cuda.is_available()
    flags = precision.cpu_flags() if cfg.train.precision == "auto" and not cuda else frozenset()
    hidden = None
    if flags & set(precision.NATIVE_BF16_FLAGS) and cfg.engine in precision.AUTOCAST_ENGINES:
        try:
            folder = _init_folder(cfg, mode)
        except UserError:  # said in order later: the shards are checked before the model is looked for
            return precision.choose(cfg.train.precision, cuda, cfg.engine, flags, None)
        hidden = (
            shape_of(cfg.model.size).hidden  # pretrain: validated by _init_folder
            if folder is None
            else json.loads((folder / "config.json").read_text()).get("hidden_size")
        )
    return precision.choose(cfg.train.precision, cuda, cfg.engine, flags, hidden)


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


def train(cfg: RunConfig, mode: Literal["pretrain", "finetune"], resume: str = "none") -> dict[str, Any]:
    """Run `cfg` to the end (or early stop); returns the summary row (on every rank)."""
    choice = _precision(cfg, mode)
    backend = make_backend(
        cfg.engine, BackendConfig(cfg.parallel, choice.precision, cfg.optim.grad_clip, cfg.train.seed)
    )
    # signals and a dead launcher stop the run at a step boundary with a checkpoint (engine/preemption.py)
    with Preemption(cfg.preempt.signals, cfg.parallel.timeout_s) as preempt:
        backend.init_distributed()
        try:
            with ExitStack() as cleanup:
                summary = _run(cfg, mode, resume, backend, cleanup, preempt, choice)
            # destroy_process_group (in close) is meant to be called by all ranks together: a rank that shut
            # gloo down while rank 0 still wrote the summary and closed the tracker has aborted (SIGABRT) on
            # exit, and the launcher then reported a finished run as failed. Only a finished run waits here:
            # a failed or preempted one may have a peer that never arrives.
            backend.barrier()
            return summary
        except Exception as exc:  # a stalled or dead peer: one line naming it (engine/peers.py)
            if backend.world_size > 1 and is_collective_error(exc):
                raise peer_lost(exc, backend.rank, backend.world_size, cfg.parallel.timeout_s) from None
            if backend.world_size > 1 and not isinstance(exc, (UserError, Preempted)):
                say_failed(exc, backend.rank, backend.world_size)  # the launchers do not say which rank
            raise
        finally:
            backend.close()


def _end_status(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, (KeyboardInterrupt, Preempted)) else "FAILED"


def _run(
    cfg: RunConfig,
    mode: str,
    resume: str,
    backend: Backend,
    cleanup: ExitStack,
    preempt: Preemption,
    choice: precision.Choice,
) -> dict[str, Any]:
    """The loop: one optimizer step, its log line, an evaluation when due, a checkpoint when due."""
    r = _setup(cfg, mode, resume, backend, cleanup)
    r.say(f"precision: {choice.precision} ({choice.reason})", flush=True)
    state, t, steps = r.state, cfg.train, cfg.schedule.steps
    _begin(cfg, mode, backend, r)
    # a run resumed after its early stop has met the rule already: resuming it must not train it further
    stopped_early, wall0 = r.resumed and r.evaluator.should_stop(), time.perf_counter()
    while state.step < steps and not stopped_early:
        lr = lr_at(state.step, cfg.optim.lr, cfg.schedule)
        t0, cpu0 = time.perf_counter(), time.process_time()
        batches = [r.stream.next_batch(t.micro_batch) for _ in range(r.grad_accum)]
        result = backend.train_step([b.input_ids for b in batches], lr)
        # sequences and injected ones over all data-parallel ranks: the exact fraction is checked on these
        n_pre = float(sum(int(b.is_pretrain.sum()) for b in batches))
        # ...with the stop flag of every rank in the same all-reduce (engine/preemption.py)
        (n_pre, n_seq), stop = preempt.agree(backend, [n_pre, float(t.micro_batch * r.grad_accum)])
        dt = time.perf_counter() - t0  # the step alone: tokens/s and ETA leave out evaluations and saves
        cpu_dt = time.process_time() - cpu0  # its CPU seconds in this process: MFU on a CPU (engine/flops.py)
        if not math.isfinite(result.loss):  # stop before a diverged model reaches a checkpoint
            r.tracker.finish("FAILED")
            raise r.saver.diverged(result.loss)
        state.advance(int(n_seq), int(n_pre))
        r.log.train_step(
            state, result.loss, lr, result.grad_norm, dt, cpu_dt, n_pre, n_seq, float(r.stream.frac)
        )

        final = state.step == steps
        evaluated = r.evaluator.due(state.step, final)
        best = r.evaluator(state.step) if evaluated else False
        stopped_early = r.evaluator.should_stop()
        if r.control is not None and evaluated and not (final or stopped_early):
            _adapt(r)  # p for the steps up to the next evaluation; saved below with the checkpoint
        # a new best is saved (and exported) at once: it is the row the runs table reports
        if best or final or stopped_early or stop or r.saver.due(state.step):
            r.saver.save()
        if best:
            r.saver.export("best")
        if stopped_early:
            break
        if stop and not final:  # every rank saved this step: close the logs, exit PREEMPTED_EXIT
            latest = r.saver.ckpt.read_pointer("latest")
            finish = lambda: (r.log.close(), r.tracker.finish("KILLED"))  # noqa: E731
            raise preempt.stop(state.step, r.saver.ckpt.root / str(latest), backend, finish)

    r.saver.finish()  # the last checkpoint and the `model/` export
    summary = _summarize(cfg, mode, backend, r, stopped_early, time.perf_counter() - wall0, choice)
    r.log.close()
    r.tracker.finish("FINISHED")
    return summary


def _summarize(
    cfg: RunConfig,
    mode: str,
    backend: Backend,
    r: _Parts,
    stopped_early: bool,
    wall_s: float,
    choice: precision.Choice,
) -> dict[str, Any]:
    """The runs-table row (every rank returns it); rank 0 writes it with report.json (summary.py)."""
    state = r.state
    summary = summary_of(
        cfg, state, r.sig["non_embedding_params"], r.stream.unique_target_tokens, r.out, r.stream.schedule
    )
    if backend.rank == 0:
        report = {
            "steps_trained": state.step,
            "stopped_early": stopped_early,
            "total_params": r.sig["total_params"],
            "world_size": backend.world_size,
            "engine": cfg.engine,
            "precision": choice.precision,  # what the steps and evaluations ran in
            "precision_reason": choice.reason,
            "tokens_per_s": r.log.tokens_per_s(),
            # the last steps' MFU, its peak and the clock of both (cpu: per process CPU-second, engine/flops.py)
            "mfu": r.log.mfu(),
            "peak_flops": r.log.cost.peak_flops,
            "mfu_clock": "cpu" if r.log.cost.per_cpu_second else "wall",
            "wall_s": wall_s,
            "inject_fraction_observed": state.pretrain_sequences / state.sequences
            if state.sequences
            else None,
            # the p of each segment from its first global sequence on (one segment: a constant p)
            "inject_schedule": r.stream.schedule.to_list(),
            "inject_fraction_mean": r.stream.schedule.mean(state.sequences),
            "disk_bytes": r.saver.disk,  # the newest checkpoint, best/ and model/ (engine/saving.py)
        }
        write_outputs(cfg, mode, state, r.saver.run_record(), summary, report, r.tracker, print)
    return summary


@dataclass
class _Parts:
    """What `_setup` builds for the loop."""

    out: Path
    stream: MixedStream
    grad_accum: int
    sig: dict[str, Any]  # the model signature (hf.signature): sizes and parameter counts
    resumed: bool
    state: RunState
    saver: Saver
    tracker: Any
    log: MetricsLog
    evaluator: Evaluator
    say: Callable[..., Any]  # print on rank 0, silent elsewhere
    control: InjectController | None  # data.inject_fraction=auto


def _setup(cfg: RunConfig, mode: str, resume: str, backend: Backend, cleanup: ExitStack) -> _Parts:
    """Resume point, data stream, model and backend, restored state, tracker, log and evaluator."""
    rank0 = backend.rank == 0
    if cfg.data.adaptive and mode != "finetune":
        raise UserError(
            "data.inject_fraction=auto holds a forgetting budget: it is for finetune, not pretrain"
        )
    out = Path(cfg.out_dir)
    say = print if rank0 else (lambda *a, **k: None)
    lock = RunLock(out)  # one run per out_dir: rank 0 takes it first (_resume_point), frees it at the end
    cleanup.callback(lock.release)
    resume_path = _resume_point(cfg, resume, backend, out, lock)
    t = cfg.train
    stream = MixedStream(cfg.data, rank=backend.dp_rank, world_size=backend.dp_size)
    stream.verify()  # every shard's hash and layout now, not after the model is built and evaluated
    few = None if cfg.data.adaptive else few_injected(stream.frac, cfg.schedule.steps, t.batch_size)
    if few:
        say(f"warning: {few}", flush=True)
    per_step_micro = t.micro_batch * backend.dp_size
    if t.batch_size % per_step_micro:
        raise UserError(
            f"train.batch_size = {t.batch_size} is not a multiple of train.micro_batch "
            f"({t.micro_batch}) × {backend.dp_size} data-parallel ranks; change either"
        )
    grad_accum = t.batch_size // per_step_micro
    safe_cfg = redact_tree(to_dict(cfg))  # what files, checkpoints and MLflow get: URIs without credentials
    sig, hf_config, init_dir, changes = _build_model(
        cfg, mode, backend, stream, resume_path, grad_accum, safe_cfg
    )
    # what the HF exports copy beside the weights; for shards at a URL fetched now, not at the end of the run
    tokenizer_dir = hf.tokenizer_source(tokenizer_folder(stream.target_manifest), init_dir) if rank0 else None
    meta = {
        "model": sig,
        "data_fingerprint": stream.fingerprint,
        "world_size": backend.world_size,
        "data_parallel": backend.dp_size,
        "engine": cfg.engine,
        "zero_stage": cfg.parallel.zero_stage,
        "config": safe_cfg,
        "precision": backend.cfg.precision,  # resolved: `auto` is bf16 on a GPU, fp32 on a CPU
        "mode": mode,
    }
    ckpt = CheckpointManager(out / "checkpoints", backend, cfg.checkpoint.keep, guard=lock.check)
    state = RunState()
    control = _controller(cfg, stream, sig["non_embedding_params"], say)
    # every part a restart restores, saved and loaded through its own state_dict() (checkpoint/meta.py)
    states: dict[str, Stateful] = {DATA: stream, TRAIN: state}
    if control is not None:
        states[CONTROL] = control
    saver = Saver(ckpt, states, meta, hf_config, cfg.checkpoint.every, out, tokenizer_dir)
    if resume_path is not None:
        saver.restore(resume_path)  # the stream's schedule and the controller's state come back with it
        say(f"resumed from {resume_path} at step {state.step}")
        _record_changes(state, changes, say)

    run_name = cfg.name or out.resolve().name
    tracker = _tracker(cfg, backend.rank, run_name, out, state.mlflow_run_id, mode, sig, stream)
    # an error or Ctrl-C still sends what is queued and closes the MLflow run as FAILED / KILLED
    cleanup.push(lambda exc_type, *_: tracker.finish(_end_status(exc_type)))
    state.mlflow_run_id = tracker.run_id or state.mlflow_run_id
    n_params = sig["non_embedding_params"]
    fpt = flops_per_token(
        n_params, hf_config.vocab_size, hf_config.hidden_size, hf_config.num_hidden_layers, stream.seq_len
    )
    cost = StepCost(cfg.schedule.steps, t.batch_size * stream.seq_len, fpt, math.nan)  # peak: _begin
    keep_until = state.step if resume_path is not None else None
    log = MetricsLog(out / METRICS_FILE, backend.rank, keep_until, tracker, cost, say)
    cleanup.callback(log.close)
    if rank0:
        write_json_atomic(out / "run_config.json", safe_cfg)
        tracker.log_dict(config_artifact(safe_cfg, out), "run_config.json")  # no path of this machine
    # the manifests the stream opened (a URL's validation shards go to the same cache)
    target_val = stream.target_manifest
    pretrain_val = stream.pretrain_manifest or stream.target_manifest
    evaluator = Evaluator(backend, t, state, target_val, pretrain_val, log, tracker, mode == "finetune", say)
    resumed = resume_path is not None
    return _Parts(out, stream, grad_accum, sig, resumed, state, saver, tracker, log, evaluator, say, control)


def _controller(
    cfg: RunConfig, stream: MixedStream, n_params: int, say: Callable[..., Any]
) -> InjectController | None:
    """data.inject_fraction=auto: the controller, started at the prior's (or the default) p."""
    d = cfg.data
    if not d.adaptive:
        return None
    assert d.max_forgetting is not None  # MixtureConfig.validate
    domain = cfg.domain or location_name(d.target)
    prior = read_prior(d, domain, n_params, stream.unique_target_tokens, cfg.optim.anchor_decay)
    control = InjectController(d.max_forgetting, prior.p, d.inject_max, bottom_step=prior.bottom_step)
    stream.set_inject_fraction(control.p)  # at sequence 0; a resume replaces the whole schedule
    bottom = f", bottom expected at step {prior.bottom_step:.0f}" if math.isfinite(prior.bottom_step) else ""
    say(
        f"inject: auto, budget {d.max_forgetting:g} nats/token, start p = {control.p:.4g} ({prior.source}){bottom}",
        flush=True,
    )
    return control


def _adapt(r: _Parts) -> None:
    """Set p from the forgetting just measured (engine/inject_control.py)."""
    assert r.control is not None and r.evaluator.last is not None
    forgetting = r.evaluator.last[1] - r.state.pt_loss_base
    step = r.state.step
    p = r.control.update(forgetting, step)
    r.stream.set_inject_fraction(p)
    projected = r.control.projected(forgetting, step)
    at_bottom = f", {projected:+.4f} projected to the bottom" if projected != forgetting else ""
    r.say(
        f"inject: forgetting {forgetting:+.4f}{at_bottom} (budget {r.control.eps:g}) -> p = {p:.4g}",
        flush=True,
    )


def _record_changes(state: RunState, changes: list[dict[str, Any]], say: Callable[..., Any]) -> None:
    """The result-neutral settings this resume changed, in the run state (so in report.json) and one line."""
    if changes:
        state.config_changes += [{"step": state.step, **c} for c in changes]
        listed = ", ".join(f"{c['key']} {c['old']!r} -> {c['new']!r}" for c in changes)
        say(f"resume: changed settings that leave the result as it is: {listed} (report.json config_changes)")


def _resume_point(cfg: RunConfig, resume: str, backend: Backend, out: Path, lock: RunLock) -> Path | None:
    """The checkpoint to resume from (None: a fresh start), after rank 0 took out_dir's lock and tidied and
    checked the folder."""
    ckpt_root = out / "checkpoints"
    error = ""
    if backend.rank == 0:  # the lock, then tidy killed saves and check the checkpoint to resume from
        try:
            lock.acquire(say=lambda m: print(m, flush=True))
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
    if backend.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    backend.barrier()
    return resume_path


def _build_model(
    cfg: RunConfig,
    mode: str,
    backend: Backend,
    stream: MixedStream,
    resume_path: Path | None,
    grad_accum: int,
    safe_cfg: dict[str, Any],
) -> tuple[dict[str, Any], Any, Path | None, list[dict[str, Any]]]:
    """Build (or load) the model, check it and the config against the data and the checkpoint, hand it to
    the backend; returns (model signature, HF config, the HF folder it was initialised from, the
    result-neutral settings the resume changed)."""
    init_dir = _init_folder(cfg, mode)
    _check_tokenizer(init_dir, stream)
    model = _model_factory(cfg, init_dir, stream)
    _check_fits(model, stream, cfg.model.init_from or cfg.model.size or "the model")
    sig = hf.signature(model, cfg.model.size)
    hf_config, changes = model.config, []
    if resume_path is not None:  # refuse a mismatch before the backend builds (and shards) anything
        saved = read_meta(resume_path)
        check_compatible(
            saved,
            resume_path,
            model=sig,
            fingerprint=stream.fingerprint,
            world_size=backend.world_size,
            engine=cfg.engine,
            zero_stage=cfg.parallel.zero_stage,
            data_parallel=backend.dp_size,
        )
        changes = config_changes(saved, resume_path, safe_cfg, backend.cfg.precision)
    handover = [model]
    del model  # the backend owns it from here (and may wrap or shard it): keep no second reference
    backend.build(handover.pop, _make_optimizer(cfg), cfg.train.micro_batch, grad_accum)
    return sig, hf_config, init_dir, changes


def _begin(cfg: RunConfig, mode: str, backend: Backend, r: _Parts) -> None:
    """A fresh run evaluates the starting model (step 0: forgetting is measured from it); then the peak
    FLOP/s for MFU is measured (after: it draws random numbers, which must not move the model's)."""
    if not r.resumed:
        ft, pt = r.evaluator.baseline()
        s, t = cfg.schedule, cfg.train
        r.say(
            f"{mode}: {cfg.engine} x{backend.world_size} ({backend.cfg.precision}), N = {r.sig['non_embedding_params']:,} non-embedding params "
            f"({r.sig['total_params']:,} total), {s.steps} steps x {t.batch_size} seq x {r.stream.seq_len} tokens, "
            f"grad_accum {r.grad_accum}; start: ft_loss {ft:.4f} pt_loss {pt:.4f}",
            flush=True,
        )
        r.evaluator(0, (ft, pt))
        r.tracker.log_metrics({"val/pt_loss_base": pt, "val/ft_loss_base": ft}, 0)
    # A given peak is a wall-clock FLOP/s of the whole job (a datasheet figure: its unit is the one users
    # know), so MFU against it stays wall-clock on any device. A measured CPU peak is per CPU-second of this
    # process, so a neighbour on the cores moves neither side (engine/flops.py). Each rank would measure
    # the same peak: × world_size against the job's FLOPs. On a CPU the achieved side is the job's FLOPs over
    # rank 0's CPU seconds, so the figure is rank 0's share of the work (ranks do equal shares) per
    # CPU-second it spent, over its own peak; time a rank sleeps waiting on a slower peer is not counted,
    # time it spins in a collective is.
    per_cpu = backend.device.type == "cpu" and not cfg.train.peak_flops
    r.log.cost.per_cpu_second = per_cpu
    r.log.cost.peak_flops = cfg.train.peak_flops or (
        measure_peak(backend.device, backend.cfg.precision, cpu_time=per_cpu) * backend.world_size
    )
