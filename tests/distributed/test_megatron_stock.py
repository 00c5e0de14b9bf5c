"""`parallel.impl=stock` pieces that run without a GPU: the HF <-> GPTModel tensor mapping (weights and
optimizer state, both exact), and the one-line refusal on a machine without CUDA. The stock model's
forward and a finetune with it run in tests/gpu/test_megatron_gpu.py where CUDA exists."""

from __future__ import annotations

import io

import pytest
import torch

from dist_forget.models import megatron as M

TP = 2


def _gqa_config():
    """A ladder config with grouped-query attention (4 heads, 2 KV groups), so the QKV fusion per query
    group is exercised, not only the one-head-per-group case."""
    from transformers import LlamaConfig

    from dist_forget.models.ladder import hf_config

    d = hf_config("cpu-0.03m", vocab_size=256, max_seq_len=64).to_dict()
    d.update(num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return LlamaConfig.from_dict(d)


def _full(cfg) -> dict[str, torch.Tensor]:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).state_dict()


def test_hf_and_stock_shards_map_both_ways_exactly() -> None:
    cfg = _gqa_config()
    dims, full = M.LlamaDims.from_hf(cfg), _full(cfg)
    for rank in range(TP):
        hf_shard = M.shard_state({k: v for k, v in full.items() if k != "lm_head.weight"}, TP, rank)
        stock = M.hf_to_stock_shard(full, cfg, TP, rank)
        assert set(stock) == set(M.stock_parts(dims))
        # GPTModel's fused QKV rows per query group: [q of the group's heads; k; v]
        qkv = stock["decoder.layers.0.self_attention.linear_qkv.weight"].view(1, 4, 8, 32)[0]
        q = hf_shard["model.layers.0.self_attn.q_proj.weight"].view(2, 8, 32)
        assert torch.equal(qkv[:2], q) and torch.equal(
            qkv[2], hf_shard["model.layers.0.self_attn.k_proj.weight"]
        )
        back = M.stock_shard_to_hf(stock, dims, TP)
        assert back.keys() == hf_shard.keys() and all(torch.equal(back[k], hf_shard[k]) for k in back)


def test_stock_optimizer_state_maps_to_hf_names_and_back_exactly() -> None:
    from dist_forget.checkpoint.megatron import stock_optimizer_from_hf, stock_optimizer_to_hf
    from dist_forget.optim import AnchoredAdamW

    cfg = _gqa_config()
    dims = M.LlamaDims.from_hf(cfg)
    stock = M.hf_to_stock_shard(_full(cfg), cfg, TP, 0)

    def make() -> tuple[AnchoredAdamW, list[list[str]], list[torch.nn.Parameter]]:
        params = {n: torch.nn.Parameter(t.clone()) for n, t in stock.items()}
        names = [[n for n in params if params[n].ndim > 1], [n for n in params if params[n].ndim == 1]]
        groups = [
            {"params": [params[n] for n in names[0]], "anchor_decay": 0.1},
            {"params": [params[n] for n in names[1]], "anchor_decay": 0.0},
        ]
        return AnchoredAdamW(groups, lr=1e-2, weight_decay=0.01), names, list(params.values())

    opt, names, params = make()
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    saved = stock_optimizer_to_hf(opt.state_dict(), names, dims, TP)
    buf = io.BytesIO()
    torch.save(saved, buf)  # through a file, as a checkpoint goes: aliasing survives torch.save
    buf.seek(0)
    on_disk = torch.load(buf, weights_only=True)

    hf_names = on_disk["param_names"]
    assert set(hf_names) == {h for hs in M.stock_parts(dims).values() for h in hs}
    index = {n: i for i, n in enumerate(hf_names)}
    q, k = (
        on_disk["state"][index["model.layers.1.self_attn.q_proj.weight"]],
        on_disk["state"][index["model.layers.1.self_attn.k_proj.weight"]],
    )
    assert q["step"].data_ptr() != k["step"].data_ptr()  # one step counter per tensor, not shared
    assert set(q) == {"step", "exp_avg", "exp_avg_sq", "anchor"} and q["anchor"].shape == (16, 32)

    again, _, _ = make()
    again.load_state_dict(stock_optimizer_from_hf(on_disk, names, dims, TP, "test"))
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, st in a["state"].items():
        assert all(torch.equal(v, b["state"][i][key]) for key, v in st.items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_stock_impl_without_cuda_is_one_line_error_naming_the_fix() -> None:
    from dist_forget.engine.backend import BackendConfig, ParallelConfig, make_backend
    from dist_forget.errors import UserError

    with pytest.raises(
        UserError, match=r"parallel.impl=stock .* needs a GPU.*use parallel.impl=local"
    ) as info:
        make_backend("megatron", BackendConfig(ParallelConfig(tp=1, impl="stock"), "fp32", 1.0, 0))
    assert "\n" not in str(info.value)


def test_parallel_impl_is_a_checked_choice(tmp_path) -> None:
    from dist_forget.config import load_config
    from dist_forget.engine.config import RunConfig
    from dist_forget.errors import UserError

    base = ["data.target=x", "model.size=cpu-0.03m"]
    assert load_config(RunConfig, None, [*base, "parallel.impl=stock"]).parallel.impl == "stock"
    assert load_config(RunConfig, None, base).parallel.impl == "local"
    with pytest.raises(UserError, match="impl"):
        load_config(RunConfig, None, [*base, "parallel.impl=fast"])
