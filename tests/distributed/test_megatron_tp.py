"""TP=2 on two real gloo ranks: logits equal HF's after hf-to-megatron, a finetune takes the same loss
steps as the 1-rank engine=single run, and resume equals the uninterrupted run; the same run as
data parallel (tp=1 x dp=2) and as a 2-stage pipeline (pp=2) takes the same steps too, and each of them
resumes the tp=2 checkpoint (megatron-core's format: global tensors) as it is.

This file is also the rank script (`__main__` below): the tests start it on 2 ranks with run_ranks.
Tolerances: logits atol 1e-5 (seen ~2e-7: TP sums the o_proj/down_proj partial products in another
order); per-step loss atol 1e-5 over 6 AnchoredAdamW steps (seen ~1e-6); resume is bit-exact at the
same layout and within the same loss atol at another (the restored state is exact; the sums run in another
order).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

VOCAB, SEQ, SIZE = 64, 16, "cpu-0.03m"
STEPS, SPLIT, MICRO, ACCUM = 6, 3, 2, 2
LOGITS_ATOL, LOSS_ATOL = 1e-5, 1e-5


def batches(step: int) -> list[torch.Tensor]:
    """The micro-batches of optimizer step `step` (identical for every rank and run)."""
    gen = torch.Generator().manual_seed(1000 + step % 2)  # two batches in turn: learnable
    return [torch.randint(0, VOCAB, (MICRO, SEQ), generator=gen) for _ in range(ACCUM)]


def lr_at(step: int) -> float:
    return 1e-2 * (1.0 - step / (2 * STEPS))


def optimizer_factory(model: torch.nn.Module) -> torch.optim.Optimizer:
    from dist_forget.optim import AnchoredAdamW, param_groups

    # anchor_decay and weight_decay on, so the sharded anchor takes part in every update
    return AnchoredAdamW(
        param_groups(model, 0.01, 0.5), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.01, anchor_decay=0.5
    )


def backend_config(tp: int, pp: int = 1):
    from dist_forget.engine.backend import BackendConfig, ParallelConfig

    # grad_clip 0.5 is below the first steps' norms, so the TP global-norm clipping is exercised
    return BackendConfig(parallel=ParallelConfig(tp=tp, pp=pp), precision="fp32", grad_clip=0.5, seed=0)


# ---- the rank script ---------------------------------------------------------------------------------


def rank_main(work: Path) -> None:
    """One launch does it all (each launch costs ~20 s of imports on this machine): the logits check,
    the 6-step tp=2 run with a checkpoint at step 3, a fresh model + optimizer loaded from that
    checkpoint running steps 4-6 again, then the same run as tp=1 x dp=2 and as tp=1 x pp=2."""
    from dist_forget.convert.megatron_hf import read_megatron
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.models import hf, megatron

    backend = MegatronBackend(backend_config(tp=2))
    backend.init_distributed()
    assert backend.dp_size == 1 and backend.world_size == 2
    out: dict[str, object] = {}

    cfg, full, _ = read_megatron(work / "meg")
    model = megatron.MegatronLlama(cfg)
    model.load_full(full)
    ids = torch.load(work / "ids.pt", weights_only=True)
    out["logits"] = model.full_logits(ids)
    s, n = model.loss_sum(ids)
    (s / n).backward()
    out["loss"] = float(s / n)
    out["grads"] = model.gather_grads()

    # the stock GPTModel (forward needs CUDA, construction does not): the HF -> stock mapping gives
    # exactly its parameter names and TP=2 shard shapes (its logits are checked in tests/gpu/)
    stock = megatron.build_stock_gpt(cfg)
    names = {k: tuple(v.shape) for k, v in stock.state_dict().items() if not k.endswith("_extra_state")}
    mapped = megatron.hf_to_stock_shard(full, cfg, 2, backend.tp_rank)
    out["stock_mapping_ok"] = names == {k: tuple(v.shape) for k, v in mapped.items()}

    backend.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=7), optimizer_factory, MICRO, ACCUM)
    results = []
    for step in range(STEPS):
        results.append(backend.train_step(batches(step), lr_at(step)))
        if step + 1 == SPLIT:
            backend.save(work / "ckpt", "step-3", {"step": SPLIT})
            backend.barrier()
    out.update(
        losses=[r.loss for r in results],
        norms=[r.grad_norm for r in results],
        state=backend.full_state_dict(),
        eval=backend.eval_loss(batches(0)),
    )

    # resume: new backend objects (fresh weights from another seed, fresh optimizer) + the checkpoint
    again = MegatronBackend(backend_config(tp=2))
    again.init_distributed()  # the process group exists: only megatron's groups are rebuilt
    again.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=123), optimizer_factory, MICRO, ACCUM)
    client = again.load(work / "ckpt", "step-3")
    out["resumed_losses"] = [
        again.train_step(batches(step), lr_at(step)).loss for step in range(client["step"], STEPS)
    ]
    out["resumed_state"] = again.full_state_dict()

    # tp=1 x dp=2 on the same two processes: each rank takes one of the step's two micro-batches
    dp = MegatronBackend(backend_config(tp=1))
    dp.init_distributed()
    assert (dp.dp_rank, dp.dp_size) == (dp.rank, 2)
    dp.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=7), optimizer_factory, MICRO, 1)
    out["dp_losses"] = [dp.train_step([batches(step)[dp.dp_rank]], lr_at(step)).loss for step in range(STEPS)]
    out["dp_state"] = dp.full_state_dict()
    # ... which resumes the tp=2 checkpoint at tp=1 (a fresh model from another seed, then the load)
    dp = MegatronBackend(backend_config(tp=1))
    dp.init_distributed()
    dp.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=123), optimizer_factory, MICRO, 1)
    dp.load(work / "ckpt", "step-3")
    out["dp_resumed"] = [dp.train_step([batches(s)[dp.dp_rank]], lr_at(s)).loss for s in range(SPLIT, STEPS)]

    # tp=1 x pp=2: layer 0 (+ embedding) on rank 0, layer 1 (+ norm, tied head) on rank 1
    pipe = MegatronBackend(backend_config(tp=1, pp=2))
    pipe.init_distributed()
    assert (pipe.pp_rank, pipe.dp_size) == (pipe.rank, 1)
    pipe.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=7), optimizer_factory, MICRO, ACCUM)
    out["pp_losses"] = [pipe.train_step(batches(step), lr_at(step)).loss for step in range(STEPS)]
    out["pp_eval"] = pipe.eval_loss(batches(0))
    out["pp_state"] = pipe.full_state_dict()
    pipe.save(work / "ckpt", "pp2", {})
    pipe.barrier()
    # ... and so does the pipeline: each stage reads its layers of the tp=2 checkpoint
    pipe = MegatronBackend(backend_config(tp=1, pp=2))
    pipe.init_distributed()
    pipe.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=123), optimizer_factory, MICRO, ACCUM)
    pipe.load(work / "ckpt", "step-3")
    out["pp_resumed"] = [pipe.train_step(batches(s), lr_at(s)).loss for s in range(SPLIT, STEPS)]
    if backend.rank == 0:
        torch.save(out, work / "out.pt")
    backend.close()


if __name__ == "__main__":
    rank_main(Path(sys.argv[1]))
    sys.exit(0)


# ---- the tests ---------------------------------------------------------------------------------------

from tests.distributed.conftest import run_ranks  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference() -> dict[str, object]:
    """The 1-rank run: engine=single (plain HF model + AnchoredAdamW), same batches and schedule."""
    from dist_forget.engine.single import SingleBackend
    from dist_forget.models import hf

    backend = SingleBackend(backend_config(tp=1))
    backend.init_distributed()
    backend.build(lambda: hf.build(SIZE, VOCAB, SEQ, seed=7), optimizer_factory, MICRO, ACCUM)
    results = [backend.train_step(batches(step), lr_at(step)) for step in range(STEPS)]
    return {
        "losses": [r.loss for r in results],
        "norms": [r.grad_norm for r in results],
        "state": backend.full_state_dict(),
        "eval": backend.eval_loss(batches(0)),
    }


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], torch.nn.Module]:
    """An HF model converted with hf-to-megatron --tp 2, then the rank script on 2 gloo ranks."""
    from dist_forget.convert.megatron_hf import hf_to_megatron
    from dist_forget.models import hf

    work = tmp_path_factory.mktemp("tp2")
    model = hf.build(SIZE, VOCAB, SEQ, seed=11)
    hf.save_folder(model.state_dict(), model.config, work / "hf")
    hf_to_megatron(work / "hf", work / "meg", tp=2)
    torch.save(torch.randint(0, VOCAB, (3, SEQ), generator=torch.Generator().manual_seed(5)), work / "ids.pt")
    run_ranks(__file__, [str(work)], world=2)
    return work, torch.load(work / "out.pt", weights_only=True), model


def test_tp2_logits_and_grads_equal_hf_after_conversion(launched) -> None:
    work, got, model = launched
    ids = torch.load(work / "ids.pt", weights_only=True)
    ref = model(input_ids=ids).logits
    assert got["logits"].shape == ref.shape == (3, SEQ, VOCAB)
    assert torch.allclose(got["logits"], ref, atol=LOGITS_ATOL, rtol=0), (got["logits"] - ref).abs().max()
    loss = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
    loss.backward()
    assert abs(got["loss"] - loss.item()) < LOSS_ATOL
    for name, p in model.named_parameters():
        assert torch.allclose(got["grads"][name], p.grad, atol=1e-6, rtol=0), name


def test_hf_to_stock_gptmodel_mapping_fits_megatron_core(launched) -> None:
    assert launched[1]["stock_mapping_ok"]


def test_tp2_finetune_takes_the_single_rank_loss_steps(launched, reference) -> None:
    _, got, _ = launched
    ref_losses, got_losses = torch.tensor(reference["losses"]), torch.tensor(got["losses"])
    assert torch.allclose(got_losses, ref_losses, atol=LOSS_ATOL, rtol=0), got_losses - ref_losses
    assert torch.allclose(torch.tensor(got["norms"]), torch.tensor(reference["norms"]), rtol=1e-5)
    assert got_losses[-1] < got_losses[0] - 0.1  # it learns (the batches repeat, so it can)
    assert abs(got["eval"] - reference["eval"]) < LOSS_ATOL
    for name, w in reference["state"].items():
        assert torch.allclose(got["state"][name], w, atol=1e-5, rtol=0), name


def test_data_parallel_megatron_matches_single_rank(launched, reference) -> None:
    _, got, _ = launched
    ref_losses, dp_losses = torch.tensor(reference["losses"]), torch.tensor(got["dp_losses"])
    assert torch.allclose(dp_losses, ref_losses, atol=LOSS_ATOL, rtol=0), dp_losses - ref_losses
    for name, w in reference["state"].items():
        assert torch.allclose(got["dp_state"][name], w, atol=1e-5, rtol=0), name


def test_pipeline_parallel_matches_single_rank(launched, reference) -> None:
    from dist_forget.convert.megatron_hf import read_megatron

    work, got, _ = launched
    ref_losses, pp_losses = torch.tensor(reference["losses"]), torch.tensor(got["pp_losses"])
    assert torch.allclose(pp_losses, ref_losses, atol=LOSS_ATOL, rtol=0), pp_losses - ref_losses
    assert abs(got["pp_eval"] - reference["eval"]) < LOSS_ATOL
    for name, w in reference["state"].items():
        assert torch.allclose(got["pp_state"][name], w, atol=1e-5, rtol=0), name
    # its checkpoint (each stage wrote its layers) reads back whole: weights and every optimizer state
    _, full, named = read_megatron(work / "ckpt" / "pp2", optimizer=True)
    assert all(torch.equal(full[k], got["pp_state"][k]) for k in full)
    assert set(named["state"]) == set(full) == {n for g in named["param_groups"] for n in g["params"]}
    assert all(set(st) == {"step", "exp_avg", "exp_avg_sq", "anchor"} for st in named["state"].values())


def test_checkpoint_is_megatron_cores_layout_with_the_optimizer_sharded_like_the_weights(launched) -> None:
    from dist_forget.checkpoint import megatron_dist

    work, _, _ = launched
    ckpt = work / "ckpt" / "step-3"
    md = megatron_dist.read_dcp_metadata(ckpt).state_dict_metadata
    common = megatron_dist.load_common(ckpt)
    assert common["args"].tensor_model_parallel_size == 2
    assert float(common["optimizer"]["state"]["common_step"]) == 3  # Adam's step, once for all parameters
    weights = {
        k: tuple(v.size) for k, v in md.items() if k.startswith(("embedding.", "decoder.")) and "/" not in k
    }
    assert len(weights) == 8  # the extra states (objects) aside
    assert weights["embedding.word_embeddings.weight"] == (VOCAB, 32)
    for key in ("exp_avg", "exp_avg_sq", "anchor"):  # megatron-core's optimizer keys, global like the weights
        for name, shape in weights.items():
            state = md[f"optimizer.state.{key}.{name}"]
            assert tuple(state.size) == shape
            if name == "embedding.word_embeddings.weight":  # vocab rows: a block per TP rank
                assert [tuple(c.offsets) for c in state.chunks] == [(0, 0), (VOCAB // 2, 0)]


def test_resume_equals_uninterrupted(launched) -> None:
    _, got, _ = launched
    assert got["resumed_losses"] == got["losses"][SPLIT:]  # bit-exact
    assert all(torch.equal(got["resumed_state"][k], v) for k, v in got["state"].items())


def test_resume_at_another_tp_or_pp_takes_the_uninterrupted_steps(launched) -> None:
    _, got, _ = launched
    want = torch.tensor(got["losses"][SPLIT:])
    for layout in ("dp_resumed", "pp_resumed"):
        assert torch.allclose(torch.tensor(got[layout]), want, atol=LOSS_ATOL, rtol=0), (layout, got[layout])


def test_checkpoint_of_another_architecture_is_refused_in_one_line(launched) -> None:
    from dist_forget.checkpoint import megatron_train
    from dist_forget.checkpoint.megatron_dist import Layout
    from dist_forget.errors import UserError
    from dist_forget.models import hf
    from dist_forget.models.megatron import LlamaDims

    work, _, _ = launched
    model = hf.build(SIZE, 2 * VOCAB, SEQ, seed=1)  # the same layers, a larger vocabulary
    own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(UserError, match=r"embedding.word_embeddings.weight has shape \(64, 32\)") as info:
        megatron_train.load(
            work / "ckpt" / "step-3", Layout(LlamaDims.from_hf(model.config)), own, [list(own)]
        )
    assert "\n" not in str(info.value)
