"""Shared fixtures. `tiny_data`: a real tokenizer and real shards built from the text in tests/data/.

`make test` runs the suite on 2 pytest-xdist workers, one test file at a time each (Makefile). Every test is
safe beside any other: ports are free ports, files are under tmp_path, the session's servers and SLURM
cluster are each worker's own. Serially (`pytest tests`) nothing here changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = DATA.parents[1]
# Files that alone take about as long as the rest of the suite: under xdist they start first, on the first
# worker, while the other worker runs everything else (a long file started last would run alone at the end).
# test_readme_runs.py: its module fixture runs the README's whole pipeline (~7 of its ~10 minutes).
LONGEST_FIRST = ("tests/integration/test_readme_runs.py",)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist `--dist loadfile --no-loadscope-reorder` hands out files in collection order: put the
    longest first. Each worker collects and sorts alike (xdist checks the collections are equal)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        first = [Path(config.rootpath, f) for f in LONGEST_FIRST]
        items.sort(key=lambda item: item.path not in first)  # stable: the order within a file is kept


@pytest.fixture(scope="session", autouse=True)
def share_the_cores_between_workers():
    """Under xdist each worker's in-process torch gets its share of the cores (1 each for 2 workers on 2
    cores): torch's default of one thread per core in every worker would put twice as many busy OpenMP
    threads as cores, and spinning OpenMP threads that wait for a descheduled one make micro models several
    times slower (see `one_thread`). Subprocesses are unchanged: tests and launchers set their own threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))
    yield


@dataclass(frozen=True)
class TinyData:
    tokenizer_dir: Path  # holds tokenizer.json (HF fast tokenizer)
    english: Path  # shard dir (manifest.json) of the English sample: the "pretraining" domain
    code: Path  # shard dir of the Python-code sample: the "target" domain
    seq_len: int
    vocab_size: int


def build_tiny_data(root: Path, seq_len: int = 64, vocab_size: int = 512) -> TinyData:
    """Tokenizer (BPE, 512) + shards of both samples; small members and shards so that every code path
    (several members per shard, several shards per split, a short last member) is exercised."""
    from dist_forget.data.documents import read_documents
    from dist_forget.data.shards import ShardConfig, write_shards
    from dist_forget.data.tokenizer import TokenizerConfig, train_tokenizer

    english, code = DATA / "english.jsonl", DATA / "code.jsonl"
    texts = list(read_documents(english)) + list(read_documents(code))
    tok_file = train_tokenizer(
        texts, root / "tokenizer", TokenizerConfig(vocab_size=vocab_size, max_chars=None)
    )
    cfg = ShardConfig(seq_len=seq_len, val_fraction=0.1, rows_per_member=16, sequences_per_shard=256)
    shards = {}
    for name, corpus in (("english", english), ("code", code)):
        manifest = write_shards(
            read_documents(corpus),
            tok_file.parent,
            root / "shards" / name,
            name,
            cfg,
            source={"domain": name, "file": corpus.name},
        )
        shards[name] = manifest
    return TinyData(
        tokenizer_dir=tok_file.parent,
        english=root / "shards" / "english",
        code=root / "shards" / "code",
        seq_len=seq_len,
        vocab_size=shards["english"].vocab_size,
    )


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return build_tiny_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="module")
def one_thread():
    """Micro models on a 2-core box: extra threads only add contention (5x slower measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def base_model(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny HF folder to finetune from (random init: the loop, not the science, is under test)."""
    from dist_forget.models import hf

    folder = tmp_path_factory.mktemp("base") / "model"
    hf.build("cpu-0.03m", tiny_data.vocab_size, tiny_data.seq_len, seed=0).save_pretrained(folder)
    return folder


def tiny_finetune_overrides(tiny_data: TinyData, base_model: Path, out: Path, *extra: str) -> list[str]:
    """The smallest real finetune: 4 steps of 4 sequences (2 per micro-batch), evaluation and a
    checkpoint every 2 steps, no MLflow. The peak FLOP/s is fixed so no run times a matmul at start."""
    return [
        f"out_dir={out}",
        f"model.init_from={base_model}",
        f"data.target={tiny_data.code}",
        f"data.pretrain={tiny_data.english}",
        "data.target_tokens=null",
        "tracking.enabled=false",
        "train.batch_size=4",
        "train.micro_batch=2",
        "train.eval_sequences=8",
        "train.eval_every=2",
        "schedule.steps=4",
        "schedule.warmup=1",
        "checkpoint.every=2",
        "train.peak_flops=1e11",
        *extra,
    ]


def signal_after_step(
    argv: list[str],
    out: Path,
    step: int,
    sig: int = signal.SIGKILL,
    timeout_s: float = 240,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Run `dist-forget <argv>` (or `command`, e.g. a launcher) in a fresh process group and send `sig` to the
    whole group as soon as out/metrics.jsonl logs train step `step`; returns the process once it has ended
    (stdout and stderr in `log`). The group is stopped (SIGSTOP) while the signal is sent and then continued,
    so that the signal lands in the step after `step` however loaded the machine is. Fails the test if the
    run ended first."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    sink = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        command or [sys.executable, "-m", "dist_forget.cli", *argv],
        cwd=REPO,
        env=full_env,
        stdout=sink,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def logged() -> bool:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return False
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # the line being written
                continue
            if record["kind"] == "train" and record["step"] == step:
                return True
        return False

    deadline, sent = time.monotonic() + timeout_s, False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if logged():
                os.killpg(proc.pid, signal.SIGSTOP)
                os.killpg(proc.pid, sig)
                os.killpg(proc.pid, signal.SIGCONT)
                sent = True
                break
            time.sleep(0.01)
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # out of time
            proc.wait()
        if log:
            sink.close()  # type: ignore[union-attr]
    assert sent, f"the run ended before step {step} (or took over {timeout_s} s)"
    return proc


def group_gone(pgid: int, deadline_s: float) -> bool:
    """Whether every process of group `pgid` has exited (zombies waiting for a reaper count as exited)
    within `deadline_s`: a deadline for "did not exit", not a measure of speed."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive.append(stat.parent.name)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def sigkill_after_step(argv: list[str], out: Path, step: int, timeout_s: float = 240) -> None:
    """SIGKILL `dist-forget <argv>` as soon as it logs train step `step`: a crash one step past a checkpoint."""
    proc = signal_after_step(argv, out, step, signal.SIGKILL, timeout_s)
    assert proc.returncode == -signal.SIGKILL


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small filesystem at `path` (mount options e.g. "size=4m"), unmounted after; skips the test where
    it cannot be mounted (it needs root; CI runs as root)."""
    path.mkdir(parents=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
    )
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
