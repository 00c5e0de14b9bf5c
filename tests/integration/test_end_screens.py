"""What an end screen tells a user to run runs as printed, in a new shell after the README's set-up
(tests/integration/newshell.py): the demo's `mlflow ui` line serves its sweep's store, and the other
commands it names exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from dist_forget.config import load_config
from dist_forget.study.demo import end_screen
from dist_forget.sweep.config import SweepConfig
from tests.integration.newshell import ROOT, in_new_shell, link_venv, new_shell_env, serve_until_healthy


def test_the_demo_end_screen_commands_run_as_printed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the demo's sweep folder, relative as in configs/sweep/demo.yaml
    link_venv(tmp_path)
    cfg = load_config(SweepConfig, ROOT / "configs" / "sweep" / "demo.yaml")
    root = tmp_path / "work" / "sweeps" / "demo"
    root.mkdir(parents=True)
    screen = end_screen(cfg, root)
    (ui,) = [ln.strip() for ln in screen.splitlines() if "mlflow ui" in ln]
    assert ui == f"cd {root} && mlflow ui --backend-store-uri sqlite:///mlflow.db"
    assert serve_until_healthy(ui, tmp_path) == "OK"
    assert (root / "mlflow.db").is_file()  # it opened the sweep's own store
    targets = re.findall(r"\bmake (\w+)", screen)
    assert targets == ["study"]
    for target in targets:  # the make targets it names exist (-n: say what would run, run nothing)
        res = subprocess.run(in_new_shell(["make", "-n", "-C", str(ROOT), target]), cwd=tmp_path,
                             env=new_shell_env(), capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0 and "dist-forget sweep --config configs/sweep/micro.yaml" in res.stdout


def test_the_fallback_hint_names_a_command_that_runs(tmp_path: Path) -> None:
    """The tracker's "upload them later with `dist-forget track sync --path DIR`" on an empty run folder:
    the command exists in a new shell and says there is nothing to upload (exit 2 with one line)."""
    from dist_forget.tracking import tracker

    source = Path(tracker.__file__).read_text()
    (hint,) = re.findall(r"`(dist-forget track sync --path) \{path\.parent\}`", source)
    link_venv(tmp_path)
    res = subprocess.run(in_new_shell(f"{hint} {tmp_path}"), cwd=tmp_path, env=new_shell_env(),
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("error: ") and len(res.stderr.splitlines()) == 1, (
        res.stderr
    )
