"""What a rank says when a collective fails because another rank stalled or died: one line, not gloo's
or NCCL's traceback.

A collective that waits longer than `parallel.timeout_s` (engine/backend.py sets it on every process
group) or loses its connection raises on every rank still running. Which rank failed first cannot be read
from the error (gloo names a peer address at best), so the ranks that got the error report in on the
rendezvous store and name the ones that did not: those stalled or died. When the store itself does not
answer, the process holding it is the one gone: rank 0 (torchrun's agent holds it under torchrun).
"""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import timedelta

from dist_forget.errors import UserError

# what gloo, NCCL and torch put in the message of a collective that timed out or lost a peer
_COLLECTIVE = re.compile(
    r"gloo|nccl|timed out|timeout|connection (closed|reset|refused)|broken pipe|peer|socket", re.I
)
_KEY = "dist-forget/failed/{}"


def is_collective_error(exc: BaseException) -> bool:
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", ())
    return isinstance(exc, dist_error) or (
        isinstance(exc, RuntimeError) and bool(_COLLECTIVE.search(str(exc)))
    )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return re.sub(r"^\[[^\]]*\]\s*", "", text)[:300]  # gloo prefixes its source file and line


def say_failed(exc: BaseException, rank: int, world: int) -> None:
    """One line naming this rank before its traceback: a launcher reports only a process's exit status."""
    print(f"rank {rank} of {world} failed first: {type(exc).__name__}: {_first_line(exc)}; the other ranks "
          "stop when their next collective finds it gone", file=sys.stderr, flush=True)  # fmt: skip


def silent_ranks(rank: int, world: int, wait_s: float) -> list[int] | None:
    """Report this rank on the store, then wait up to `wait_s` for the others that also got the error;
    the ranks that never report (sorted), or None when the store does not answer."""
    from torch.distributed import distributed_c10d as c10d

    try:
        store = c10d._get_default_store()
        store.set_timeout(timedelta(seconds=max(1.0, wait_s)))
        store.set(_KEY.format(rank), "1")
        deadline = time.monotonic() + wait_s
        while True:
            silent = [r for r in range(world) if not store.check([_KEY.format(r)])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)
    except Exception:  # noqa: BLE001 - the store's host is gone or stopped: that is the answer
        return None


def peer_lost(exc: BaseException, rank: int, world: int, timeout_s: float) -> UserError:
    """The one line for a collective that failed on this rank (`exc`), naming the rank(s) that failed."""
    silent = silent_ranks(rank, world, min(10.0, timeout_s))
    if silent is None:
        holder = "torchrun's agent" if "TORCHELASTIC_RUN_ID" in os.environ else "rank 0"
        who = f"the rendezvous store does not answer either: {holder}, which holds it, stalled or died"
    elif silent:
        who = f"rank {', '.join(map(str, silent))} stalled or died first (it did not report in)"
    else:
        who = "every rank reported the failure (a network problem?)"
    return UserError(
        f"rank {rank} of {world}: a collective failed or waited longer than parallel.timeout_s = "
        f"{timeout_s:g} s ({type(exc).__name__}: {_first_line(exc)}); {who}; its own log says why; the "
        "last complete checkpoint is intact: fix or restart that rank's node and rerun with --resume auto"
    )
