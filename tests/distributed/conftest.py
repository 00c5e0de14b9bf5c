"""Run a Python script as N real gloo ranks on this machine (one subprocess per rank).

`run_ranks(script, args, world)` sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (a free
port), one thread per rank and `DS_ACCELERATOR=cpu`, waits for all ranks, and fails the test with every
rank's output tail if any exits non-zero. Reusable by any distributed test (engine, optim, data).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_forget.net import free_port

REPO = Path(__file__).resolve().parents[2]


def run_ranks(
    script: str | Path, args: list[str], world: int, timeout: float = 300.0, env: dict[str, str] | None = None
) -> list[str]:
    """Start `world` ranks of `python script *args`; return each rank's combined stdout+stderr."""
    port = str(free_port())
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        **(env or {}),
    }
    procs = []
    for rank in range(world):
        rank_env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=rank_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs, failed = [], False
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
            out += "\n[timed out]"
            proc.returncode = -9
        outputs.append(out)
        failed |= proc.returncode != 0
    if failed:
        tails = "\n".join(
            f"--- rank {r} (rc {p.returncode}) ---\n{o[-3000:]}"
            for r, (p, o) in enumerate(zip(procs, outputs))
        )
        pytest.fail(f"{script} failed on {world} ranks:\n{tails}", pytrace=False)
    return outputs


ZERO_WORKER = Path(__file__).with_name("_zero_worker.py")
ZERO_STEPS, ZERO_SAVE_AT = 4, 2


@pytest.fixture(scope="session")
def zero_run(tmp_path_factory):
    """stage -> (checkpoint root, results folder) of a 2-rank run of _zero_worker.py: ZeRO 1, 2 and 3 in
    turn in one start-up, 4 steps each, a checkpoint at step 2, then an in-process resume from it."""
    root = tmp_path_factory.mktemp("zero")
    state: dict[str, bool] = {}

    def get(stage: int) -> tuple[Path, Path]:
        if not state:
            run_ranks(
                ZERO_WORKER,
                [
                    "--stages",
                    "1",
                    "2",
                    "3",
                    "--steps",
                    str(ZERO_STEPS),
                    "--save-at",
                    str(ZERO_SAVE_AT),
                    "--ckpt",
                    str(root / "ckpt"),
                    "--out",
                    str(root / "out"),
                    "--check-resume",
                ],
                world=2,
            )
            state["done"] = True
        return root / "ckpt" / f"stage{stage}", root / "out" / f"stage{stage}"

    return get
