"""megatron-core's own checkpoint format (torch_dist) in and out: `convert hf-to-megatron --format
dist`, `megatron-to-hf` and `model.init_from` of such folders, checked against megatron-core itself.

One 2-rank gloo run of `_mcore_dist_worker.py` (TP = 2) does what only megatron-core can judge: its
`load_plain_tensors` reads our folder, a stock GPTModel at TP = 2 loads it with `dist_checkpointing.load`,
a stock GPTModel saves a checkpoint the way Megatron-LM does (not with our writer), which we read, and
megatron-core's own optimizer sharded state dict loads the optimizer state of an engine=megatron checkpoint.
The rest runs in this process: the exact round trip, and each bad input as one line with nothing written.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

from dist_forget.checkpoint import init_from
from dist_forget.checkpoint import megatron_dist as D
from dist_forget.convert import megatron_hf as C
from dist_forget.errors import UserError
from dist_forget.models import hf
from dist_forget.models import megatron as M
from dist_forget.safeload import UnsafeCheckpoint
from tests.distributed.conftest import run_ranks

WORKER = Path(__file__).with_name("_mcore_dist_worker.py")
VOCAB, SEQ, TP = 64, 16, 2
STATE_KEYS = ("exp_avg", "exp_avg_sq", "anchor")


def _gqa_folder(path: Path, seed: int) -> Path:
    """A tiny ladder Llama with grouped-query attention (4 heads, 2 KV groups) saved by transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dist_forget.models.ladder import hf_config

    d = hf_config("cpu-0.03m", vocab_size=VOCAB, max_seq_len=SEQ).to_dict()
    d.update(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig.from_dict(d))
    return hf.save_folder(model.state_dict(), model.config, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mcore")
    hf_a, hf_b = _gqa_folder(root / "hf_a", seed=1), _gqa_folder(root / "hf_b", seed=2)
    ours = C.hf_to_megatron(hf_a, root / "ours", format="dist")
    train, train_state = _training_checkpoint(hf_a, root / "train")
    args = ["--ours", str(ours), "--hf-b", str(hf_b), "--save", str(root / "mlm"), "--out", str(root / "out")]
    run_ranks(WORKER, [*args, "--train", str(train)], world=TP, timeout=240)
    return {"root": root, "hf_a": hf_a, "hf_b": hf_b, "ours": ours, "mlm": root / "mlm", "out": root / "out",
            "train": train, "train_state": train_state}  # fmt: skip


def _training_checkpoint(hf_dir: Path, folder: Path) -> tuple[Path, dict]:
    """An engine=megatron checkpoint of hf_dir's weights at TP = 1 with a made-up Anchored AdamW state
    (returned too)."""
    from dist_forget.checkpoint import megatron_train
    from dist_forget.checkpoint.hf import OPTIM_FORMAT

    cfg, full = C.read_hf_config(hf_dir), C.read_hf_weights(hf_dir)
    gen = torch.Generator().manual_seed(3)
    state = {n: {"step": torch.tensor(5.0), **{k: torch.randn(t.shape, generator=gen) for k in STATE_KEYS}}
             for n, t in full.items()}  # fmt: skip
    named = {"format": OPTIM_FORMAT, "state": state, "param_groups": [{"lr": 1e-3, "params": list(full)}]}
    layout = D.Layout(M.LlamaDims.from_hf(cfg))
    common = megatron_train.run_common(cfg, layout, 5, {"train": {"step": 5}}, named, [list(full)])
    folder.mkdir()
    megatron_train.save(folder, layout, full, named, common)
    return folder, named


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_written_folder_is_megatron_cores_layout(run: dict[str, Path]) -> None:
    # a Megatron-LM save dir (`--load OURS`): the tracker names the converted release
    assert (run["ours"] / D.TRACKER).read_text() == "release"
    assert json.loads((run["ours"] / "release" / D.METADATA_JSON).read_text()) == D.BACKEND
    full = C.read_hf_weights(run["hf_a"])
    dims = M.LlamaDims.from_hf(C.read_hf_config(run["hf_a"]))
    plain = torch.load(run["out"] / "plain.pt", weights_only=True)  # megatron-core's load_plain_tensors
    assert _equal(plain, D.hf_to_mcore(full, dims))
    qkv = plain["decoder.layers.self_attention.linear_qkv.weight"]
    assert qkv.shape == (2, 4 * 8 + 2 * 2 * 8, 32)  # layers stacked; [q of 2 heads; k; v] per KV group
    assert torch.equal(qkv[1, 16:24], full["model.layers.1.self_attn.k_proj.weight"][:8])
    fc1 = plain["decoder.layers.mlp.linear_fc1.weight"]
    assert torch.equal(
        fc1[0],
        torch.cat([full["model.layers.0.mlp.gate_proj.weight"], full["model.layers.0.mlp.up_proj.weight"]]),
    )


def test_stock_gptmodel_loads_it_at_tp2_with_megatron_cores_own_load(run: dict[str, Path]) -> None:
    full, cfg = C.read_hf_weights(run["hf_a"]), C.read_hf_config(run["hf_a"])
    for rank in range(TP):
        loaded = torch.load(run["out"] / f"loaded_rank{rank}.pt", weights_only=True)
        want = M.hf_to_stock_shard(full, cfg, TP, rank)
        assert set(want) <= set(loaded)
        assert all(torch.equal(loaded[k], want[k]) for k in want), rank


def test_megatron_cores_optimizer_state_dict_loads_a_training_checkpoint_at_tp2(run: dict[str, Path]) -> None:
    """Our optimizer keys (`optimizer.state.<k>.<model key>`, global like the weights, the step as
    common_step) are megatron-core's own: its optimizer sharded state dict at TP = 2 finds each one."""
    from dist_forget.checkpoint import megatron_train

    cfg, named = C.read_hf_config(run["hf_a"]), run["train_state"]
    back = megatron_train.read_optimizer(run["train"], cfg)  # and ours reads back what it wrote
    assert back["param_groups"] == named["param_groups"] and back["state"].keys() == named["state"].keys()
    assert all(torch.equal(v, back["state"][n][k]) for n, st in named["state"].items() for k, v in st.items())
    for rank in range(TP):
        got = torch.load(run["out"] / f"optim_rank{rank}.pt", weights_only=True)
        assert float(got["common_step"]) == 5.0
        for key in STATE_KEYS:
            want = M.hf_to_stock_shard({n: st[key] for n, st in named["state"].items()}, cfg, TP, rank)
            assert set(got["state"]) == set(want)
            assert all(torch.equal(got["state"][n][key], want[n]) for n in want), (rank, key)


def test_a_checkpoint_written_as_megatron_lm_does_converts_and_initialises(run: dict[str, Path]) -> None:
    mlm = run["mlm"]
    assert (mlm / "iter_0000007" / D.COMMON).is_file()
    back = C.megatron_to_hf(mlm, run["root"] / "from_mlm")  # the save dir: its tracker names iter 7
    assert _equal(C.read_hf_weights(back), C.read_hf_weights(run["hf_b"]))
    cfg_b, cfg = C.read_hf_config(run["hf_b"]), C.read_hf_config(back)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        assert cfg[key] == cfg_b[key], key
    folder = init_from.resolve(str(mlm), run["root"] / "cache")  # model.init_from = a Megatron-LM save dir
    assert folder != mlm and _equal(C.read_hf_weights(folder), C.read_hf_weights(run["hf_b"]))
    assert init_from.resolve(str(mlm), run["root"] / "cache") == folder  # converted once, then reused


def test_a_nemo_layout_converts_with_its_config(run: dict[str, Path], tmp_path: Path) -> None:
    nemo = run["root"] / "nemo"  # NeMo 2: weights/ holds the folder, keys under `module.`
    assert "--hf-config" in _one_line(C.megatron_to_hf, nemo, tmp_path / "h")  # NeMo keeps no args there
    back = C.megatron_to_hf(nemo, tmp_path / "h", hf_config=run["hf_b"])
    assert _equal(C.read_hf_weights(back), C.read_hf_weights(run["hf_b"]))


def test_hf_dist_hf_round_trip_is_exact(run: dict[str, Path], tmp_path: Path) -> None:
    back = C.megatron_to_hf(run["ours"], tmp_path / "hf")
    assert _equal(C.read_hf_weights(back), C.read_hf_weights(run["hf_a"]))
    assert json.loads((back / "config.json").read_text()) == json.loads(
        (run["hf_a"] / "config.json").read_text()
    )
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        la = hf.load_folder(run["hf_a"])(input_ids=ids).logits
        lb = hf.load_folder(back)(input_ids=ids).logits
    assert torch.equal(la, lb)


# ---- bad input: one line, names the culprit, nothing written, no code run ------------------------------


def _one_line(fn, *args, **kwargs) -> str:  # noqa: ANN001
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_dist_format_refuses_tp_pp_and_optimizer(run: dict[str, Path], tmp_path: Path) -> None:
    assert "drop --tp/--pp" in _one_line(C.hf_to_megatron, run["hf_a"], tmp_path / "m", tp=2, format="dist")
    assert "--optimizer" in _one_line(
        C.hf_to_megatron, run["hf_a"], tmp_path / "m", optimizer=True, format="dist"
    )
    assert "--optimizer" in _one_line(C.megatron_to_hf, run["ours"], tmp_path / "h", optimizer=True)
    from dist_forget.cli import main

    args = ["convert", "hf-to-megatron", "--hf", str(run["hf_a"]), "--out", str(tmp_path / "m")]
    assert main([*args, "--format", "dist", "--tp", "2"]) == 2  # the one-line refusal, exit 2
    assert not (tmp_path / "m").exists() and not (tmp_path / "h").exists()
    assert (
        main([*args, "--format", "dist"]) == 0 and D.find_folder(tmp_path / "m") == tmp_path / "m" / "release"
    )


def test_a_folder_without_architecture_needs_hf_config(run: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run["ours"], bare)
    torch.save(
        {"iteration": 0}, D.resolve(bare) / D.COMMON
    )  # megatron-core's save without Megatron-LM's args
    assert "--hf-config" in _one_line(C.megatron_to_hf, bare, tmp_path / "h")
    # the dist folder itself (what megatron-core's API takes), not the save dir around it
    out = C.megatron_to_hf(D.resolve(bare), tmp_path / "h", hf_config=run["hf_a"] / "config.json")
    assert _equal(C.read_hf_weights(out), C.read_hf_weights(run["hf_a"]))
    wrong = json.loads((run["hf_a"] / "config.json").read_text())
    (tmp_path / "wrong.json").write_text(json.dumps({**wrong, "intermediate_size": 128}))
    msg = _one_line(C.megatron_to_hf, bare, tmp_path / "h2", hf_config=tmp_path / "wrong.json")
    assert "linear_fc1.weight" in msg and "shape" in msg
    assert "is not a megatron-core checkpoint" in _one_line(D.resolve, tmp_path)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_no_file_of_the_folder_can_run_code(run: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    for target in (D.DCP_METADATA, D.COMMON):
        bad = tmp_path / target.strip(".")
        shutil.copytree(run["ours"], bad)
        marker = tmp_path / f"pwned-{target.strip('.')}"
        if target == D.DCP_METADATA:  # torch itself reads this one with a bare pickle.load
            (D.resolve(bad) / target).write_bytes(pickle.dumps(_Payload(marker)))
        else:
            torch.save({"args": _Payload(marker)}, D.resolve(bad) / target)
        with pytest.raises(UnsafeCheckpoint) as info:
            C.megatron_to_hf(bad, tmp_path / "h")
        assert "refused to load" in str(info.value) and "system" in str(info.value)
        assert not marker.exists() and not (tmp_path / "h").exists()
    # a pickled object inside the .distcp (DCP's loader opens those with weights_only=False): megatron-core's
    # own load is only reached after verify_folder has opened every one of them weights-only
    mlm = D.resolve(run["mlm"])
    D.verify_folder(mlm)
    bad = tmp_path / "obj"
    shutil.copytree(mlm, bad)
    md = D.read_dcp_metadata(bad)
    info = next(v for k, v in md.storage_data.items() if k.fqn.startswith("rng_state"))
    marker = tmp_path / "pwned-obj"
    payload = pickle.dumps(_Payload(marker))
    assert len(payload) <= info.length
    with open(bad / info.relative_path, "r+b") as fh:
        fh.seek(info.offset)
        fh.write(payload.ljust(info.length, b"."))
    with pytest.raises(UnsafeCheckpoint):
        D.verify_folder(bad)
    assert not marker.exists()
