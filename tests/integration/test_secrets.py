"""Credentials in a tracking URI against a real `mlflow server --app-name basic-auth` on loopback.

Right password in the URI: the run logs to the server, and the password is in no file the run wrote (its
folder: checkpoints, meta.json, run_config.json, the DeepSpeed-layout .pt), not in the server's store
(params, artifacts), not in stdout/stderr. Wrong password: one line naming the URI without the secret, the
run finishes into the fallback JSONL (owner-only), and `track sync` uploads it once the right credentials
are in MLflow's environment variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dist_forget.tracking.fallback import FALLBACK_NAME
from dist_forget.tracking.mlflow_calls import MlflowUnavailable, probe
from dist_forget.tracking.server import LocalServer
from tests.conftest import tiny_finetune_overrides

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "finetune" / "tiny.yaml"
USER, SECRET, WRONG = "admin", "Sup3r-S3cret-Pa55word", "Wr0ng-Guess-Pa55word"
ENV_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "DIST_FORGET_PARENT_RUN_ID",
)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    with LocalServer(tmp_path_factory.mktemp("auth_server"), admin=(USER, SECRET)) as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow credentials or run ids from the developer's shell (and none left behind by use_uri)."""
    for key in ENV_KEYS:
        monkeypatch.setenv(key, "x")
        monkeypatch.delenv(key)


def _uri(server: LocalServer, password: str) -> str:
    return f"http://{USER}:{password}@127.0.0.1:{server.port}"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    base.update(
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return subprocess.run(
        [sys.executable, "-m", "dist_forget.cli", *args],
        env={**base, **(env or {})},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _finetune(
    tiny_data, base_model: Path, out: Path, uri: str, experiment: str
) -> subprocess.CompletedProcess[str]:
    overrides = tiny_finetune_overrides(
        tiny_data,
        base_model,
        out,
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        f"tracking.experiment={experiment}",
        "tracking.flush_every_s=0.2",
    )
    return _cli("finetune", "--config", str(CONFIG), *overrides)


def _holding(root: Path, secret: str) -> list[str]:
    """Every file under `root` whose bytes contain `secret`."""
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and secret.encode() in p.read_bytes()]


def _client(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    return MlflowClient(server.uri)


def test_probe_sends_the_uri_credentials(auth_server: LocalServer, clean_env: None) -> None:
    probe(_uri(auth_server, SECRET))  # a URI with userinfo used to be "unreachable" (urllib cannot parse it)
    with pytest.raises(MlflowUnavailable) as exc:
        probe(_uri(auth_server, WRONG))
    assert f"http://***@127.0.0.1:{auth_server.port}" in str(exc.value) and "refused" in str(exc.value)
    assert WRONG not in str(exc.value)
    with pytest.raises(MlflowUnavailable, match="none were given"):
        probe(auth_server.uri)


def test_right_password_logs_and_leaks_nowhere(
    tiny_data,
    base_model,
    auth_server: LocalServer,
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    proc = _finetune(tiny_data, base_model, out, _uri(auth_server, SECRET), "sec-right")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SECRET not in proc.stdout + proc.stderr
    assert "unavailable" not in proc.stderr
    assert not (out / FALLBACK_NAME).exists()
    assert (out / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt").is_file()
    assert _holding(tmp_path, SECRET) == []
    assert _holding(auth_server.root, SECRET) == []  # tracking store, artifacts, auth db (hashed)

    client = _client(auth_server, monkeypatch)
    exp = client.get_experiment_by_name("sec-right")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert not [k for k in run.data.params if k.startswith("tracking.")]  # where to log is no param
    assert not [v for v in {**run.data.params, **run.data.tags}.values() if SECRET in v]
    config = client.download_artifacts(run.info.run_id, "run_config.json", str(tmp_path / "dl"))
    assert (
        json.loads(Path(config).read_text())["tracking"]["uri"] == f"http://***@127.0.0.1:{auth_server.port}"
    )
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    # files that hold what came from the environment are the owner's only
    assert (out / "run_config.json").stat().st_mode & 0o077 == 0
    assert (out / "checkpoints").stat().st_mode & 0o077 == 0


def test_wrong_password_falls_back_then_sync_uploads(
    tiny_data,
    base_model,
    auth_server: LocalServer,
    tmp_path: Path,
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "run"
    shown = f"http://***@127.0.0.1:{auth_server.port}"
    proc = _finetune(tiny_data, base_model, out, _uri(auth_server, WRONG), "sec-wrong")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "unavailable" in ln]
    assert shown in line and "refused" in line and str(out / FALLBACK_NAME) in line
    fallback = out / FALLBACK_NAME
    assert fallback.is_file() and fallback.stat().st_mode & 0o777 == 0o600
    for secret in (WRONG, SECRET):
        assert secret not in proc.stdout + proc.stderr
        assert _holding(tmp_path, secret) == []

    bad = _cli(
        "track",
        "sync",
        "--path",
        str(out),
        env={"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": WRONG},
    )
    assert bad.returncode == 2
    err = bad.stderr.strip()
    assert len(err.splitlines()) == 1 and shown in err and "refused" in err and WRONG not in err
    assert fallback.is_file()

    good = _cli(
        "track",
        "sync",
        "--path",
        str(out),
        env={"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": SECRET},
    )
    assert good.returncode == 0, good.stderr[-3000:]
    assert SECRET not in good.stdout + good.stderr and shown in good.stdout
    client = _client(auth_server, monkeypatch)
    (run,) = client.search_runs([client.get_experiment_by_name("sec-wrong").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 4
    assert not [k for k in run.data.params if k.startswith("tracking.")]
    assert not [v for v in {**run.data.params, **run.data.tags}.values() if SECRET in v or WRONG in v]
    assert _holding(auth_server.root, SECRET) == [] and _holding(auth_server.root, WRONG) == []
