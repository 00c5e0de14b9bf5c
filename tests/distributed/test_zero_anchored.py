"""AnchoredAdamW under DeepSpeed ZeRO 1/2/3 on 2 real gloo ranks: the anchor is sharded, equals θ₀,
survives save/load exactly, and `zero-to-hf` gives a folder transformers loads with the engine's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _zero_worker import VOCAB, probe_tokens  # noqa: E402

from dist_forget.cli import main as cli_main
from dist_forget.convert.zero_to_hf import ZeroCheckpoint
from tests.distributed.conftest import ZERO_SAVE_AT

pytestmark = pytest.mark.slow
TAG = f"step-{ZERO_SAVE_AT:08d}"


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_anchor_is_sharded_equals_theta0_and_resume_is_exact(zero_run, stage):
    ckpt_root, out = zero_run(stage)
    ranks = _ranks(out)
    numel = ranks[0]["model_numel"]  # 30,880 (embedding tied to the head)
    per_rank = [r["state_numel"]["anchor"] for r in ranks]
    # Each rank holds one half of θ₀, exactly as much as of each Adam moment and of the fp32 weights.
    assert per_rank[0] == per_rank[1]
    for r in ranks:
        assert r["state_numel"]["anchor"] == r["state_numel"]["exp_avg"] == r["partition_numel"]
        assert r["anchor_bytes"] == 4 * r["state_numel"]["anchor"]
    assert 0 <= 2 * per_rank[0] - numel <= 2 * 2 * 20  # ZeRO padding: < 2·world per group/parameter
    assert sum(r["anchor_bytes"] for r in ranks) / 4 / numel == pytest.approx(1.0, abs=1e-2)

    # Consolidating the checkpoint's anchor shards gives back the pretrained weights bit for bit.
    ckpt = ZeroCheckpoint.load(ckpt_root / TAG)
    assert ckpt.world == 2 and ckpt.stage == stage
    assert ckpt.state_keys() == ["exp_avg", "exp_avg_sq", "anchor"]
    theta0 = torch.load(out / "theta0.pt", weights_only=True)
    anchor = ckpt.consolidate("anchor")
    assert set(anchor) == set(theta0) - {"lm_head.weight"}
    for name, t in anchor.items():
        assert torch.equal(t, theta0[name]), name

    # A fresh engine loading the checkpoint continues with exactly the uninterrupted losses.
    losses, resumed = ranks[0]["losses"], ranks[0]["resumed_losses"]
    assert sorted(resumed) == ["3", "4"]
    for step in resumed:
        assert resumed[step] == losses[step], (step, resumed[step], losses[step])


@pytest.mark.parametrize("stage", [1, 3])
def test_zero_to_hf_loads_in_transformers_with_the_engine_logits(zero_run, stage, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ckpt_root, out_dir = zero_run(stage)
    ckpt = ckpt_root / TAG
    cfg = tmp_path / "cfg" / "config.json"
    cfg.parent.mkdir()
    from dist_forget.models.ladder import hf_config

    cfg.write_text(hf_config("cpu-0.03m", vocab_size=VOCAB, max_seq_len=16).to_json_string())
    out = tmp_path / "hf"
    args = [
        "convert",
        "zero-to-hf",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--hf-config",
        str(cfg),
        "--with-optimizer",
    ]
    assert cli_main(args) == 0
    assert "30,880 parameters" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(input_ids=probe_tokens()).logits
    expected = torch.load(out_dir / f"logits-{TAG}.pt", weights_only=True)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)

    optim = torch.load(out / "optimizer.pt", weights_only=True)
    theta0 = torch.load(out_dir / "theta0.pt", weights_only=True)
    assert optim["format"] == "dist-forget-named-optim-v1"
    state = optim["state"]["model.layers.0.mlp.up_proj.weight"]
    assert torch.equal(state["anchor"], theta0["model.layers.0.mlp.up_proj.weight"])
    assert float(state["step"]) == ZERO_SAVE_AT and state["exp_avg"].shape == (96, 32)
    assert optim["param_groups"][0]["anchor_decay"] == 0.5

    # An existing non-empty folder is refused without --overwrite, and kept intact.
    assert cli_main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0


def test_zero_to_hf_bad_input_is_one_line(zero_run, tmp_path, capsys):
    ckpt_root, _ = zero_run(1)
    assert (
        cli_main(["convert", "zero-to-hf", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    assert "no *_optim_states.pt" in capsys.readouterr().err
    # No transformers config next to a raw DeepSpeed checkpoint: say how to pass one.
    assert (
        cli_main(
            ["convert", "zero-to-hf", "--checkpoint", str(ckpt_root / TAG), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "--hf-config" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
