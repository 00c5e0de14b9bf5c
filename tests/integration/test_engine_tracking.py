"""The engine against a real `mlflow server` on loopback, in two engine runs:

1. online, stopped (Ctrl-C) during step 4, after the step-2 checkpoint: the server has params = the
   resolved config (lists as JSON, no tracking.* and no machine paths) plus the model's size and counts,
   the sweep's axes as tags, paths relative to the run root, the source tags, both dataset inputs, system
   metrics, the step metrics, the config artifact, status KILLED;
2. `--resume auto` while the server is unreachable (a dead port): training completes, warns once, and
   the metrics go to the JSONL fallback under the SAME run id (taken from the checkpoint); then
   `dist-forget track sync` uploads them into that run: train loss, both validation losses, observed
   inject fraction, tokens/s, lr, MFU, forgetting per evaluation, the best-step values, and the artifacts
   (config, summary.json, loss curves); FINISHED.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dist_forget import cli
from dist_forget.config import load_config
from dist_forget.engine import trainer
from dist_forget.engine.config import RunConfig
from dist_forget.tracking.fallback import FALLBACK_NAME
from dist_forget.tracking.server import LocalServer, free_port
from tests.conftest import tiny_finetune_overrides

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).parents[2] / "configs" / "finetune" / "tiny.yaml"
EXPERIMENT = "engine-it"


def _steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_engine_logs_resumes_into_the_same_run_and_falls_back(
    mlflow_server: LocalServer, tiny_data, tmp_path, monkeypatch, one_thread, base_model
):
    out = tmp_path / "run"
    overrides = tiny_finetune_overrides(
        tiny_data,
        base_model,
        out,
        "data.inject_fraction=0.25",
        "data.target_tokens=1000",  # whole sequences of 64: the run trains on 1024 unique tokens
        "tracking.enabled=true",
        f"tracking.experiment={EXPERIMENT}",
        "tracking.flush_every_s=0.2",
        "tracking.system_metrics_interval_s=0.5",
    )
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "DIST_FORGET_PARENT_RUN_ID",
        "DIST_FORGET_SWEEP_DIR",
    ):
        monkeypatch.delenv(var, raising=False)

    # 1. online; Ctrl-C when step 4 would start (steps 1-3 logged, checkpoint at step 2)
    online = load_config(RunConfig, CONFIG, [*overrides, f"tracking.uri={mlflow_server.uri}"])
    real_lr_at = trainer.lr_at

    def lr_at(step: int, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)

    monkeypatch.setattr(trainer, "lr_at", lr_at)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(online, "finetune")
    monkeypatch.setattr(trainer, "lr_at", real_lr_at)

    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "KILLED" and run.info.run_name == "run"
    params, tags = run.data.params, run.data.tags
    # MLflow 3 opens a model-development experiment on its runs table (else on an empty GenAI overview)
    assert (
        client.get_experiment_by_name(EXPERIMENT).tags["mlflow.experimentKind"] == "custom_model_development"
    )
    assert params["data.inject_fraction"] == "0.25" and params["optim.betas"] == "[0.9, 0.95]"
    # D: the unique tokens trained on (the runs table's value), the config's under a name that says so
    assert (params["data.target_tokens"], params["data.target_tokens_requested"]) == ("1024", "1000")
    assert params["model.size"] == "cpu-0.03m"  # looked up on the ladder: the config names only init_from
    assert params["model.params_non_embedding"] == "26784" and int(params["model.params_total"]) > 26784
    assert not [k for k in params if k.startswith("tracking.")]
    assert not {"out_dir", "model.init_from", "data.target", "data.pretrain"} & set(params)
    assert not [v for v in params.values() if str(tmp_path) in v]  # no path of this machine
    assert {k: tags[k] for k in ("stage", "domain", "size", "anchor_decay", "seed")} == {
        "stage": "finetune",
        "domain": "code",
        "size": "cpu-0.03m",
        "anchor_decay": "0.0",
        "seed": "0",
    }
    assert not {"inject_fraction", "target_tokens"} & set(tags)  # p and D are params, not tags too
    assert tags["dist_forget.path.out_dir"] == "run" and not tags["dist_forget.path.data.target"].startswith(
        "/"
    )
    assert tags["mlflow.source.name"] == "dist-forget finetune" and tags["mlflow.user"]
    assert len(tags["mlflow.source.git.commit"]) == 40  # the tests run from a git checkout
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"code", "english"}
    contexts = {name: {t.key: t.value for t in d.tags} for name, d in inputs.items()}
    assert (
        contexts["code"]["mlflow.data.context"] == "train" and contexts["code"]["inject_fraction"] == "0.25"
    )
    assert contexts["english"]["mlflow.data.context"] == "injected"
    profile = json.loads(inputs["code"].dataset.profile)
    assert profile["splits"]["train"]["tokens"] > 0
    assert inputs["code"].dataset.digest == profile["manifest_sha256"][:36]
    assert any(k.startswith("system/") for k in run.data.metrics)  # MLflow's system-metrics monitor
    assert _steps(client, run_id, "train/loss") == [1, 2, 3]
    assert [a.path for a in client.list_artifacts(run_id)] == ["run_config.json"]

    # 2. resume while the server is down: completes, warns once, JSONL fallback under the same run id
    dead = load_config(RunConfig, CONFIG, [*overrides, f"tracking.uri=http://127.0.0.1:{free_port()}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = trainer.train(dead, "finetune", resume="auto")
    offline = [w for w in caught if "unavailable" in str(w.message)]
    assert len(offline) == 1 and "track sync" in str(offline[0].message)
    assert summary["run_id"] == run_id
    assert json.loads((out / "summary.json").read_text())["run_id"] == run_id
    records = [json.loads(ln) for ln in (out / FALLBACK_NAME).read_text().splitlines()]
    assert records[0]["type"] == "run" and records[0]["run_id"] == run_id
    assert sorted(
        {r["step"] for r in records if r["type"] == "metrics" and "train/loss" in r["metrics"]}
    ) == [3, 4]
    assert records[-1] == {"type": "end", "status": "FINISHED"}

    # 3. sync: everything lands in the one run
    # the test changed only the tracking URI, which is no param: nothing "differs" (no stale tracking.*)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert cli.main(["track", "sync", "--path", str(out), "--uri", mlflow_server.uri]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert set(_steps(client, run_id, "train/loss")) == {
        1,
        2,
        3,
        4,
    }  # step 3 twice: before and after the stop
    step3 = {m.value for m in client.get_metric_history(run_id, "train/loss") if m.step == 3}
    assert len(step3) == 1  # the resumed step 3 repeats the interrupted one exactly
    for key in (
        "train/loss",
        "val/ft_loss",
        "val/pt_loss",
        "inject_fraction",
        "train/inject_fraction_cum",
        "train/tokens_per_s",
        "train/lr",
        "train/mfu",
        "train/injected_sequences",
        "val/pt_loss_base",
    ):
        assert key in run.data.metrics, key
    assert _steps(client, run_id, "val/ft_loss") == [0, 2, 4] == _steps(client, run_id, "val/forgetting")
    base = run.data.metrics["val/pt_loss_base"]
    pt = {m.step: m.value for m in client.get_metric_history(run_id, "val/pt_loss")}
    for m in client.get_metric_history(run_id, "val/forgetting"):
        assert m.value == pytest.approx(pt[m.step] - base)
    best = {k[5:]: v for k, v in run.data.metrics.items() if k.startswith("best/")}
    assert best["ft_loss"] == summary["ft_loss"] and best["pt_loss"] == summary["pt_loss"]
    assert best["forgetting"] == pytest.approx(summary["pt_loss"] - summary["pt_loss_base"])
    assert best["step"] == summary["steps"]
    assert run.data.metrics["train/injected_sequences"] == 4  # 16 sequences at p = 0.25
    # p is one metric, `inject_fraction` (the p set for each step), beside the param
    assert [k for k in run.data.metrics if k.endswith("inject_fraction")] == ["inject_fraction"]
    assert set(_steps(client, run_id, "inject_fraction")) == {1, 2, 3, 4}
    assert {m.value for m in client.get_metric_history(run_id, "inject_fraction")} == {0.25}
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"run_config.json", "summary.json", "report.json", "loss_curves.png"} <= names
    local = client.download_artifacts(run_id, "summary.json", str(tmp_path / "dl"))
    assert json.loads(Path(local).read_text()) == summary
    # no artifact names a folder of this machine: run_config.json's paths are relative to the run's root
    dl = Path(client.download_artifacts(run_id, "", str(tmp_path / "all")))
    for path in (p for p in dl.rglob("*") if p.suffix in (".json", ".md", ".csv")):
        assert str(tmp_path) not in path.read_text(), path.name
    config = json.loads((dl / "run_config.json").read_text())
    assert (config["out_dir"], config["data"]["target"]) == ("run", os.path.relpath(tiny_data.code, tmp_path))
    assert json.loads((out / "run_config.json").read_text())["out_dir"] == str(
        out
    )  # the local file: as given
