"""One SLURM array task: run point INDEX of a generated points JSON (`python -m dist_forget.sweep.task`).

Usage: python -m dist_forget.sweep.task POINTS_JSON INDEX   (INDEX = $SLURM_ARRAY_TASK_ID)
A finished point exits 0 at once, so resubmitting the whole array only runs what is missing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dist_forget.sweep.grid import Point
from dist_forget.sweep.pool import LOG_NAME, start, try_lock
from dist_forget.sweep.requeue import requeue, supervise


def run_task(points_json: Path, index: int) -> int:
    points = [Point(**p) for p in json.loads(points_json.read_text())]
    if not 0 <= index < len(points):
        print(f"error: task index {index} outside 0..{len(points) - 1} of {points_json}", file=sys.stderr)
        return 2
    point = points[index]
    if point.done():
        print(f"{point.name}: already finished ({point.summary})")
        return 0
    if point.needs:
        needed = next((p for p in points if p.name == point.needs), None)
        if needed is not None and not needed.done():
            print(f"error: {point.name} needs {point.needs}, which has not finished", file=sys.stderr)
            return 1
    lock = try_lock(point)
    if lock is None:
        print(
            f"error: {point.name} is running in another task ({point.out_dir}/.sweep.lock)", file=sys.stderr
        )
        return 1
    print(f"{point.name}: {' '.join(point.argv)} (log: {Path(point.out_dir) / LOG_NAME})", flush=True)
    # the time-limit warning: the run saves and stops, and the job is requeued to continue (sweep/requeue.py)
    rc, warned = supervise(start(point, dict(os.environ), lock))
    lock.close()
    if requeue(rc, warned):
        return 0
    if rc == 0 and not point.done():
        print(f"error: {point.name} exited 0 but wrote no {point.summary}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(run_task(Path(sys.argv[1]), int(sys.argv[2])))
