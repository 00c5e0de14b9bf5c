"""What a run and a sweep's parent tell MLflow: params, axis tags, relative paths, the fit as metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_forget.engine.run_meta import model_size, params_and_tags
from dist_forget.models.ladder import size_of
from dist_forget.sweep.collect import fit_metrics

SIG = {"hidden": 32, "layers": 2, "ffn": 96, "non_embedding_params": 26784, "total_params": 43168}


def test_finetune_params_are_the_config_and_the_model_tags_are_the_axes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DIST_FORGET_SWEEP_DIR", str(tmp_path))
    base = tmp_path / "pretrain" / "cpu-0.03m"
    base.mkdir(parents=True)
    (base / "summary.json").write_text('{"run_id": "abc123"}')
    flat = {"out_dir": str(tmp_path / "finetune" / "x"), "name": "x", "domain": "code",
            "model.size": None, "model.init_from": str(base), "model.cache_dir": "work/models",
            "data.target": str(tmp_path / "shards" / "code"), "data.pretrain": None, "data.inject_fraction": 0.01,
            "data.target_tokens": 20000, "data.inject_prior": str(tmp_path / "fit" / "fit.json"),
            "data.cache_dir": "~/.cache/x", "optim.betas": (0.9, 0.95), "optim.anchor_decay": 0.0, "train.seed": 1,
            "tracking.uri": "http://h:5000", "tracking.parent_run_id": None}  # fmt: skip
    params, tags = params_and_tags(flat, "finetune", SIG, 20032, tmp_path / "finetune" / "x")
    assert not {
        "out_dir",
        "model.init_from",
        "model.cache_dir",
        "data.target",
        "tracking.uri",
        "tracking.parent_run_id",
    } & set(params)
    assert params["data.pretrain"] is None and params["optim.betas"] == (0.9, 0.95)  # JSON'd by the tracker
    assert (params["model.size"], params["model.params_non_embedding"], params["model.params_total"]) == (
        "cpu-0.03m",
        26784,
        43168,
    )
    assert {k: tags[k] for k in ("stage", "domain", "size", "anchor_decay", "seed")} == {
        "stage": "finetune", "domain": "code", "size": "cpu-0.03m", "anchor_decay": "0.0", "seed": "1"}  # fmt: skip
    # p and D are params only; D is what the run trained on (whole sequences), the config's value named so
    assert not {"inject_fraction", "target_tokens"} & set(tags) and params["data.inject_fraction"] == 0.01
    assert (params["data.target_tokens"], params["data.target_tokens_requested"]) == (20032, 20000)
    # any other absolute path (here the planner's fit) is relative to the sweep folder: no machine path
    assert params["data.inject_prior"] == "fit/fit.json" and params["data.cache_dir"] == "~/.cache/x"
    assert tags["dist_forget.path.out_dir"] == "finetune/x"
    assert tags["dist_forget.path.model.init_from"] == "pretrain/cpu-0.03m"
    assert (
        tags["dist_forget.path.data.target"] == "shards/code" and tags["dist_forget.base_run_id"] == "abc123"
    )


def test_a_named_model_stays_a_param_and_names_the_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIST_FORGET_SWEEP_DIR", raising=False)
    sig = {**SIG, "hidden": 576, "layers": 30, "ffn": 1536}
    flat = {"out_dir": "runs/a", "model.size": None, "model.init_from": "smollm2", "data.target": "s/code"}
    params, tags = params_and_tags(flat, "finetune", sig, 100, "runs/a")
    assert params["model.init_from"] == "smollm2" and params["model.size"] == "smollm2"
    assert tags["dist_forget.path.out_dir"] == "a" and tags["domain"] == "code"  # relative to runs/
    assert model_size(None, str(tmp_path), sig) == "N26784" and size_of(80, 4, 224) == "cpu-0.3m"


def test_fit_json_becomes_comparable_metrics() -> None:
    fit = {"fits": [
        {"domain": "code", "form": "forgetting", "params": {"A": 2.5, "alpha": 0.2}, "mre": 0.01, "max_re": 0.03,
         "r2": 0.99, "holdout": {"mre": 0.05, "max_re": 0.08}, "warnings": [{"code": "x"}, {"code": "y"}]},
        {"domain": "my wiki+", "form": "finetune", "params": {"E": float("nan")}, "mre": 0.02, "max_re": None,
         "r2": 0.9, "holdout": None, "warnings": []},
    ]}  # fmt: skip
    assert fit_metrics(fit) == {
        "fit/code/forgetting/A": 2.5, "fit/code/forgetting/alpha": 0.2, "fit/code/forgetting/mre": 0.01,
        "fit/code/forgetting/max_re": 0.03, "fit/code/forgetting/r2": 0.99,
        "fit/code/forgetting/heldout_mre": 0.05, "fit/code/forgetting/heldout_max_re": 0.08,
        "fit/code/forgetting/warnings": 2.0,
        "fit/my wiki_/finetune/mre": 0.02, "fit/my wiki_/finetune/r2": 0.9, "fit/my wiki_/finetune/warnings": 0.0,
    }  # fmt: skip
