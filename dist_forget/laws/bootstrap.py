"""Bootstrap: refit every form on resampled runs, all resamples at once, in parallel over processes.

A resample is a vector of integer weights (how often each run was drawn), so the refit minimises the
same summed Huber objective as the point fit, started from the point fit. Instead of one L-BFGS-B call
per resample (about 50 iterations of a few tenths of a millisecond of Python overhead each), the
resamples of a chunk are solved together by a vectorised Levenberg-Marquardt on the Huber objective
(iteratively reweighted Gauss-Newton steps, each accepted only if the objective decreases), which costs
one numpy pass per iteration for the whole chunk. A resample the solver cannot finish is handed to
L-BFGS-B, so every sample is a minimiser of the same objective.

Resample weights come from `numpy.random.default_rng([seed, fit, chunk])`, so the samples do not depend
on the number of worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from dist_forget.laws._blas import single_threaded_blas
from dist_forget.laws.fit import FitConfig, solve_batch
from dist_forget.laws.forms import Cols, get_form

CHUNK = 125  # resamples per task: large enough to vectorise well, small enough to balance two cores


@dataclass
class BootstrapJob:
    """One fit to bootstrap: the form, its runs' columns, and the point estimate to start from."""

    form: str
    cols: Cols
    observed: np.ndarray
    theta: np.ndarray


def resample_weights(n: int, count: int, seed: Sequence[int]) -> np.ndarray:
    rng = np.random.default_rng(list(seed))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=count).astype(float)


def _run_chunk(job: BootstrapJob, cfg: FitConfig, seed: tuple[int, ...], count: int) -> np.ndarray:
    with single_threaded_blas():
        weights = resample_weights(len(job.observed), count, seed)
        theta, _ = solve_batch(get_form(job.form), job.cols, job.observed, weights, job.theta, cfg)
    return theta


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def bootstrap(jobs: list[BootstrapJob], cfg: FitConfig, progress: bool = True) -> list[np.ndarray]:
    """Bootstrap samples (cfg.bootstrap, k) of internal parameters for every job, run over processes."""
    total = cfg.bootstrap * len(jobs)
    if total == 0:
        return [np.empty((0, len(get_form(j.form).params))) for j in jobs]
    tasks = [
        (j, c, min(CHUNK, cfg.bootstrap - start))
        for j in range(len(jobs))
        for c, start in enumerate(range(0, cfg.bootstrap, CHUNK))
    ]
    results: dict[tuple[int, int], np.ndarray] = {}
    bar = _Progress(total, enabled=progress)
    workers = cfg.workers or default_workers()
    if workers == 1 or len(tasks) == 1:
        for j, c, count in tasks:
            results[(j, c)] = _run_chunk(jobs[j], cfg, (cfg.seed, j, c), count)
            bar.advance(count)
    else:
        # fork: workers inherit the imported numpy/scipy, so a pool starts in milliseconds, not seconds.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
            futures: dict[Future[np.ndarray], tuple[int, int, int]] = {
                pool.submit(_run_chunk, jobs[j], cfg, (cfg.seed, j, c), count): (j, c, count)
                for j, c, count in tasks
            }
            for fut in _as_completed(futures):
                j, c, count = futures[fut]
                results[(j, c)] = fut.result()
                bar.advance(count)
    bar.close()
    chunks = max(c for _, c, _ in tasks) + 1
    return [np.concatenate([results[(j, c)] for c in range(chunks)]) for j in range(len(jobs))]


def _as_completed(futures):
    from concurrent.futures import as_completed

    return as_completed(futures)


class _Progress:
    """A one-line progress bar on stderr (a line per 10 % when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_decile = -1

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        frac = self.done / self.total
        filled = int(30 * frac)
        line = (
            f"bootstrap [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} resamples "
            f"{rate:,.0f}/s  elapsed {elapsed:.1f} s  ETA {eta:.1f} s"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif int(frac * 10) > self.last_decile:
            self.last_decile = int(frac * 10)
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)
