"""Commands run as a reader of the README runs them: in a new terminal after its two set-up lines.

A new shell is a login bash (`bash -lc`, so the system's profile sets PATH) without what the test's own
process has: none of the variables `make` exports to its recipes (DS_ACCELERATOR, HF_HUB_OFFLINE, ...),
no virtualenv on PATH. Every command is preceded by the README's set-up lines after `make install`
(that is, `source .venv/bin/activate`), in a folder whose `.venv` is the virtualenv running the tests
(the one `make install` made). PYTHONPATH names this checkout, as the virtualenv's editable install
does (so that a worktree's tests run its own code).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from dist_forget.net import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# what the Makefile exports to every recipe (a shell of one's own has none of it)
MAKE_EXPORTS = ("DS_ACCELERATOR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM",
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")  # fmt: skip
# what other tests or the caller's session may have set, which a fresh terminal would not have
SESSION = ("VIRTUAL_ENV", "PYTHONHOME", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
           "DIST_FORGET_PARENT_RUN_ID", "DIST_FORGET_SWEEP_DIR")  # fmt: skip
INSTALL = "make install"


def setup_lines() -> list[str]:
    """The README's set-up block: the bash block holding `source .venv/bin/activate`, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "source .venv/bin/activate" in b)
    return [ln for ln in (" ".join(shlex.split(x, comments=True)) for x in block.splitlines()) if ln]


def activation() -> str:
    """The set-up lines a new shell runs (all but `make install`, which made the venv running the tests)."""
    return " && ".join(ln for ln in setup_lines() if ln != INSTALL)


def link_venv(folder: Path) -> None:
    """Make `folder/.venv` the virtualenv running the tests (what `make install` made), unless it exists."""
    venv = folder / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))


def in_new_shell(words: list[str] | str) -> list[str]:
    """argv of a login bash that runs the set-up, then the command line (words are quoted for the shell)."""
    command = words if isinstance(words, str) else shlex.join(words)
    return ["bash", "-lc", f"{activation()} && {command}"]


def new_shell_env(**extra: str) -> dict[str, str]:
    """A fresh terminal's environment: the session's, less the test's and make's settings and the venv."""
    env = {k: v for k, v in os.environ.items() if k not in MAKE_EXPORTS + SESSION}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", os.defpath).split(os.pathsep) if p != venv_bin)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def stop(proc: subprocess.Popen) -> None:
    """End a command started in a new shell with start_new_session: its whole process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def serve_until_healthy(
    command: str, cwd: Path, env: dict[str, str] | None = None, timeout_s: float = 300
) -> str:
    """Run an `mlflow ui ...` command line in a new shell on a free port (`--host 127.0.0.1 --port P` added:
    not 5000, which another job may hold) until /health answers; return the answer, and stop it.
    MLFLOW_WORKERS=1 (mlflow's own setting; 4 by default): 4 server processes only slow a 2-core box."""
    port = free_port()
    log = cwd / f"mlflow-ui-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(in_new_shell(f"{command} --host 127.0.0.1 --port {port}"), cwd=cwd,
                                env={**(env or new_shell_env()), "MLFLOW_WORKERS": "1"}, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"`{command}` exited {proc.returncode}: {log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    return resp.read().decode()
            except OSError:
                time.sleep(1)
        raise AssertionError(f"`{command}` did not answer in {timeout_s:.0f} s: {log.read_text()[-2000:]}")
    finally:
        stop(proc)
