"""What the GPU proof's tests share: their sizes, the device, the time budget, the data and base models, real
finetunes in their own processes, and the recorder of the figures `python -m benchmarks.gpu_check` tabulates.

Under CUDA the tests take the GPU setting (paper sizes, bf16); without it they skip, unless
`DIST_FORGET_GPU_CHECK_CPU` is set (the runner's `--cpu` mode sets it): then they run the tiny CPU setting,
so the check cannot rot where there is no GPU. The runner hands its budget, sizes, work folder and records
file to the tests as JSON in `DIST_FORGET_GPU_CHECK`; a plain `pytest -m gpu tests/gpu` runs without
it (no deadline, a temporary work folder, nothing recorded; the bounds are asserted all the same).
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG_ENV = "DIST_FORGET_GPU_CHECK"  # the runner's settings for the tests (JSON)
CPU_ENV = "DIST_FORGET_GPU_CHECK_CPU"  # set: the tests run their CPU setting where there is no CUDA


@dataclass
class Settings:
    """What the check runs; `for_mode` picks the GPU or the CPU sizes."""

    cuda: bool
    size: str  # the engines' finetunes
    seq: int
    batch: int
    steps: int
    vocab: int  # every model's vocabulary (the shards use its first data_vocab ids)
    data_vocab: int
    logits_size: str
    logits_seq: int
    resume_size: str  # the DeepSpeed fp32 run that is resumed (on CPU: the engines' own, same size)
    resume_steps: int
    optim_size: str
    optim_steps: int

    @classmethod
    def for_mode(cls, cuda: bool, size: str | None, seq: int | None, steps: int | None) -> Settings:
        """Under CUDA the MFU goal's setting (paper-41m where only correctness is asked); else tiny models."""
        if cuda:
            size, seq, steps = size or "paper-334m", seq or 2048, steps or 50
            sizes = {"logits_size": "paper-41m", "resume_size": "paper-41m", "optim_size": size}
            counts = {"batch": 8, "vocab": 32000, "data_vocab": 1024, "logits_seq": 512, "resume_steps": 6}
            return cls(cuda=True, size=size, seq=seq, steps=steps, optim_steps=20, **sizes, **counts)
        size, seq, steps = size or "cpu-0.03m", seq or 64, steps or 4
        sizes = {"logits_size": "cpu-0.3m", "resume_size": size, "optim_size": "cpu-3m"}
        counts = {"batch": 4, "vocab": 512, "data_vocab": 512, "logits_seq": 64, "resume_steps": steps}
        return cls(cuda=False, size=size, seq=seq, steps=steps, optim_steps=10, **sizes, **counts)


def device_info(cuda: bool) -> dict[str, Any]:
    """The device the figures are measured on, and the peak FLOP/s that MFU divides by."""
    import torch

    from dist_forget.engine.flops import datasheet_peak, measure_peak

    if cuda:
        name = torch.cuda.get_device_name(0)
        peak = datasheet_peak(name)
        source = "datasheet bf16 dense"
        if peak is None:  # a GPU missing from the table: its measured bf16 matmul, said so
            peak, source = measure_peak(torch.device("cuda")), "measured bf16 matmul (not in the table)"
            torch.cuda.empty_cache()  # the finetunes after it get the whole GPU
        return {
            "type": "cuda",
            "name": name,
            "count": torch.cuda.device_count(),
            "peak_flops": peak,
            "peak_source": source,
            "memory_bytes": torch.cuda.get_device_properties(0).total_memory,
        }
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "count": 1,
        "threads": torch.get_num_threads(),
        "peak_flops": measure_peak(torch.device("cpu")),
        "peak_source": "measured fp32 matmul",
    }


