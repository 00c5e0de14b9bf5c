"""Security and crash hardening in one process: no checkpoint load runs code (engine=single, the
Megatron checkpoints and folders, DeepSpeed's checkpoint engine, every converter), shards from another tokenizer are
refused, `--resume auto` falls back from a broken `latest` and tidies killed saves, config errors come
together, and shards are checked before the model is built.

The malicious files are real: a pickle whose `__reduce__` makes `os.system` create a marker file. Each test
first proves the payload works (a plain `torch.load(weights_only=False)` of a copy creates a marker), then
that our load refuses it in one line naming the file and the marker never appears.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from dist_forget import cli
from dist_forget.config import load_config
from dist_forget.engine.config import RunConfig
from dist_forget.engine.run_folder import clean_leftovers, prepare_resume
from dist_forget.engine.trainer import train
from dist_forget.errors import UserError
from dist_forget.safeload import UnsafeCheckpoint, load_pt
from tests.conftest import tiny_finetune_overrides

CONFIG = Path(__file__).parents[2] / "configs" / "finetune" / "tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    """Unpickling this runs `touch marker` (what an attacker's checkpoint would do with worse commands)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def plant(path: Path, marker: Path, extra: dict | None = None) -> Path:
    """Write a `.pt` at `path` that runs code when unpickled, and check that it really does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"module": _Payload(marker), **(extra or {})}, path)
    probe_marker = marker.with_name(marker.name + ".probe")
    probe_copy = path.with_name(path.name + ".probe")
    torch.save({"module": _Payload(probe_marker)}, probe_copy)
    torch.load(probe_copy, weights_only=False)  # the unsafe load DeepSpeed's own load_checkpoint makes
    assert probe_marker.exists(), "the crafted pickle must be live for the refusal to mean anything"
    probe_copy.unlink()
    probe_marker.unlink()
    return path


def assert_refused(exc: BaseException | str, file: Path, marker: Path) -> None:
    text = str(exc)
    assert "\n" not in text.strip()
    assert str(file) in text and "refused to load" in text and "system" in text, text
    assert not marker.exists(), "code in the checkpoint ran"


def _cfg(tiny_data, base_model, out: Path, *extra: str) -> RunConfig:
    return load_config(RunConfig, CONFIG, tiny_finetune_overrides(tiny_data, base_model, out, *extra))


@pytest.fixture(scope="module")
def run4(tiny_data, base_model, tmp_path_factory) -> Path:
    """A finished 4-step engine=single run: checkpoints at steps 2 and 4, latest = step 4."""
    out = tmp_path_factory.mktemp("sec") / "run"
    train(_cfg(tiny_data, base_model, out), "finetune")
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "train"}


# ---------------------------------------------------------------------- 1. no code runs from a checkpoint


def test_load_pt_refuses_code_and_names_damaged_files(tmp_path):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpoint) as exc:
        load_pt(evil)
    assert_refused(exc.value, evil, marker)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3), "s": "text"}, good)
    assert load_pt(good)["s"] == "text"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:50])
    with pytest.raises(UserError, match=r"cut\.pt: cannot be read as a torch checkpoint file") as exc:
        load_pt(cut)
    assert not isinstance(exc.value, UnsafeCheckpoint)


def test_single_engine_resume_refuses_a_crafted_checkpoint(tiny_data, base_model, run4, tmp_path, capsys):
    out = _copy(run4, tmp_path)
    marker = tmp_path / "pwned"
    evil = plant(out / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt", marker)
    argv = ["finetune", "--config", str(CONFIG), *tiny_finetune_overrides(tiny_data, base_model, out)]
    for resume in ("auto", str(evil.parent)):  # never a silent fallback past a crafted file
        assert cli.main([*argv, "--resume", resume]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1
        assert_refused(err, evil, marker)


def test_deepspeed_checkpoint_engine_loads_weights_only(tmp_path):
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from dist_forget.safeload import make_safe_checkpoint_engine

    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "mp_rank_00_model_states.pt", marker)
    engine = make_safe_checkpoint_engine(TorchCheckpointEngine())
    assert isinstance(engine, TorchCheckpointEngine)  # saves exactly as before
    with pytest.raises(UnsafeCheckpoint) as exc:
        engine.load(str(evil), map_location="cpu")
    assert_refused(exc.value, evil, marker)


def _megatron_training_checkpoint(tmp_path: Path, marker: Path) -> tuple[Path, Path]:
    """An engine=megatron checkpoint (megatron-core's format) whose common.pt runs code."""
    from dist_forget.checkpoint import megatron_dist
    from dist_forget.models import hf

    model = hf.build("cpu-0.03m", 512, 64, seed=0)
    folder = tmp_path / "step-00000002"
    full = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    megatron_dist.write_folder(folder.parent / "tmp", model.config.to_dict(), full)
    (folder.parent / "tmp").rename(folder)
    evil = plant(folder / megatron_dist.COMMON, marker)
    (folder / "meta.json").write_text(json.dumps({"engine": "megatron", "world_size": 1, "step": 2}))
    return folder, evil


def test_megatron_training_checkpoint_is_checked_weights_only_before_a_resume(tmp_path):
    from dist_forget.checkpoint.formats import verify_checkpoint

    marker = tmp_path / "pwned"
    folder, evil = _megatron_training_checkpoint(tmp_path, marker)
    with pytest.raises(UnsafeCheckpoint) as exc:
        verify_checkpoint(folder)
    assert_refused(exc.value, evil, marker)


def test_reshard_megatron_refuses_a_crafted_common_file(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder, evil = _megatron_training_checkpoint(tmp_path, marker)
    out = tmp_path / "out"
    args = ["--checkpoint", str(folder), "--world-size", "1", "--out", str(out)]
    assert cli.main(["convert", "reshard-megatron", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert_refused(err, evil, marker)
    assert not out.exists()


@pytest.fixture
def megatron_folder(tmp_path) -> tuple[Path, Path, Path]:
    """A Megatron folder of ours (tp=1) whose rank file runs code: what hf-to-megatron would have written."""
    from dist_forget.checkpoint.megatron import FORMAT, META_FILE, rank_file
    from dist_forget.models.ladder import hf_config

    folder = tmp_path / "meg"
    marker = tmp_path / "pwned"
    evil = plant(rank_file(folder, 0), marker, {"tp": 1, "tp_rank": 0})
    cfg = hf_config("cpu-0.03m", vocab_size=512, max_seq_len=64).to_dict()
    (folder / META_FILE).write_text(json.dumps({"format": FORMAT, "tp": 1, "pp": 1, "hf_config": cfg}))
    return folder, evil, marker


def test_megatron_to_hf_refuses_a_crafted_rank_file(megatron_folder, tmp_path, capsys):
    folder, evil, marker = megatron_folder
    assert (
        cli.main(["convert", "megatron-to-hf", "--megatron", str(folder), "--out", str(tmp_path / "out")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert_refused(err, evil, marker)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["zero-to-hf", "reshard"])
@pytest.mark.parametrize("kind", ["optim_states", "model_states"])
def test_zero_converters_refuse_a_crafted_file(tmp_path, capsys, command, kind):
    ckpt = tmp_path / "step-00000002"
    marker = tmp_path / "pwned"
    optim = ckpt / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    if kind == "optim_states":
        evil = plant(optim, marker)
    else:  # a genuine-looking optim file, then the model states file runs code
        ckpt.mkdir()
        torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1}}, optim)
        evil = plant(ckpt / "mp_rank_00_model_states.pt", marker)
    args = ["--world-size", "1"] if command == "reshard" else []
    assert (
        cli.main(["convert", command, "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *args]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert_refused(err, evil, marker)


def test_hf_to_megatron_refuses_crafted_weights(tmp_path, capsys):
    from dist_forget.models import hf

    folder = tmp_path / "hf"
    model = hf.build("cpu-0.03m", 512, 64, seed=0)
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # an older HF folder: weights in pytorch_model.bin, a pickle
    marker = tmp_path / "pwned"
    evil = plant(folder / "pytorch_model.bin", marker)
    capsys.readouterr()  # transformers' "Writing model shards" progress bar of save_pretrained, not the CLI's
    assert (
        cli.main(
            ["convert", "hf-to-megatron", "--hf", str(folder), "--out", str(tmp_path / "m"), "--tp", "1"]
        )
        == 2
    )
    assert_refused(capsys.readouterr().err.strip(), evil, marker)


# ---------------------------------------------------------------------- 4. tokenizer identity


def test_shards_from_another_tokenizer_of_the_same_size_are_refused(tiny_data, base_model, tmp_path):
    from dist_forget.data.documents import read_documents
    from dist_forget.data.shards import ShardConfig, write_shards
    from dist_forget.data.tokenizer import TokenizerConfig, file_sha256, train_tokenizer
    from tests.conftest import DATA

    model = tmp_path / "model"  # a model folder that ships its tokenizer, as every export of ours does
    shutil.copytree(base_model, model)
    shutil.copy(tiny_data.tokenizer_dir / "tokenizer.json", model / "tokenizer.json")
    other_tok = train_tokenizer(
        read_documents(DATA / "code.jsonl"),
        tmp_path / "other_tok",
        TokenizerConfig(vocab_size=tiny_data.vocab_size, max_chars=None),
    )
    other = tmp_path / "shards" / "code"
    manifest = write_shards(
        read_documents(DATA / "code.jsonl"),
        other_tok.parent,
        other,
        "code",
        ShardConfig(seq_len=tiny_data.seq_len, val_fraction=0.1, rows_per_member=16),
    )
    assert manifest.vocab_size <= tiny_data.vocab_size  # the size check alone lets these through
    cfg = _cfg(
        tiny_data,
        model,
        tmp_path / "run",
        f"data.target={other}",
        "data.inject_fraction=0",
        "data.pretrain=null",
    )
    with pytest.raises(UserError) as exc:
        train(cfg, "finetune")
    text = str(exc.value)
    for sha in (file_sha256(other_tok), file_sha256(model / "tokenizer.json")):
        assert sha in text
    assert "re-shard" in text and str(other / "manifest.json") in text
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------- 5. a broken `latest` falls back


def test_resume_auto_falls_back_from_a_truncated_latest(tiny_data, base_model, run4, tmp_path, capsys):
    out = _copy(run4, tmp_path)
    ckpts = out / "checkpoints"
    bad = ckpts / "step-00000004" / "mp_rank_00_model_states.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # killed mid-copy, disk error, ...
    train(_cfg(tiny_data, base_model, out), "finetune", resume="auto")
    said = capsys.readouterr().out
    line = next(ln for ln in said.splitlines() if ln.startswith("resume:"))
    assert "step-00000004" in line and "not usable" in line and "step-00000002" in line
    assert "resumed from" in said and str(ckpts / "step-00000002") in said
    assert _losses(out) == _losses(run4)  # steps 3-4 replayed from step 2 exactly
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    assert (ckpts / ".broken-step-00000004").is_dir()  # kept for inspection, out of retention's way


def test_resume_auto_with_a_garbage_pointer_or_nothing_intact(tiny_data, base_model, run4, tmp_path, capsys):
    out = _copy(run4, tmp_path)
    ckpts = out / "checkpoints"
    (ckpts / "latest").write_text("\x00\x17garbage")
    prepare_resume("auto", ckpts, keep=2, say=print)
    assert (ckpts / "latest").read_text().strip() == "step-00000004"  # newest intact, verified by loading
    assert "garbage" in capsys.readouterr().out
    (ckpts / "step-00000004" / "meta.json").unlink()
    (ckpts / "step-00000002" / "mp_rank_00_model_states.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError) as exc:
        prepare_resume("auto", ckpts, keep=2)
    text = str(exc.value)
    assert "no intact checkpoint" in text and "step-00000004" in text and "step-00000002" in text
    assert "no meta.json" in text and "cannot be read" in text and "\n" not in text


def test_startup_tidies_killed_saves_and_keep_holds(tiny_data, base_model, run4, tmp_path):
    out = _copy(run4, tmp_path)
    ckpts = out / "checkpoints"
    # what kill -9 at various points of CheckpointManager.save/_publish leaves behind
    shutil.copytree(ckpts / "step-00000004", ckpts / ".tmp-step-00000006")
    shutil.copytree(ckpts / "step-00000002", ckpts / ".old-step-00000002")
    (ckpts / ".latest.abc123.tmp").write_text("step-000")
    shutil.copytree(
        ckpts / "step-00000002", ckpts / "step-00000001"
    )  # published, then killed before retention
    shutil.copytree(ckpts / "step-00000002", ckpts / "step-00000003")
    done = clean_leftovers(ckpts)
    assert sorted(done) == [
        "removed .latest.abc123.tmp",
        "removed .old-step-00000002",
        "removed .tmp-step-00000006",
    ]
    # killed between the renames of a re-save: the old copy is the only one, so it comes back
    (ckpts / "step-00000004").rename(ckpts / ".old-step-00000004")
    assert clean_leftovers(ckpts) == ["restored step-00000004"]
    # the resume of the finished run trains nothing; retention (now keep=1, a setting a resume may change)
    # runs at startup all the same
    train(_cfg(tiny_data, base_model, out, "checkpoint.keep=1"), "finetune", resume="auto")
    names = sorted(p.name for p in ckpts.iterdir())
    steps = sorted(n for n in names if n.startswith("step-"))
    assert steps == ["step-00000004"], names  # keep = 1; the best step lives in best/
    assert not [n for n in names if n.startswith(".")], names
    assert (ckpts.stat().st_mode & 0o777) == 0o700


# ---------------------------------------------------------------------- 6. errors together, shards first


def test_unknown_key_and_bad_values_are_reported_together(tmp_path, capsys):
    argv = [
        "finetune",
        "--config",
        str(CONFIG),
        "optim.lrr=1",
        "train.batch_size=-1",
        "tracking.flush_every_s=x",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 problems" in err
    assert (
        "unknown key 'optim.lrr'" in err
        and "train.batch_size = -1" in err
        and "tracking.flush_every_s" in err
    )


def test_corrupt_shards_are_found_before_the_model_is_built(tiny_data, tmp_path):
    shards = tmp_path / "code"
    shutil.copytree(tiny_data.code, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    val = shards / manifest["splits"]["val"]["shards"][-1]["file"]
    data = bytearray(val.read_bytes())
    data[-100] ^= 0xFF
    val.write_bytes(bytes(data))
    # init_from names no model at all: the run must stop at the shard, before it looks for one
    cfg = _cfg(tiny_data, tmp_path / "no-such-model", tmp_path / "run", f"data.target={shards}")
    with pytest.raises(UserError, match=re.escape(f"shard {val} sha256 ")) as exc:
        train(cfg, "finetune")
    assert "differs from its manifest" in str(exc.value)
