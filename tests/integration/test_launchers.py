"""The launchers start real processes on 127.0.0.1 that form one gloo group of world size 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.launching import LAUNCHERS, ROOT, torchrun, two_node_deepspeed

pytestmark = pytest.mark.slow
CHECK = str(Path(__file__).with_name("dist_check.py"))


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_deepspeed_two_nodes_no_ssh(tmp_path: Path) -> None:
    two_node_deepspeed([CHECK, str(tmp_path)], tmp_path)
    for rank, seen in enumerate(_ranks(tmp_path)):
        assert (seen["rank"], seen["world_size"], seen["all_reduce_sum"]) == (rank, 2, 3.0)
        assert seen["local_rank"] == 0  # one rank per "node"
        assert (seen["omp_num_threads"], seen["ds_accelerator"], seen["torch_threads"]) == ("1", "cpu", 1)


def test_torchrun_c10d_two_ranks(tmp_path: Path) -> None:
    # (two torchrun invocations with NNODES=2 rendezvous the same way; left out to save CI time)
    torchrun([CHECK, str(tmp_path)], nproc=2)
    for rank, seen in enumerate(_ranks(tmp_path)):
        assert (seen["rank"], seen["world_size"], seen["all_reduce_sum"]) == (rank, 2, 3.0)
        assert seen["torch_threads"] == 1


def test_launcher_without_command_prints_usage() -> None:
    res = subprocess.run([str(LAUNCHERS / "torchrun.sh")], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 2 and "usage:" in res.stderr


@pytest.mark.parametrize("script", ["deepspeed.sh", "torchrun.sh", "slurm.sbatch", "common.sh"])
def test_shell_syntax(script: str) -> None:
    assert subprocess.run(["bash", "-n", str(LAUNCHERS / script)]).returncode == 0
