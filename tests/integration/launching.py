"""Helpers that start real multi-process launches through launchers/*.sh on 127.0.0.1.

For other tests too (the engine's 2-node vs 2-rank finetune comparison): each returns the finished
processes, with stdout/stderr, after checking they all exited 0.

    from tests.integration.launching import two_node_deepspeed, torchrun
    two_node_deepspeed(["finetune", "--config", str(cfg), "parallel.zero_stage=2"], tmp_path)
    torchrun(["finetune", "--config", str(cfg)], nproc=2)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dist_forget.tracking.server import free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ROOT / "launchers"


def launch_env(**extra: str) -> dict[str, str]:
    """This environment for a launcher: the repository importable, this Python's torchrun/deepspeed on PATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    return env


def _check(procs: list[subprocess.Popen[str]], timeout_s: float) -> list[subprocess.CompletedProcess[str]]:
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout_s)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    for res in done:
        if res.returncode != 0:
            raise AssertionError(
                f"{res.args} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
    return done


def run_together(
    commands: list[tuple[list[str], dict[str, str]]], cwd: Path = ROOT, timeout_s: float = 600
) -> list[subprocess.CompletedProcess[str]]:
    """Start every (argv, env) at once, each in its own process group, and wait for all (see `_check`)."""
    procs = [
        subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
        for argv, env in commands
    ]  # fmt: skip
    return _check(procs, timeout_s)


def two_node_deepspeed(
    args: list[str], work_dir: Path, timeout_s: float = 600
) -> list[subprocess.CompletedProcess[str]]:
    """Two `deepspeed --hostfile H --no_ssh --node_rank {0,1}` invocations on loopback, one rank each."""
    hostfile = work_dir / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")  # two names, both loopback
    port = str(free_port())
    env = {"HOSTFILE": str(hostfile), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    return run_together([([str(LAUNCHERS / "deepspeed.sh"), *args], launch_env(**env, NODE_RANK=str(rank)))
                         for rank in (0, 1)], timeout_s=timeout_s)  # fmt: skip


def torchrun(
    args: list[str], nproc: int = 2, nnodes: int = 1, timeout_s: float = 600
) -> list[subprocess.CompletedProcess[str]]:
    """`nnodes` torchrun invocations (c10d rendezvous on loopback), `nproc` ranks each."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = launch_env(
        NPROC=str(nproc), NNODES=str(nnodes), RDZV_ENDPOINT=endpoint, RDZV_ID=f"test-{os.getpid()}"
    )
    return run_together(
        [([str(LAUNCHERS / "torchrun.sh"), *args], env) for _ in range(nnodes)], timeout_s=timeout_s
    )
