"""A throwaway `mlflow server` on loopback: for integration tests, benchmarks and local studies.

The server runs in its own process group and the whole group is ended on exit, because SIGTERM to the
parent alone can leave gunicorn/uvicorn workers behind. Job execution is switched off
for the same reason. `admin=(user, password)` starts MLflow's basic-auth app (`--app-name basic-auth`,
users in `<root>/basic_auth.db`) with that admin account: clients then need MLFLOW_TRACKING_USERNAME/PASSWORD.
`store=FOLDER` serves an existing local store instead (a sweep folder, or a copy of one): its `mlflow.db`
and the `mlartifacts/` beside it, which is how `mlflow ui` opens it (tracking/store.py).
`host=NAME` (e.g. this machine's name, for a sweep's SLURM tasks on other nodes) listens on every interface
and accepts requests addressed to NAME; the default listens on loopback only.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from dist_forget.errors import UserError
from dist_forget.net import free_port
from dist_forget.tracking.store import ARTIFACTS_DIR

_LOOPBACK = ("127.0.0.1", "localhost")


class LocalServer:
    """`with LocalServer(tmp_dir) as server:` → `server.uri` is a live http://127.0.0.1:PORT."""

    def __init__(
        self,
        root: str | Path,
        port: int | None = None,
        start_timeout_s: float = 120.0,
        admin: tuple[str, str] | None = None,
        store: str | Path | None = None,
        host: str = "127.0.0.1",
    ):
        self.root = Path(root).resolve()
        self.store = Path(store).resolve() if store is not None else None
        self.admin = admin
        self.port = port or free_port()
        self.host = host
        self.uri = f"http://{host}:{self.port}"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalServer:
        self.root.mkdir(parents=True, exist_ok=True)
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        cmd = [
            str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
            "server",
            "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db' if self.store else self.root / 'server.db'}",
            "--artifacts-destination", str(self.store / ARTIFACTS_DIR if self.store else self.root / "artifacts"),
            "--host", "127.0.0.1" if self.host in _LOOPBACK else "0.0.0.0",
            "--port", str(self.port),
            "--workers", "1",
        ]  # fmt: skip
        if self.host not in _LOOPBACK:  # MLflow answers only Host headers it knows (DNS-rebinding guard)
            cmd += [
                "--allowed-hosts",
                ",".join(f"{h}{p}" for h in (*_LOOPBACK, self.host) for p in ("", ":*")),
            ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        if self.admin is not None:  # the auth app reads its admin account from these on first start
            cmd += ["--app-name", "basic-auth"]
            env.update(MLFLOW_AUTH_ADMIN_USERNAME=self.admin[0], MLFLOW_AUTH_ADMIN_PASSWORD=self.admin[1])
            env.setdefault(
                "MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16)
            )  # its CSRF key: one per server
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(
                    f"mlflow server exited with {self.proc.returncode}; see {self.root}/server.log"
                )
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise UserError(
            f"mlflow server on port {self.port} not healthy in {self.start_timeout_s:.0f} s; "
            f"see {self.root}/server.log"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
