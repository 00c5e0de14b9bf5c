"""Run every benchmark script (`benchmarks/bench_*.py`) in turn: `make bench`.

Each script measures its claim against a baseline in the same run and prints the ratio; the figures
are copied by hand into benchmarks/RESULTS.md together with the command that produced them.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main() -> int:
    scripts = sorted(Path(__file__).parent.glob("bench_*.py"))
    only = set(sys.argv[1:])
    for script in scripts:
        if only and script.stem not in only:
            continue
        print(f"=== {script.stem}", flush=True)
        runpy.run_module(f"benchmarks.{script.stem}", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
