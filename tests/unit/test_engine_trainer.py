"""The trainer loop in one process (engine=single; engine=megatron as a world of one where said): real tiny
model, real shards, real checkpoints."""

from __future__ import annotations

import json
import resource
import shutil
import signal
from pathlib import Path

import pytest
import torch

from dist_forget import cli
from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.run_folder import CheckpointManager
from dist_forget.engine.schedule import lr_at
from dist_forget.engine.trainer import train
from dist_forget.errors import UserError
from dist_forget.models import hf
from dist_forget.net import free_port
from dist_forget.schema import SUMMARY_KEYS
from tests.conftest import tiny_finetune_overrides

CONFIG = Path(__file__).parents[2] / "configs" / "finetune" / "tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(tiny_data, base_model: Path, out: Path, *extra: str) -> list[str]:
    return tiny_finetune_overrides(tiny_data, base_model, out, *extra)


def _cfg(tiny_data, base_model, out, *extra) -> RunConfig:
    return load_config(RunConfig, CONFIG, _overrides(tiny_data, base_model, out, *extra))


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


@pytest.fixture(scope="module")
def full_run(tiny_data, base_model, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted 4-step run (checkpoints at steps 2 and 4), shared by the tests that compare with it."""
    out = tmp_path_factory.mktemp("full") / "run"
    return out, train(_cfg(tiny_data, base_model, out), "finetune")


def test_finetune_writes_summary_with_the_runs_table_columns(full_run, base_model):
    run, summary = full_run
    on_disk = json.loads((run / "summary.json").read_text())
    assert tuple(on_disk) == SUMMARY_KEYS and on_disk == summary
    assert summary["domain"] == "code" and summary["inject_fraction"] == 0.01
    assert summary["model_params"] == hf.non_embedding_params(hf.load_folder(base_model))
    # the best target loss is the minimum over evaluations, and pt_loss is measured at that step
    evals = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    best = min(evals, key=lambda r: r["ft_loss"])
    assert (summary["ft_loss"], summary["pt_loss"], summary["steps"]) == (
        best["ft_loss"],
        best["pt_loss"],
        best["step"],
    )
    assert summary["pt_loss_base"] == evals[0]["pt_loss"]
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    # the best step is kept once, as best/ (weights + tokenizer); its checkpoint is no pinned second copy
    assert not (ckpts / "best").exists() and (run / "best" / "model.safetensors").is_file()
    kept = sorted(p.name for p in ckpts.glob("step-*"))
    assert kept == ["step-00000002", "step-00000004"]  # checkpoint.keep = 2, whatever the best step
    # the disk each save costs, as report.json states it
    disk = json.loads((run / "report.json").read_text())["disk_bytes"]
    size = {
        name: sum(f.stat().st_size for f in (run / name).rglob("*") if f.is_file())
        for name in ("best", "model")
    }
    assert disk["checkpoint"] == sum(
        f.stat().st_size for f in (ckpts / "step-00000004").rglob("*") if f.is_file()
    )
    assert (disk["best"], disk["model"]) == (size["best"], size["model"]) and disk["checkpoint"] > 3 * size[
        "model"
    ] / 2
    # the transformers config sits beside meta.json (where `convert zero-to-hf` looks for it), no local path in it
    hf_config = json.loads((ckpts / "step-00000004" / "hf_config.json").read_text())
    assert hf_config["model_type"] == "llama" and "_name_or_path" not in hf_config
    # the exported final model loads as a plain HF model
    assert hf.load_folder(run / "model").config.hidden_size == 32
    # loss_curves.png of a finetune has the forgetting panel under the losses
    from PIL import Image

    assert Image.open(run / "loss_curves.png").size == (700, 650)
    # auto on a CPU: a 32-wide model trains in fp32 whatever the CPU, and the report says why
    report = json.loads((run / "report.json").read_text())
    assert report["precision"] == "fp32" and report["precision_reason"].startswith("auto: ")
    # a given peak (train.peak_flops = 1e11 here) is wall-clock FLOP/s: MFU against it stays wall-clock
    assert (report["mfu_clock"], report["peak_flops"]) == ("wall", 1e11)


def test_the_export_is_a_complete_hf_folder_that_generates(full_run):
    """model/ carries the tokenizer with its special tokens: AutoTokenizer knows <|endoftext|> as eos (and bos,
    pad), the model config stops there, and AutoModelForCausalLM.generate runs on it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = full_run
    for folder in (run / "model", run / "best"):
        assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {
            p.name for p in folder.iterdir()
        }
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|endoftext|>",) * 3
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    batch = tok(["def add(a, b):"], return_tensors="pt")
    ids = model.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert ids.shape[1] == batch["input_ids"].shape[1] + 5
    assert isinstance(tok.decode(ids[0]), str)


def test_zero_to_hf_converts_a_single_engine_checkpoint(full_run, tmp_path, capsys):
    """`convert zero-to-hf` on an engine=single checkpoint: the same weights as the run's own export of that
    step, the run's tokenizer, and the named optimizer state (Adam moments + anchor) with --with-optimizer."""
    from transformers import AutoTokenizer

    from dist_forget.checkpoint.hf import read_hf_weights

    run, _ = full_run
    out = tmp_path / "hf"
    argv = [
        "convert",
        "zero-to-hf",
        "--checkpoint",
        str(run / "checkpoints" / "step-00000004"),
        "--out",
        str(out),
    ]
    assert cli.main([*argv, "--with-optimizer"]) == 0
    assert "engine=single" in capsys.readouterr().out
    a, b = read_hf_weights(run / "model"), read_hf_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"
    named = torch.load(out / "optimizer.pt", weights_only=True)
    assert set(named["state"]) == set(dict(hf.load_folder(out).named_parameters()))
    state = named["state"]["model.layers.0.mlp.up_proj.weight"]
    assert {"exp_avg", "exp_avg_sq", "anchor", "step"} <= set(state) and float(state["step"]) == 4


def test_injection_fraction_is_exact(tiny_data, base_model, tmp_path, capsys):
    """p = 0.01 with 100 sequences per step: every step holds exactly one pretraining sequence (2 in the
    whole run: the run says so as it starts, and how long a run injects 5)."""
    out = tmp_path / "p"
    train(
        _cfg(
            tiny_data,
            base_model,
            out,
            "train.batch_size=100",
            "train.micro_batch=50",
            "schedule.steps=2",
            "train.eval_every=0",
            "checkpoint.every=0",
        ),
        "finetune",
    )
    steps = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    fractions = [r["inject_fraction"] for r in steps if r["kind"] == "train"]
    assert fractions == [0.01, 0.01]
    warned = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning: p = 0.01")]
    assert warned == ["warning: p = 0.01 injects 2 pretraining sequences over 2 steps x 100 sequences (200); "
                      "5 steps (or a larger batch) inject at least 5"]  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert report["inject_fraction_observed"] == 0.01
    # the machine the numbers come from (they repeat bit for bit on it, not across CPU models)
    assert report["machine"]["cpu_model"] and report["machine"]["threads"] >= 1
    assert report["machine"]["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_resume_gives_identical_losses(tiny_data, base_model, full_run, tmp_path):
    full, _ = full_run
    part = tmp_path / "part"
    shutil.copytree(full, part)
    # rewind to the step-2 checkpoint, as if the process had died after it (step 4 is then saved again)
    (part / "checkpoints" / "latest").write_text("step-00000002\n")
    train(_cfg(tiny_data, base_model, part), "finetune", resume="auto")
    assert _losses(part) == _losses(full)
    assert (part / "checkpoints" / "latest").read_text().strip() == "step-00000004"


@pytest.mark.parametrize("engine", ["single", "megatron"])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tiny_data, base_model, full_run, tmp_path, monkeypatch, engine
):
    """The disk fills up in the middle of the step-4 save: the kernel refuses writes past 64 KiB (RLIMIT_FSIZE,
    with SIGXFSZ ignored so write() fails instead of killing the process). The run stops with one line naming
    the step-2 checkpoint, which is untouched, and --resume auto from it gives the uninterrupted losses.
    engine=megatron (tp=1, a world of one in this process) writes megatron-core's format through PyTorch
    DCP: the same holds, its losses within 2e-5 of engine=single's (vocab-parallel loss, same model)."""
    extra = ["engine=megatron"] if engine == "megatron" else []
    if engine == "megatron":  # set here, so that the backend does not leave them in this process
        for key, value in (
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("LOCAL_WORLD_SIZE", "1"),
        ):
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
    real_save = CheckpointManager.save

    def save_on_a_full_disk(self, step, *args, **kwargs):
        if step < 4:
            return real_save(self, step, *args, **kwargs)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        try:
            return real_save(self, step, *args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)

    out = tmp_path / "disk"
    monkeypatch.setattr(CheckpointManager, "save", save_on_a_full_disk)
    with pytest.raises(UserError) as err:
        train(_cfg(tiny_data, base_model, out, *extra), "finetune")
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    msg = str(err.value)
    assert "\n" not in msg and "step-00000004 failed" in msg
    assert "previous checkpoint" in msg and "step-00000002 still loads" in msg and "--resume auto" in msg
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000002"
    assert {p.name for p in ckpts.iterdir()} - {"best"} == {"latest", "step-00000002"}  # no half-written tag
    assert not (out / "summary.json").exists()
    train(_cfg(tiny_data, base_model, out, *extra), "finetune", resume="auto")
    got, want = _losses(out), _losses(full_run[0])
    if engine == "single":
        assert got == want
    else:
        assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in got) < 2e-5, (got, want)


