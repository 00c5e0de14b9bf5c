"""A local SLURM cluster on loopback (dist_forget/sweep/slurm_cluster.py), for trying `--backend slurm`.

    python tools/slurm_cluster.py up [FOLDER]     # installs slurm-wlm + munge if missing (root), starts it
    python tools/slurm_cluster.py down [FOLDER]   # cancels its jobs, stops its daemons by PID
FOLDER defaults to work/slurm. `make slurm-up` / `make slurm-down` run these.
"""

import sys

from dist_forget.errors import UserError
from dist_forget.sweep.slurm_cluster import LocalSlurm


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    folder = argv[1] if len(argv) > 1 else "work/slurm"
    try:
        if argv[0] == "up":
            cluster = LocalSlurm(folder).start()
            print(f"SLURM cluster up ({', '.join(cluster.node_names())}); use it with: "
                  f"export SLURM_CONF={cluster.conf}")  # fmt: skip
        else:
            LocalSlurm.attach(folder).stop()
            print(f"SLURM cluster in {folder} stopped")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
