"""HF <-> Megatron conversion (single process: conversion is pure slicing, no process group).

Round trips are exact (torch.equal), optimizer state (moments + anchor) included, and every bad input
is a one-line UserError that leaves no output folder behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_forget.convert import megatron_hf as C
from dist_forget.errors import UserError
from dist_forget.models import hf
from dist_forget.models.megatron import LlamaDims, merge_shards, shard_state

VOCAB, SEQ = 64, 16


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ladder Llama saved by transformers, with an AnchoredAdamW state after two real steps."""
    from dist_forget.optim import AnchoredAdamW, param_groups

    folder = tmp_path_factory.mktemp("hf") / "model"
    model = hf.build("cpu-0.03m", VOCAB, SEQ, seed=3)
    opt = AnchoredAdamW(param_groups(model, 0.01, 0.1), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    hf.save_folder(model.state_dict(), model.config, folder)
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    torch.save(C.named_optimizer_state(opt.state_dict(), ordered), folder / C.OPTIM_FILE)
    return folder


def test_shards_are_slices_and_merge_back(hf_dir: Path) -> None:
    full = C.read_hf_weights(hf_dir)
    shards = [shard_state(full, 2, r) for r in range(2)]
    assert shards[0]["model.embed_tokens.weight"].shape == (VOCAB // 2, 32)
    assert shards[1]["model.layers.0.self_attn.o_proj.weight"].shape == (32, 16)
    assert torch.equal(shards[1]["model.norm.weight"], full["model.norm.weight"])
    merged = merge_shards(shards)
    assert merged.keys() == full.keys() and all(torch.equal(merged[k], full[k]) for k in full)


def test_hf_megatron_hf_round_trip_is_exact(hf_dir: Path, tmp_path: Path) -> None:
    meg = C.hf_to_megatron(hf_dir, tmp_path / "meg", tp=2, optimizer=True)
    assert json.loads((meg / C.META_FILE).read_text())["tp"] == 2
    assert sorted(p.parent.name for p in meg.glob("mp_rank_*/model_optim.pt")) == ["mp_rank_00", "mp_rank_01"]
    back = C.megatron_to_hf(meg, tmp_path / "hf2", optimizer=True)

    a, b = C.read_hf_weights(hf_dir), C.read_hf_weights(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(hf_dir / C.OPTIM_FILE, weights_only=True)
    ob = torch.load(back / C.OPTIM_FILE, weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    for name, st in oa["state"].items():
        assert st.keys() == ob["state"][name].keys() == {"step", "exp_avg", "exp_avg_sq", "anchor"}
        for key, v in st.items():
            assert torch.equal(v, ob["state"][name][key]), (name, key)
    # transformers itself reads the result back with identical logits
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        la, lb = hf.load_folder(hf_dir)(input_ids=ids).logits, hf.load_folder(back)(input_ids=ids).logits
    assert torch.equal(la, lb)


def test_megatron_hf_megatron_round_trip_is_exact(hf_dir: Path, tmp_path: Path) -> None:
    meg = C.hf_to_megatron(hf_dir, tmp_path / "meg", tp=2, optimizer=True)
    back = C.hf_to_megatron(
        C.megatron_to_hf(meg, tmp_path / "hf2", optimizer=True), tmp_path / "meg2", tp=2, optimizer=True
    )
    for r in range(2):
        x = torch.load(C.rank_file(meg, r), weights_only=True)
        y = torch.load(C.rank_file(back, r), weights_only=True)
        assert x["model"].keys() == y["model"].keys()
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
        assert x["optimizer"]["param_names"] == y["optimizer"]["param_names"]
        for i, st in x["optimizer"]["state"].items():
            assert all(torch.equal(v, y["optimizer"]["state"][i][k]) for k, v in st.items())


def test_optimizer_state_is_sharded_like_its_weight(hf_dir: Path, tmp_path: Path) -> None:
    meg = C.hf_to_megatron(hf_dir, tmp_path / "meg", tp=2, optimizer=True)
    entry = torch.load(C.rank_file(meg, 1), weights_only=True)
    names = entry["optimizer"]["param_names"]
    for i, st in entry["optimizer"]["state"].items():
        weight = entry["model"][names[i]]
        assert st["anchor"].shape == st["exp_avg"].shape == weight.shape, names[i]


# ---- bad input: one line, names the culprit, nothing written ------------------------------------------


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(("tp", "dim"), [(3, "num_attention_heads"), (4, "num_attention_heads")])
def test_tp_not_dividing_names_the_dimension(hf_dir: Path, tmp_path: Path, tp: int, dim: str) -> None:
    msg = _one_line_error(C.hf_to_megatron, hf_dir, tmp_path / "meg", tp=tp)
    assert dim in msg and f"--tp={tp}" in msg
    assert not (tmp_path / "meg").exists()


def test_each_split_dimension_is_named() -> None:
    base = dict(
        vocab=64,
        hidden=32,
        layers=1,
        heads=4,
        kv_heads=4,
        ffn=96,
        head_dim=8,
        rms_eps=1e-5,
        rope_theta=1e4,
        tied=True,
    )
    for field, value, dim in [
        ("vocab", 66, "vocab_size"),
        ("ffn", 90, "intermediate_size"),
        ("kv_heads", 2, "num_key_value_heads"),
    ]:
        dims = LlamaDims(**{**base, field: value})
        with pytest.raises(UserError, match=dim):
            dims.check_tp(4)
    LlamaDims(**base).check_tp(4)


def test_pp_not_dividing_layers_names_the_dimension(hf_dir: Path, tmp_path: Path) -> None:
    msg = _one_line_error(C.hf_to_megatron, hf_dir, tmp_path / "m", tp=1, pp=3)
    assert "num_hidden_layers=2" in msg and "--pp=3" in msg
    assert not (tmp_path / "m").exists()


def test_pipeline_split_round_trip_is_exact(hf_dir: Path, tmp_path: Path) -> None:
    meg = C.hf_to_megatron(hf_dir, tmp_path / "meg", tp=2, pp=2, optimizer=True)
    assert sorted(p.name for p in meg.glob("mp_rank_*")) == [
        "mp_rank_00_000",
        "mp_rank_00_001",
        "mp_rank_01_000",
        "mp_rank_01_001",
    ]
    first = torch.load(C.rank_file(meg, 1, 0, 2), weights_only=True)["model"]
    last = torch.load(C.rank_file(meg, 1, 1, 2), weights_only=True)["model"]
    assert {"model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"} <= set(first)
    assert "model.layers.1.mlp.up_proj.weight" not in first and "model.norm.weight" not in first
    assert {"model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight", "model.norm.weight"} <= set(
        last
    )
    back = C.megatron_to_hf(meg, tmp_path / "hf2", optimizer=True)
    a, b = C.read_hf_weights(hf_dir), C.read_hf_weights(back)
    assert all(torch.equal(a[k], b[k]) for k in a)
    oa = torch.load(hf_dir / C.OPTIM_FILE, weights_only=True)
    ob = torch.load(back / C.OPTIM_FILE, weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert all(torch.equal(v, ob["state"][n][k]) for n, st in oa["state"].items() for k, v in st.items())


def test_weights_of_another_architecture_are_refused(hf_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    cfg = json.loads((hf_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    (bad / "model.safetensors").write_bytes((hf_dir / "model.safetensors").read_bytes())
    msg = _one_line_error(C.hf_to_megatron, bad, tmp_path / "meg", tp=2)
    assert "model.layers.2" in msg and "missing" in msg
    (bad / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 128}))
    assert "mlp.gate_proj.weight" in _one_line_error(C.hf_to_megatron, bad, tmp_path / "meg", tp=2)
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    assert "model_type='gpt2'" in _one_line_error(C.hf_to_megatron, bad, tmp_path / "meg", tp=2)
    assert not (tmp_path / "meg").exists()


def test_mixed_or_incomplete_megatron_folders_are_refused(hf_dir: Path, tmp_path: Path) -> None:
    meg2 = C.hf_to_megatron(hf_dir, tmp_path / "meg2", tp=2)
    meg1 = C.hf_to_megatron(hf_dir, tmp_path / "meg1", tp=1)
    # a rank file of a tp=1 conversion dropped into a tp=2 folder
    C.rank_file(meg2, 0).write_bytes(C.rank_file(meg1, 0).read_bytes())
    assert "tp=1" in _one_line_error(C.megatron_to_hf, meg2, tmp_path / "out")
    C.rank_file(meg2, 1).unlink()
    assert "mp_rank_01" in _one_line_error(C.megatron_to_hf, meg2, tmp_path / "out")
    assert "no optimizer state" in _one_line_error(C.megatron_to_hf, meg1, tmp_path / "out", optimizer=True)
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten_unless_asked(hf_dir: Path, tmp_path: Path) -> None:
    meg = C.hf_to_megatron(hf_dir, tmp_path / "meg", tp=2)
    assert "--overwrite" in _one_line_error(C.hf_to_megatron, hf_dir, meg, tp=2)
    C.hf_to_megatron(hf_dir, meg, tp=1, overwrite=True)
    assert json.loads((meg / C.META_FILE).read_text())["tp"] == 1
    assert not (meg / "mp_rank_01").exists()


def test_cli_and_tool_scripts(hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runpy

    from dist_forget.cli import main

    assert (
        main(["convert", "hf-to-megatron", "--hf", str(hf_dir), "--out", str(tmp_path / "m"), "--tp", "2"])
        == 0
    )
    assert (
        main(["convert", "hf-to-megatron", "--hf", str(hf_dir), "--out", str(tmp_path / "x"), "--tp", "3"])
        == 2
    )
    assert not (tmp_path / "x").exists()
    # the thin tools/ script, run as a script (in-process: a fresh interpreter costs ~20 s of imports)
    tool = Path(__file__).resolve().parents[2] / "tools" / "megatron_to_hf.py"
    monkeypatch.setattr(
        "sys.argv", [str(tool), "--megatron", str(tmp_path / "m"), "--out", str(tmp_path / "h")]
    )
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(tool), run_name="__main__")
    assert done.value.code == 0
    a, b = C.read_hf_weights(hf_dir), C.read_hf_weights(tmp_path / "h")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_megatron_to_hf_carries_the_tokenizer(hf_dir: Path, tiny_data, tmp_path: Path, capsys) -> None:
    """The HF folder megatron-to-hf writes has the tokenizer: the one hf-to-megatron kept beside the weights
    (both formats), else --tokenizer (a folder or a tokenizer.json); with none, one line says what to pass."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dist_forget import cli
    from dist_forget.data.tokenizer import write_hf_tokenizer

    def convert(meg: Path, out: Path, *extra: str) -> str:
        argv = ["convert", "megatron-to-hf", "--megatron", str(meg), "--out", str(out), *extra]
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    bare = C.hf_to_megatron(hf_dir, tmp_path / "bare")  # an HF folder without a tokenizer
    (note,) = [ln for ln in convert(bare, tmp_path / "weights").splitlines() if ln.startswith("note:")]
    assert "--tokenizer" in note and not (tmp_path / "weights" / "tokenizer.json").exists()

    convert(bare, tmp_path / "flag", "--tokenizer", str(tiny_data.tokenizer_dir / "tokenizer.json"))
    with_tok = tmp_path / "src"
    shutil.copytree(hf_dir, with_tok)
    write_hf_tokenizer(tiny_data.tokenizer_dir, with_tok)
    for fmt in ("legacy", "dist"):
        meg = C.hf_to_megatron(with_tok, tmp_path / f"meg-{fmt}", format=fmt)
        assert "note:" not in convert(meg, tmp_path / f"back-{fmt}")
    for out in (tmp_path / "flag", tmp_path / "back-legacy", tmp_path / "back-dist"):
        tok = AutoTokenizer.from_pretrained(out)
        assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>")
        model = AutoModelForCausalLM.from_pretrained(out)
        assert model.config.eos_token_id == tok.eos_token_id == 0
        ids = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
        assert ids.shape == (1, 6)
