"""A tiny sweep on the real engine: pretrain, two finetunes; killed midway, rerun, nothing redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def attempts(run_dir: Path) -> int:
    log = run_dir / "sweep.log"
    return sum(line.startswith("=== ") for line in log.read_text().splitlines()) if log.exists() else 0


def test_real_sweep_killed_and_resumed(tiny_data, tmp_path: Path) -> None:  # noqa: ANN001
    quick = ["train.eval_sequences=8", "tracking.enabled=false", "schedule.warmup=2"]
    doc = {
        "name": "engine-it",
        "out_dir": str(tmp_path / "sweep"),
        "max_parallel": 1,
        "pretrain": {"config": str(ROOT / "configs/pretrain/tiny.yaml"), "sizes": ["cpu-0.03m"],
                     "tokens_per_param": 1, "overrides": [f"data.target={tiny_data.english}",
                                                          "train.eval_every=0", "checkpoint.every=0", *quick]},
        "finetune": {"config": str(ROOT / "configs/finetune/tiny.yaml"), "domains": {"code": str(tiny_data.code)},
                     "overrides": [f"data.pretrain={tiny_data.english}", "schedule.steps=8", "train.eval_every=4",
                                   "checkpoint.every=2", *quick]},
        "grid": {"target_tokens": [2048], "inject_fraction": [0.0, 0.01]},
        "fit": {"enabled": False},
        "tracking": {"enabled": False},
    }  # fmt: skip
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "dist_forget.cli", "sweep", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = tmp_path / "sweep"
    first_ft = sweep / "finetune" / "cpu-0.03m_code_D2048_p0_a0_s0"
    second_ft = sweep / "finetune" / "cpu-0.03m_code_D2048_p0.01_a0_s0"

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 400
    while not (first_ft / "summary.json").exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running finetune die together
    proc.wait()
    assert not (second_ft / "summary.json").exists()

    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 already finished, 1 to run" in res.stdout
    assert attempts(sweep / "pretrain" / "cpu-0.03m") == 1 and attempts(first_ft) == 1
    assert attempts(second_ft) in (1, 2)  # started before the kill or not
    summary = json.loads((second_ft / "summary.json").read_text())
    assert summary["inject_fraction"] == 0.01 and summary["model_params"] == 26784
    with open(sweep / "runs.csv") as fh:
        assert len(fh.read().splitlines()) == 3  # header + both finetunes


def rest(base: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of MLflow's REST API (GET with query, or POST with a JSON body), as a browser makes it."""
    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_real_sweep_as_a_researcher_reads_it_in_mlflow(tiny_data, tmp_path: Path, mlflow_server) -> None:  # noqa: ANN001
    """Forgetting as a metric series, the sweep's axes as params/tags, dataset inputs, nesting,
    and each finetune's best model registered (both at once: the registry name is created by one of them)."""
    quick = ["train.eval_sequences=8", "schedule.warmup=2", "tracking.flush_every_s=0.5"]
    doc = {
        "name": "engine-mlflow",
        "out_dir": str(tmp_path / "sweep"),
        "max_parallel": 2,
        "pretrain": {"config": str(ROOT / "configs/pretrain/tiny.yaml"), "sizes": ["cpu-0.03m"],
                     "tokens_per_param": 1, "overrides": [f"data.target={tiny_data.english}",
                                                          "train.eval_every=0", "checkpoint.every=0", *quick]},
        "finetune": {"config": str(ROOT / "configs/finetune/tiny.yaml"), "domains": {"code": str(tiny_data.code)},
                     "overrides": [f"data.pretrain={tiny_data.english}", "schedule.steps=6", "train.eval_every=2",
                                   "train.batch_size=4", "train.micro_batch=4", "tracking.register_model=tiny-ft",
                                   *quick]},
        "grid": {"target_tokens": [2048], "inject_fraction": [0.0, 0.25]},
        "fit": {"enabled": False},
        "tracking": {"experiment": "sweep-engine-mlflow", "uri": mlflow_server.uri},
    }  # fmt: skip
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DIST_FORGET_"))}
    res = subprocess.run(
        [sys.executable, "-m", "dist_forget.cli", "sweep", "--config", str(config)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    base = mlflow_server.uri
    exp = rest(base, "experiments/get-by-name", experiment_name="sweep-engine-mlflow")["experiment"]
    runs = {
        r["info"]["run_name"]: r
        for r in rest(base, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    }
    assert set(runs) == {
        "sweep-engine-mlflow",
        "pretrain-cpu-0.03m",
        "cpu-0.03m_code_D2048_p0_a0_s0",
        "cpu-0.03m_code_D2048_p0.25_a0_s0",
    }

    def kv(run: dict, part: str) -> dict[str, str]:
        return {x["key"]: x["value"] for x in run["data"].get(part, [])}

    parent_id = runs["sweep-engine-mlflow"]["info"]["run_id"]
    assert kv(runs["sweep-engine-mlflow"], "tags")["stage"] == "sweep"
    pre = runs["pretrain-cpu-0.03m"]
    ft = runs["cpu-0.03m_code_D2048_p0.25_a0_s0"]
    tags, params = kv(ft, "tags"), kv(ft, "params")
    assert {k: tags[k] for k in ("stage", "domain", "size", "anchor_decay", "seed")} == {
        "stage": "finetune", "domain": "code", "size": "cpu-0.03m", "anchor_decay": "0.0", "seed": "0"}  # fmt: skip
    # p and D once each, as params (D: the unique tokens trained on, the config's value named as such)
    assert (params["data.inject_fraction"], params["data.target_tokens"]) == ("0.25", "2048")
    assert params["data.target_tokens_requested"] == "2048" and not {
        "inject_fraction",
        "target_tokens",
    } & set(tags)
    assert kv(pre, "tags")["stage"] == "pretrain" and kv(pre, "tags")["size"] == "cpu-0.03m"
    # flat under the sweep's run, linked to the base model's run
    assert tags["mlflow.parentRunId"] == kv(pre, "tags")["mlflow.parentRunId"] == parent_id
    assert tags["dist_forget.base_run_id"] == pre["info"]["run_id"]
    assert tags["dist_forget.path.out_dir"] == "finetune/cpu-0.03m_code_D2048_p0.25_a0_s0"
    assert tags["dist_forget.path.model.init_from"] == "pretrain/cpu-0.03m"
    assert params["model.size"] == "cpu-0.03m" and params["model.params_non_embedding"] == "26784"
    assert not [k for k in params if k.startswith("tracking.")]
    assert not [v for v in list(params.values()) + list(tags.values()) if str(tmp_path) in v]
    assert tags["mlflow.source.name"] == "dist-forget finetune" and "mlflow.user" in tags

    history = rest(base, "metrics/get-history", run_id=ft["info"]["run_id"], metric_key="val/forgetting")[
        "metrics"
    ]
    pt = rest(base, "metrics/get-history", run_id=ft["info"]["run_id"], metric_key="val/pt_loss")["metrics"]
    pt0 = kv(ft, "metrics")["val/pt_loss_base"]
    assert sorted(m["step"] for m in history) == [0, 2, 4, 6]
    by_step = {m["step"]: m["value"] for m in pt}
    assert all(abs(m["value"] - (by_step[m["step"]] - pt0)) < 1e-9 for m in history)
    metrics = kv(ft, "metrics")
    assert {
        "best/ft_loss",
        "best/pt_loss",
        "best/forgetting",
        "best/step",
        "train/injected_sequences",
    } <= set(metrics)
    assert metrics["train/injected_sequences"] == 6  # 6 steps x 4 sequences at p = 0.25
    assert "val/forgetting" not in kv(pre, "metrics")

    inputs = {d["dataset"]["name"]: d for d in ft["inputs"]["dataset_inputs"]}
    assert set(inputs) == {"code", "english"}
    input_tags = {n: {t["key"]: t["value"] for t in d["tags"]} for n, d in inputs.items()}
    assert input_tags["english"] == {
        "mlflow.data.context": "injected",
        "role": "pretraining",
        "inject_fraction": "0.25",
    }
    assert (
        input_tags["code"]["mlflow.data.context"] == "train" and input_tags["code"]["target_tokens"] == "2048"
    )
    profile = json.loads(inputs["code"]["dataset"]["profile"])
    assert (
        profile["splits"]["train"]["tokens"] > 0
        and inputs["code"]["dataset"]["digest"] == profile["manifest_sha256"][:36]
    )

    versions = rest(base, "model-versions/search", filter="name='tiny-ft'")["model_versions"]
    finetunes = {runs[n]["info"]["run_id"] for n in runs if n.startswith("cpu-")}
    assert {v["run_id"] for v in versions} == finetunes and len(versions) == 2
    assert {v["source"] for v in versions} == {f"runs:/{r}/best_model" for r in finetunes}
    files = rest(base, "artifacts/list", run_id=ft["info"]["run_id"], path="best_model")["files"]
    assert "best_model/config.json" in {f["path"] for f in files}
