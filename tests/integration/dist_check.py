"""Run by a launcher on every rank: join the gloo group, all_reduce, write what this rank saw.

Usage (through a launcher): dist_check.py OUT_DIR. Writes OUT_DIR/rank<R>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    record = {
        "rank": rank,
        "world_size": world,
        "all_reduce_sum": value.item(),
        "local_rank": int(os.environ.get("LOCAL_RANK", -1)),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "ds_accelerator": os.environ.get("DS_ACCELERATOR"),
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
