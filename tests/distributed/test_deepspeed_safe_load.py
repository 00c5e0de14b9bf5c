"""engine=deepspeed never unpickles code from a checkpoint: DeepSpeed's own `load_checkpoint` goes
through our weights-only checkpoint engine, and `--resume auto` refuses a crafted file in one line.

DeepSpeed runs in this process as a world of one (gloo); the run is the smallest real ZeRO-1 finetune.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dist_forget import cli
from dist_forget.config import load_config
from dist_forget.engine.backend import BackendConfig, make_backend
from dist_forget.engine.config import RunConfig
from dist_forget.engine.trainer import _make_optimizer, train
from dist_forget.models import hf
from dist_forget.net import free_port
from dist_forget.safeload import UnsafeCheckpoint
from tests.conftest import tiny_finetune_overrides
from tests.unit.test_security import assert_refused, plant

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "finetune" / "tiny.yaml"
DS = ("engine=deepspeed", "parallel.zero_stage=1", "schedule.steps=2")
FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _one_rank_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "DS_ACCELERATOR": "cpu",
    }.items():
        monkeypatch.setenv(key, value)


def test_deepspeed_load_refuses_code_in_any_checkpoint_file(
    tiny_data, base_model, tmp_path, monkeypatch, capsys
):
    _one_rank_env(monkeypatch)
    out = tmp_path / "run"
    overrides = tiny_finetune_overrides(tiny_data, base_model, out, *DS)
    cfg = load_config(RunConfig, CONFIG, overrides)
    train(cfg, "finetune")
    ckpt = out / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in ckpt.glob("*.pt")) == sorted(FILES)

    roots = {}
    for name in FILES:  # one tampered copy per file
        root = tmp_path / f"evil-{name}"
        shutil.copytree(ckpt, root / ckpt.name)
        roots[name] = (root, plant(root / ckpt.name / name, tmp_path / f"pwned-{name}"))

    # DeepSpeed's own API, with no check of ours before it: the engine we give it loads weights-only
    backend = make_backend(
        "deepspeed", BackendConfig(cfg.parallel, "fp32", cfg.optim.grad_clip, cfg.train.seed)
    )
    backend.init_distributed()
    try:
        backend.build(lambda: hf.load_folder(base_model), _make_optimizer(cfg), cfg.train.micro_batch, 2)
        for name, (root, evil) in roots.items():
            with pytest.raises(UnsafeCheckpoint) as exc:
                backend.engine.load_checkpoint(
                    str(root), tag=ckpt.name, load_optimizer_states=True, load_lr_scheduler_states=False
                )
            assert_refused(exc.value, evil, tmp_path / f"pwned-{name}")
        # and the intact checkpoint still loads through it
        client = backend.load(ckpt.parent, ckpt.name)
        assert "data" in client and "train" in client
    finally:
        backend.close()

    # the CLI: --resume auto of a run whose latest checkpoint was tampered with
    evil = plant(ckpt / FILES[1], tmp_path / "pwned-cli")
    _one_rank_env(monkeypatch)
    assert (
        cli.main(["finetune", "--config", str(CONFIG), *overrides, "schedule.steps=4", "--resume", "auto"])
        == 2
    )
    (err,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]  # one line
    assert_refused(err, evil, tmp_path / "pwned-cli")
