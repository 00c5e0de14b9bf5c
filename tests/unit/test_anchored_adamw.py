"""AnchoredAdamW on one process: the update rule, AdamW equivalence, the anchor, state round trips."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dist_forget.errors import UserError
from dist_forget.optim import AnchoredAdamW, param_groups


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def _grads(model: torch.nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def _reference(params, grads_per_step, groups_hp, lr, betas, eps):
    """Plain per-element Python-float reference of the documented update (float64)."""
    theta = [p.detach().double().clone() for p in params]
    theta0 = [t.clone() for t in theta]
    m = [torch.zeros_like(t) for t in theta]
    v = [torch.zeros_like(t) for t in theta]
    b1, b2 = betas
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            wd, ad = groups_hp[i]
            g = g.double()
            theta[i] = theta[i] - lr * ad * (theta[i] - theta0[i]) - lr * wd * theta[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1**t)
            denom = v[i].sqrt() / math.sqrt(1 - b2**t) + eps
            theta[i] = theta[i] - lr * mhat / denom
    return theta


def test_update_equals_hand_written_reference_over_25_steps_with_groups():
    model = _model()
    weights = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    lr, betas, eps = 3e-2, (0.8, 0.95), 1e-6
    opt = AnchoredAdamW(
        [
            {"params": weights, "weight_decay": 0.1, "anchor_decay": 0.5},
            {"params": others, "weight_decay": 0.0, "anchor_decay": 2.0},
        ],
        lr=lr,
        betas=betas,
        eps=eps,
    )
    params = weights + others
    hp = [(0.1, 0.5)] * len(weights) + [(0.0, 2.0)] * len(others)
    history = []
    for step in range(25):
        _grads(model, step)
        history.append([p.grad.clone() for p in params])
        opt.step()
    start = [p.detach().clone() for p in _model().parameters()]
    start = [start[i] for i, p in enumerate(_model().parameters()) if p.ndim >= 2] + [
        start[i] for i, p in enumerate(_model().parameters()) if p.ndim < 2
    ]
    expected = _reference(start, history, hp, lr, betas, eps)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, atol=2e-6, rtol=0)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_equals_torch_adamw_when_anchor_decay_is_zero(weight_decay):
    a, b = _model(), _model()
    ours = AnchoredAdamW(a.parameters(), lr=1e-2, weight_decay=weight_decay, anchor_decay=0.0)
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=True)
    for step in range(30):
        _grads(a, step)
        _grads(b, step)
        ours.step()
        ref.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    # Same state layout as AdamW plus the anchor, so tooling that reads AdamW states reads ours.
    state = ours.state[next(a.parameters())]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "anchor"}
    assert float(state["step"]) == 30.0


def test_large_anchor_decay_keeps_weights_near_theta0_and_anchor_is_theta0():
    free, anchored = _model(), _model()
    theta0 = [p.detach().clone() for p in anchored.parameters()]
    opt_free = AnchoredAdamW(free.parameters(), lr=1e-2, anchor_decay=0.0)
    opt_anch = AnchoredAdamW(anchored.parameters(), lr=1e-2, anchor_decay=50.0)
    for _ in range(200):
        # A constant pull in one direction: plain Adam drifts ~lr per step, the anchor holds it back.
        for m in (free, anchored):
            for p in m.parameters():
                p.grad = torch.ones_like(p)
        opt_free.step()
        opt_anch.step()
    drift_free = max((p - t).abs().max().item() for p, t in zip(free.parameters(), theta0))
    drift_anch = max((p - t).abs().max().item() for p, t in zip(anchored.parameters(), theta0))
    assert drift_free > 1.5  # 200 steps × lr 0.01
    assert drift_anch < 0.03  # equilibrium lr·adam = lr·ad·(θ−θ₀) → |θ−θ₀| ≈ 1/ad = 0.02
    for p, t in zip(anchored.parameters(), theta0):
        assert torch.equal(opt_anch.state[p]["anchor"], t)


def test_explicit_anchor_and_its_shape_check():
    model = _model()
    opt = AnchoredAdamW(model.parameters(), lr=1e-1, anchor_decay=5.0)
    w = model[0].weight
    target = torch.full_like(w, 0.25)
    opt.set_anchor(w, target)
    for step in range(300):
        _grads(model, step)
        for p in model.parameters():
            p.grad.mul_(0.0)
        opt.step()
    torch.testing.assert_close(w.detach(), target, atol=1e-3, rtol=0)
    with pytest.raises(UserError, match=r"shape \(3,\)"):
        opt.set_anchor(w, torch.zeros(3))


def test_state_dict_round_trip_continues_identically():
    a = _model()
    opt = AnchoredAdamW(param_groups(a, weight_decay=0.1, anchor_decay=1.0), lr=1e-2)
    for step in range(5):
        _grads(a, step)
        opt.step()
    b = copy.deepcopy(a)
    opt_b = AnchoredAdamW(param_groups(b, weight_decay=0.1, anchor_decay=1.0), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step in range(5, 10):
        _grads(a, step)
        _grads(b, step)
        opt.step()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_checkpoint_without_anchor_or_with_wrong_shape_names_the_parameter():
    model = _model()
    named = [
        {
            "params": [p for _, p in model.named_parameters()],
            "param_names": [n for n, _ in model.named_parameters()],
        }
    ]
    opt = AnchoredAdamW(named, lr=1e-2)
    _grads(model, 0)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    del sd["state"][2]["anchor"]
    fresh = AnchoredAdamW(
        [{"params": list(model.parameters()), "param_names": [n for n, _ in model.named_parameters()]}],
        lr=1e-2,
    )
    with pytest.raises(UserError, match=r"'1\.weight'.*no 'anchor'"):
        fresh.load_state_dict(sd)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][0]["exp_avg"] = torch.zeros(5)
    with pytest.raises(UserError, match=r"'exp_avg' of parameter '0\.weight' has shape \(5,\)"):
        fresh.load_state_dict(sd)
    # An AdamW checkpoint has no anchor: refused, not silently re-anchored at the resumed weights.
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-2)
    adamw.step()
    plain = AnchoredAdamW(model.parameters(), lr=1e-2)
    with pytest.raises(UserError, match="no 'anchor'"):
        plain.load_state_dict(adamw.state_dict())


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"anchor_decay": -0.1}, "anchor_decay=-0.1"),
        ({"betas": (1.0, 0.9)}, r"betas=\(1.0, 0.9\)"),
        ({"betas": (0.9, -0.1)}, r"betas=\(0.9, -0.1\)"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_the_value(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        AnchoredAdamW(_model().parameters(), **kwargs)
    with pytest.raises(ValueError, match=culprit):
        AnchoredAdamW([{"params": list(_model().parameters()), **kwargs}])


def test_param_groups_exclude_1d_tensors_from_decay():
    model = _model()
    groups = param_groups(model, weight_decay=0.1, anchor_decay=0.3)
    assert [len(g["params"]) for g in groups] == [2, 4]  # 2 Linear weights; 2 biases + LN weight + bias
    assert (groups[0]["weight_decay"], groups[0]["anchor_decay"]) == (0.1, 0.3)
    assert (groups[1]["weight_decay"], groups[1]["anchor_decay"]) == (0.0, 0.0)
    one = param_groups(model, 0.1, 0.3, no_decay_1d=False)
    assert len(one) == 1 and len(one[0]["params"]) == 6
    model[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, 0.1, 0.3)) == 5


def test_dtype_buckets_and_params_without_grad():
    model = _model()
    model[2].double()
    opt = AnchoredAdamW(model.parameters(), lr=1e-2, anchor_decay=1.0)
    _grads(model, 0)
    model[1].weight.grad = None
    opt.step()
    assert model[1].weight not in opt.state or "step" not in opt.state[model[1].weight]
    assert opt.state[model[2].weight]["anchor"].dtype == torch.float64