def test_bf16_resume_gives_identical_losses(tiny_data, base_model, full_run, tmp_path):
    """Under bf16 autocast the weights and optimizer state stay fp32: a resume is as exact as in fp32."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(tiny_data, base_model, full, "train.precision=bf16"), "finetune")
    shutil.copytree(full, part)
    (part / "checkpoints" / "latest").write_text("step-00000002\n")
    train(_cfg(tiny_data, base_model, part, "train.precision=bf16"), "finetune", resume="auto")
    assert _losses(part) == _losses(full)
    assert _losses(full) != _losses(full_run[0])  # the steps did run in bf16: not the fp32 run's losses
    report = json.loads((part / "report.json").read_text())
    assert (report["precision"], report["precision_reason"]) == ("bf16", "train.precision = bf16")


def test_resume_refuses_another_model_size_and_changed_data(tiny_data, base_model, full_run, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(full_run[0], out)
    other = tmp_path / "other"
    hf.build("cpu-0.1m", tiny_data.vocab_size, tiny_data.seq_len, seed=0).save_pretrained(other)
    with pytest.raises(UserError, match="holds another model"):
        train(_cfg(tiny_data, other, out, "schedule.steps=4"), "finetune", resume="auto")
    with pytest.raises(UserError, match="data stream"):
        train(_cfg(tiny_data, base_model, out, "schedule.steps=4", "data.seed=7"), "finetune", resume="auto")
    with pytest.raises(UserError, match="already holds checkpoints"):
        train(_cfg(tiny_data, base_model, out, "schedule.steps=4"), "finetune")


def test_nan_loss_stops_naming_the_step(tiny_data, base_model, tmp_path):
    broken = tmp_path / "broken"
    model = hf.load_folder(base_model)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(broken)
    with pytest.raises(UserError, match=r"became nan at step 1;"):
        train(_cfg(tiny_data, broken, tmp_path / "n"), "finetune")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("optim.lrr=1", "lrr"),
        ("optim.lr=fast", "optim.lr"),
        ("train.batch_size=5", "train.batch_size"),
        ("engine=horovod", "engine"),
    ],
)
def test_config_errors_are_one_line(tiny_data, base_model, tmp_path, capsys, override, needle):
    argv = ["finetune", "--config", str(CONFIG), *_overrides(tiny_data, base_model, tmp_path / "c"), override]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and err.startswith("error: ")


def test_schedule_warmup_then_cosine_to_floor():
    from dist_forget.engine.config import ScheduleConfig

    s = ScheduleConfig(steps=10, warmup=2, kind="cosine", min_lr_ratio=0.1)
    lrs = [lr_at(i, 1.0, s) for i in range(10)]
    assert lrs[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0.1
    assert lr_at(10, 1.0, s) == pytest.approx(0.1)


def test_early_stop_waits_for_the_target_loss_to_rise_by_stop_rise(tiny_data, base_model, tmp_path):
    """patience alone stops on the first evaluation that is no better; with stop_rise the run goes on until
    the target loss has risen that far above its best (a U-curve, not a wobble), here never."""
    common = ("optim.lr=0.05", "schedule.kind=constant", "schedule.steps=12", "train.eval_every=1",
              "train.patience=1")  # fmt: skip
    train(_cfg(tiny_data, base_model, tmp_path / "a", *common), "finetune")
    eager = json.loads((tmp_path / "a" / "report.json").read_text())
    assert eager["stopped_early"] and eager["step"] < 12 and eager["bad_evals"] == 1
    train(_cfg(tiny_data, base_model, tmp_path / "b", *common, "train.stop_rise=100"), "finetune")
    patient = json.loads((tmp_path / "b" / "report.json").read_text())
    assert not patient["stopped_early"] and patient["step"] == 12
    # the losses agree up to where the eager run stopped: stop_rise changes when to stop, nothing else
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert all(a[s] == b[s] for s in a)
    # resuming the stopped run finds it past its bottom already: it stops again without a step
    train(_cfg(tiny_data, base_model, tmp_path / "a", *common), "finetune", resume="auto")
    again = json.loads((tmp_path / "a" / "report.json").read_text())
    assert again["stopped_early"] and again["step"] == eager["step"] and _losses(tmp_path / "a") == a


def test_resume_from_a_checkpoint_with_the_older_json_train_state(tiny_data, base_model, full_run, tmp_path):
    """The run state is saved as plain data now; checkpoints that stored it as a JSON string still resume."""
    from dist_forget.checkpoint.zero import MODEL_FILE

    full, _ = full_run
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "checkpoints" / "latest").write_text("step-00000002\n")
    rank_file = part / "checkpoints" / "step-00000002" / MODEL_FILE
    saved = torch.load(rank_file, weights_only=True)
    assert saved["train"]["step"] == 2 and saved["train"]["best_ft"] < float("inf")
    saved["train"] = json.dumps(saved["train"])  # as dist-forget wrote it before
    torch.save(saved, rank_file)
    train(_cfg(tiny_data, base_model, part), "finetune", resume="auto")
    assert _losses(part) == _losses(full)


def test_early_stop_needs_patience_and_a_rise_of_stop_rise(tmp_path):
    """The rule on its own: `patience` evaluations without a better target loss AND a rise of `stop_rise`
    above the best (the highest since the best counts, not only the latest)."""
    from dist_forget.engine.config import TrainConfig
    from dist_forget.engine.evaluation import Evaluator
    from dist_forget.engine.metrics_log import MetricsLog, StepCost
    from dist_forget.engine.run_state import RunState
    from dist_forget.tracking import Tracker

    state, lines = RunState(), []
    log = MetricsLog(tmp_path / "m.jsonl", 0, None, Tracker.inactive(), StepCost(9, 1, 1.0, 1.0), print)
    train_cfg = TrainConfig(patience=2, stop_rise=0.1)
    ev = Evaluator(
        None, train_cfg, state, None, None, log, Tracker.inactive(), True, lambda m, **_: lines.append(m)
    )
    stops = []
    for step, ft in enumerate([3.0, 2.9, 3.05, 2.95, 2.99, 2.92]):
        ev(step, (ft, 3.0))
        stops.append(ev.should_stop())
    # step 2: one bad evaluation, risen 0.15; step 3: two, the rise seen is still 0.15 >= 0.1 → stop
    assert stops == [False, False, False, True, True, True]
    assert state.best_step == 1 and state.bad_evals == 4 and abs(state.rise_after_best - 0.15) < 1e-12
    assert lines[-1].startswith("early stop: 4 evaluations without a better target loss, which rose 0.1500")
    ev(6, (2.5, 3.0))  # a new best resets both counters
    assert not ev.should_stop() and state.bad_evals == 0 and state.rise_after_best == 0.0
    ev(7, (2.55, 3.0))
    ev(8, (2.55, 3.0))  # patience met, but a rise of 0.05 is a wobble: go on
    assert state.bad_evals == 2 and not ev.should_stop()
    ev(9, (2.61, 3.0))
    assert ev.should_stop()
    # sustained: the rise must hold at each of the last `patience` evaluations, one spike is not enough
    sustained = Evaluator(None, TrainConfig(patience=2, stop_rise=0.1, stop_sustained=True), RunState(), None,
                          None, log, Tracker.inactive(), True, lambda m, **_: lines.append(m))  # fmt: skip
    stops = []
    for step, ft in enumerate([3.0, 2.9, 3.05, 2.95, 3.01, 3.02, 3.1]):
        sustained(step, (ft, 3.0))
        stops.append(sustained.should_stop())
    # step 3 would stop the rule above (highest 3.05); here the last two must both be >= 3.0
    assert stops == [False, False, False, False, False, True, True]
    assert lines[-1].endswith("which rose 0.1200 above its best (at each of the last 2)")
    restored = RunState()
    restored.load_state_dict(state.state_dict())
    assert restored == state
    with pytest.raises(UserError, match="unknown fields \\['surprise'\\]"):
        RunState().load_state_dict({**state.state_dict(), "surprise": 1})
    log.close()