def versions() -> dict[str, str | None]:
    import importlib.metadata

    import torch

    out: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for dist in ("transformers", "deepspeed", "megatron-core", "webdataset"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def child_env(cuda: bool) -> dict[str, str]:
    """The environment of every process the check starts (pytest under the runner, each finetune)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "DS_ACCELERATOR": "cuda" if cuda else "cpu",
    }
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu on a GPU machine: the children must not find it either
        env["OMP_NUM_THREADS"] = "1"  # tiny models: extra threads only add contention (DEVELOPERS.md)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # each worker is a world of one on its own port
    for key in [k for k in env if k.startswith("PYTEST_XDIST") or k == "PYTEST_CURRENT_TEST"]:
        del env[key]  # a check started from a test of `make test` is not one of its xdist workers
    return env


def runner_config() -> dict[str, Any]:
    return json.loads(os.environ.get(CONFIG_ENV) or "{}")


def runs_here() -> pytest.MarkDecorator:
    """The mark of a check test: it runs under CUDA, or in the CPU setting when CPU_ENV asks for it; else
    it skips before any fixture is built (plain `make test`, where the runner's CPU mode covers it once)."""
    import torch

    return pytest.mark.skipif(
        not torch.cuda.is_available() and not os.environ.get(CPU_ENV),
        reason=f"needs CUDA (no CUDA device here); its CPU setting runs under `python -m benchmarks.gpu_check "
        f"--cpu` ({CPU_ENV}=1)",
    )


def left_s(config: dict[str, Any]) -> float:
    """Seconds left of the runner's budget (unbounded without the runner)."""
    return config["deadline"] - time.time() if "deadline" in config else math.inf


def last_error(out: str) -> str:
    """The most telling line of a failed subprocess's output: its last error-looking line, else its last."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error:" in ln or ln.startswith(("E ", "FAILED", "[killed")):
            return ln[:400]
    return lines[-1][:400] if lines else "(no output)"


class GpuCheck:
    """One pytest session's shared state: settings, device, budget, the work folder (data, base models, runs)
    and the finetunes that later tests reuse (the DeepSpeed fp32 run doubles as the resume's on CPU)."""

    def __init__(self, work: Path, config: dict[str, Any]):
        import torch

        self.config = config
        self.cuda = torch.cuda.is_available()
        self.no_cuda = config.get("no_cuda", "no CUDA device here")
        self.settings = Settings.for_mode(
            self.cuda, config.get("size"), config.get("seq"), config.get("steps")
        )
        self.device = device_info(self.cuda)  # measured here, where the tests run, with their threads
        self.work = work
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = Path(config["log"]) if "log" in config else work / "subprocesses.log"
        self.runs: dict[str, dict[str, Any]] = {}  # engine -> its finetune's result, when it succeeded
        self.attention: dict[str, str] = {}  # ladder size -> the HF model's attention implementation
        self._data: Any = None

    @property
    def needs_cuda(self) -> str:
        return f"needs CUDA ({self.no_cuda})"

    def left(self) -> float:
        return left_s(self.config)

    def need(self, seconds: float) -> None:
        """Skip the test, saying so, when less than `seconds` of the budget is left."""
        if self.left() < seconds:
            pytest.skip(
                f"out of time: {self.left():.0f} s left of the {self.config['budget_s']:.0f} s budget"
            )

    def run(self, name: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        """Run a subprocess in the repo with the check's environment; (exit code, output). Its output goes
        to work/logs/<name>.log and its tail into the check's log."""
        # ends 10 s before the deadline, so that its test still records why (pytest is stopped at it)
        timeout = max(1.0, min(timeout, self.left() - 10))
        t0 = time.perf_counter()
        # its own process group, so that a timeout also ends what it started
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=child_env(self.cuda),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            rc, out = 124, out + f"\n[killed after {timeout:.0f} s: out of time]"
        except BaseException:  # the test itself stopped (pytest-timeout, Ctrl-C): no orphan keeps the GPU
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text(out)
        with self.log.open("a") as log:
            log.write(f"===== {name}: exit {rc} after {time.perf_counter() - t0:.1f} s\n{out[-20000:]}\n")
        return rc, out

    def worker(self, name: str, kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run tests/gpu/workers.py's `kind` on `spec`; its result, or a one-line RuntimeError."""
        spec_file = self.work / f"{name}.spec.json"
        result_file = self.work / f"{name}.result.json"
        result_file.unlink(missing_ok=True)
        spec_file.write_text(json.dumps({**spec, "result": str(result_file)}))
        rc, out = self.run(name, [sys.executable, "-m", "tests.gpu.workers", kind, str(spec_file)], timeout)
        if rc != 0 or not result_file.is_file():
            raise RuntimeError(f"{name} exited {rc}: {last_error(out)}")
        return json.loads(result_file.read_text())

    def data(self) -> Any:
        if self._data is None:  # tests/data's samples, our BPE and shards: offline, a few seconds
            from tests.conftest import build_tiny_data

            s = self.settings
            self._data = build_tiny_data(self.work / f"data-{s.seq}", seq_len=s.seq, vocab_size=s.data_vocab)
        return self._data

    def base(self, size: str) -> Path:
        """An HF folder of ladder size `size` (seeded random init) to finetune from."""
        folder = self.work / f"base-{size}"
        if not (folder / "config.json").is_file():
            from transformers.utils import logging as hf_logging

            from dist_forget.models import hf

            hf_logging.disable_progress_bar()
            model = hf.build(size, self.settings.vocab, self.settings.seq, seed=0)
            self.attention[size] = str(model.config._attn_implementation)
            model.save_pretrained(folder)
        return folder

    def finetune(
        self,
        name: str,
        engine: str,
        size: str,
        precision: str,
        steps: int,
        every: int,
        timeout: float,
        resume: str = "none",
        extra: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A real `trainer.train` in its own process (a crash stays in its test, peak memory is its own)."""
        d, s = self.data(), self.settings
        out = self.work / "runs" / name
        overrides = [
            f"out_dir={out}",
            f"engine={engine}",
            f"model.init_from={self.base(size)}",
            f"data.target={d.code}",
            f"data.pretrain={d.english}",
            "data.inject_fraction=0.01",
            "data.target_tokens=null",
            "tracking.enabled=false",
            f"train.batch_size={s.batch}",
            f"train.micro_batch={s.batch}",
            "train.eval_sequences=8",
            "train.eval_every=0",
            f"train.precision={precision}",
            f"train.peak_flops={self.device['peak_flops']}",
            f"schedule.steps={steps}",
            f"schedule.warmup={min(5, steps - 1)}",
            "schedule.kind=constant",
            "optim.lr=3e-4",
            "optim.anchor_decay=0.1",
            f"checkpoint.every={every}",
            "checkpoint.keep=8",
            *extra,
        ]
        spec = {"overrides": overrides, "resume": resume, "deterministic": precision == "fp32" and self.cuda}
        result = self.worker(name, "finetune", spec, timeout)
        result.update(size=size, precision=precision, out=str(out))
        return result


class Recorder:
    """What one test reports for the check's table: its part's summary, rows, figures (merged into the
    part's), bounded checks and skipped items, each one JSON line in the runner's records file (nothing is
    written without the runner). `assert_checks` fails the test on any missed bound, after all are recorded."""

    def __init__(self, path: Path | None, test: str):
        self.path, self.test = path, test
        self.missed: list[str] = []

    def _write(self, kind: str, **fields: Any) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps({"test": self.test, "kind": kind, **fields}) + "\n")

    def summary(self, text: str) -> None:
        self._write("summary", text=text)

    def row(self, label: str, text: str) -> None:
        self._write("row", label=label, text=text)

    def figures(self, **values: Any) -> None:
        self._write("figures", values=values)

    def skip(self, what: str, reason: str) -> None:
        """An item of this part that cannot run here (the test itself runs the rest)."""
        self._write("skip", what=what, reason=reason)

    def check(self, name: str, value: float | None, bound: float, ok: bool) -> bool:
        self._write("check", name=name, value=value, bound=bound, ok=bool(ok))
        if not ok:
            self.missed.append(f"{name}: {value!r} misses the bound {bound!r}")
        return bool(ok)

    def assert_checks(self) -> None:
        assert not self.missed, "; ".join(self.missed)
