"""One command that proves the GPU path (`make gpu-check`), and its CPU skip mode.

    python -m benchmarks.gpu_check [--out DIR] [--budget-s 480] [--only engines,resume] [--cpu]

On a machine with CUDA it runs, within `--budget-s` seconds on one GPU:

- `optimizer`: AnchoredAdamW step time vs `torch.optim.AdamW(fused=True)` on the same CUDA parameters
  (goal <= 1.15x) and which path each step takes (fused / foreach multi-tensor kernels / per-tensor);
- `logits`: megatron-core's stock GPTModel, our tensor-parallel Llama and HF's Llama on the same weights:
  max |delta logits| in fp32 (TF32 off) and under bf16 autocast;
- `engines`: a bf16 finetune (`--size`, default paper-334m at seq 2048: the MFU goal's setting) of ~50 steps
  on `engine=single`, `engine=deepspeed parallel.zero_stage=2` (world 1) and `engine=megatron
  parallel.impl=stock`: tokens/s, MFU against the device's datasheet bf16 dense peak
  (`dist_forget.engine.flops.BF16_DENSE_PEAK`), peak memory, loss after N steps, the engines' agreement;
- `resume`: a DeepSpeed fp32 run, and the same run resumed from its mid checkpoint: bit-exact losses and
  final weights (deterministic kernels, math attention);
- `tests_gpu`: `pytest tests/gpu` with its own summary line.

Without CUDA (or with `--cpu`) the same command runs what a CPU can: the optimizer part on CPU
parameters, the logits of our TP Llama vs HF (fp32 and bf16), the three engines in fp32 on a tiny model
(megatron with parallel.impl=local) and the DeepSpeed resume; it prints one line per skipped part with the
reason and exits 0 unless a part that ran failed. The data are made here, offline, from the samples in
tests/data with the project's own tokenizer and shard code (nothing from a hub). Every finetune is a real
`dist_forget.engine.trainer.train` in its own process (`--worker`): a crash stays in its row, and peak
memory is that run's alone.

Writes `gpu_check.json` (SI units, fractions), `gpu_check.txt` (the table) and `gpu_check.log` (every
subprocess's output tail) to `--out`, else `$OUT` when set, else `work/gpu_check`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1
PARTS = ("optimizer", "logits", "engines", "resume", "tests_gpu")
ENGINES = ("single", "deepspeed", "megatron")
FP32_LOGITS_ATOL = 1e-4  # as tests/gpu: fp32 with TF32 off differs only in summation order
BF16_LOGITS_RTOL = 0.05  # bf16 autocast: max |delta| over max |logit|; bf16 keeps 8 bits of mantissa
FP32_LOSS_ATOL = 1e-4  # engines on the same fp32 run, per step (seen ~1e-6 on CPU)
BF16_LOSS_ATOL = 0.05  # engines in bf16: mean loss of the last 5 steps, nats/token (tests/gpu's bf16 bound)
MFU_GOAL, OPTIM_GOAL = 0.40, 1.15
GPU_PACKAGES = ("deepspeed", "megatron.core", "webdataset")  # beyond torch and transformers


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
        if cuda:  # the MFU goal's setting; paper-41m where only correctness is asked
            size = size or "paper-334m"
            return cls(cuda=True, size=size, seq=seq or 2048, batch=8, steps=steps or 50, vocab=32000,
                       data_vocab=1024, logits_size="paper-41m", logits_seq=512, resume_size="paper-41m",
                       resume_steps=6, optim_size=size, optim_steps=20)
        size = size or "cpu-0.03m"
        return cls(cuda=False, size=size, seq=seq or 64, batch=4, steps=steps or 4, vocab=512, data_vocab=512,
                   logits_size="cpu-0.3m", logits_seq=64, resume_size=size, resume_steps=steps or 4,
                   optim_size="cpu-3m", optim_steps=10)


@dataclass
class Part:
    """One row group of the table: status ok | fail | error | skipped, a summary, sub-rows (label, text),
    its figures, and the sub-items that were skipped (each printed as its own line with the reason)."""

    name: str
    status: str = "ok"
    summary: str = ""
    reason: str = ""
    wall_s: float = 0.0
    rows: list[tuple[str, str]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def check(self, name: str, value: float | None, bound: float, ok: bool) -> bool:
        self.checks.append({"name": name, "value": value, "bound": bound, "ok": ok})
        if not ok and self.status == "ok":
            self.status = "fail"
        return ok

    def skip(self, what: str, reason: str) -> None:
        self.skipped.append({"what": what, "reason": reason})


class Check:
    """The parent process: budget, work folder, subprocess runner, and the parts in order."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.t0 = time.perf_counter()
        self.budget = args.budget_s
        self.cuda = torch.cuda.is_available() and not args.cpu
        self.no_cuda = "--cpu given" if args.cpu and torch.cuda.is_available() else "no CUDA device here"
        self.s = Settings.for_mode(self.cuda, args.size, args.seq, args.steps)
        self.only = set(args.only.split(",")) if args.only else set(PARTS)
        self.work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.keep_work = bool(args.work)
        self.logs: list[str] = []
        self.missing = [m for m in GPU_PACKAGES if importlib.util.find_spec(m.split(".")[0]) is None
                        or importlib.util.find_spec(m) is None]
        self.device = self._device()
        self.runs: dict[str, dict[str, Any]] = {}  # engine -> its finetune's result (resume reuses an fp32 one)
        self._data: Any = None
        self.attention: dict[str, str] = {}  # ladder size -> the HF model's attention implementation

    # -- helpers ---------------------------------------------------------------------------------------

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def _device(self) -> dict[str, Any]:
        import torch

        from dist_forget.engine.flops import datasheet_peak, measure_peak

        if self.cuda:
            name = torch.cuda.get_device_name(0)
            peak = datasheet_peak(name)
            source = "datasheet bf16 dense"
            if peak is None:  # a GPU missing from the table: its measured bf16 matmul, said so
                peak, source = measure_peak(torch.device("cuda")), "measured bf16 matmul (not in the table)"
            return {"type": "cuda", "name": name, "count": torch.cuda.device_count(), "peak_flops": peak,
                    "peak_source": source, "memory_bytes": torch.cuda.get_device_properties(0).total_memory}
        return {"type": "cpu", "name": platform.processor() or platform.machine(), "count": 1,
                "threads": torch.get_num_threads(), "peak_flops": measure_peak(torch.device("cpu")),
                "peak_source": "measured fp32 matmul"}

    def env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cuda" if self.cuda else "cpu"}
        if not self.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""  # --cpu on a GPU machine: the children must not find it either
            env["OMP_NUM_THREADS"] = "1"  # tiny models: extra threads only add contention (DEVELOPERS.md)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # each worker is a world of one on its own port
        return env

    def run(self, name: str, cmd: list[str], timeout: float) -> tuple[int, str]:
        """Run a subprocess in the repo with the check's environment; (exit code, output). Its output goes
        to work/logs/<name>.log and its tail into gpu_check.log."""
        timeout = max(1.0, min(timeout, self.left() - 5))
        t0 = time.perf_counter()
        # its own process group, so that a timeout also ends what it started (torchrun ranks under pytest)
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            rc, out = 124, out + f"\n[killed after {timeout:.0f} s: out of time]"
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (logs / f"{name}.log").write_text(out)
        self.logs.append(f"===== {name}: exit {rc} after {time.perf_counter() - t0:.1f} s\n{out[-20000:]}")
        return rc, out

    def worker(self, name: str, kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run `--worker kind` on `spec`; its result dict, or a one-line RuntimeError with the output's end."""
        spec_file = self.work / f"{name}.spec.json"
        result_file = self.work / f"{name}.result.json"
        spec_file.write_text(json.dumps({**spec, "result": str(result_file)}))
        rc, out = self.run(name, [sys.executable, "-m", "benchmarks.gpu_check", "--worker", kind,
                                  "--spec", str(spec_file)], timeout)
        if rc != 0 or not result_file.is_file():
            raise RuntimeError(f"{name} exited {rc}: {_last_error(out)}")
        return json.loads(result_file.read_text())

    def guard(self, name: str, need_s: float, needs: tuple[str, ...], fn: Callable[[Part], None]) -> Part:
        part = Part(name)
        t0 = time.perf_counter()
        missing = [m for m in needs if m in self.missing]
        if name not in self.only:
            part.status, part.reason = "skipped", "not in --only"
        elif missing:
            part.status = "error"
            part.reason = (f"missing Python packages {', '.join(missing)}: install them (on a lent machine, carry "
                           "the wheels tools/gpu_wheels.sh downloads)")
        elif self.left() < need_s:
            part.status, part.reason = "skipped", f"out of time: {self.left():.0f} s left of the {self.budget:.0f} s budget"
        else:
            try:
                fn(part)
            except Exception as exc:  # a broken part is a row of the table, not the end of the check
                part.status, part.reason = "error", f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        part.wall_s = time.perf_counter() - t0
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {part.status} {part.summary or part.reason}",
              flush=True)
        return part

    # -- data and models ---------------------------------------------------------------------------------

    def data(self) -> Any:
        if self._data is None:  # tests/data's samples, our BPE and shards: offline, a few seconds
            from tests.conftest import build_tiny_data

            self._data = build_tiny_data(self.work / f"data-{self.s.seq}", seq_len=self.s.seq,
                                         vocab_size=self.s.data_vocab)
        return self._data

    def base(self, size: str) -> Path:
        """An HF folder of ladder size `size` (seeded random init) to finetune from."""
        folder = self.work / f"base-{size}"
        if not (folder / "config.json").is_file():
            from transformers.utils import logging as hf_logging

            from dist_forget.models import hf

            hf_logging.disable_progress_bar()
            model = hf.build(size, self.s.vocab, self.s.seq, seed=0)
            self.attention[size] = str(model.config._attn_implementation)
            model.save_pretrained(folder)
        return folder

    def finetune(self, name: str, engine: str, size: str, precision: str, steps: int, every: int,
                 timeout: float, resume: str = "none", extra: tuple[str, ...] = ()) -> dict[str, Any]:
        d = self.data()
        out = self.work / "runs" / name
        overrides = [
            f"out_dir={out}", f"engine={engine}", f"model.init_from={self.base(size)}", f"data.target={d.code}",
            f"data.pretrain={d.english}", "data.inject_fraction=0.01", "data.target_tokens=null",
            "tracking.enabled=false", f"train.batch_size={self.s.batch}", f"train.micro_batch={self.s.batch}",
            "train.eval_sequences=8", "train.eval_every=0", f"train.precision={precision}",
            f"train.peak_flops={self.device['peak_flops']}", f"schedule.steps={steps}",
            f"schedule.warmup={min(5, steps - 1)}", "schedule.kind=constant", "optim.lr=3e-4",
            "optim.anchor_decay=0.1", f"checkpoint.every={every}", "checkpoint.keep=8", *extra]
        spec = {"overrides": overrides, "resume": resume, "deterministic": precision == "fp32" and self.cuda}
        result = self.worker(name, "finetune", spec, timeout)
        result.update(size=size, precision=precision, out=str(out))
        return result

    # -- the parts ---------------------------------------------------------------------------------------

    def optimizer(self, part: Part) -> None:
        import torch

        from benchmarks.bench_optim import bench_step

        s = self.s
        r = bench_step(s.optim_size, s.vocab, s.optim_steps, device="cuda" if self.cuda else "cpu", baseline="fused")
        if self.cuda:
            torch.cuda.empty_cache()
        part.figures = r
        a, b = r["anchored_path"], r["adamw_path"]
        r["goal"] = OPTIM_GOAL
        r["goal_met"] = r["ratio"] <= OPTIM_GOAL if self.cuda else None  # the goal is about CUDA kernels
        goal = ("met" if r["goal_met"] else "NOT met") if self.cuda else "set for CUDA"
        part.summary = (f"{s.optim_size}, {r['params'] / 1e6:.1f}M params on {r['device']}: AnchoredAdamW "
                        f"{r['ratio']:.2f}x AdamW(fused) per step (goal <= {OPTIM_GOAL}: {goal})")

        def path(p: dict[str, Any]) -> str:
            kernels = (f", {p['cuda_kernels']} CUDA kernels of which {p['multi_tensor_kernels']} multi-tensor"
                       if "cuda_kernels" in p else "")
            return f"{p['path']} path ({p['foreach_ops']} foreach ops{kernels})"

        part.rows = [("AnchoredAdamW", f"{r['anchored_step_s'] * 1e3:.2f} ms/step, {path(a)}"),
                     ("AdamW(fused)", f"{r['adamw_step_s'] * 1e3:.2f} ms/step, {path(b)}")]

    def logits(self, part: Part) -> None:
        s = self.s
        r = self.worker("logits", "logits", {"size": s.logits_size, "vocab": s.vocab, "seq": s.logits_seq,
                                             "stock": self.cuda}, timeout=180)
        part.figures = r
        for precision in ("fp32", "bf16"):
            got = r[precision]
            bound = FP32_LOGITS_ATOL if precision == "fp32" else BF16_LOGITS_RTOL * got["max_abs_logit"]
            pairs = [k for k in ("local_vs_hf", "stock_vs_hf", "stock_vs_local") if k in got]
            for pair in pairs:
                part.check(f"{precision} {pair}", got[pair], bound, got[pair] <= bound)
            part.rows.append((precision, ", ".join(f"{k.replace('_vs_', ' vs ')} {got[k]:.1e}" for k in pairs)
                              + f" (bound {bound:.1e})"))
        models = "stock GPTModel, our TP Llama, HF" if self.cuda else "our TP Llama, HF"
        part.summary = f"{s.logits_size}, seq {s.logits_seq}: max |delta logits| of {models} on the same weights"
        if not self.cuda:
            part.skip("stock GPTModel", f"needs CUDA ({self.no_cuda}): its attention allocates on the GPU")

    def engines(self, part: Part) -> None:
        from dist_forget.engine.flops import flops_per_token
        from dist_forget.models.ladder import shape_of

        s = self.s
        precision = "bf16" if self.cuda else "fp32"
        shape = shape_of(s.size)
        fpt = flops_per_token(shape.non_embedding_params(), s.vocab, shape.hidden, shape.layers, s.seq)
        every = 0 if self.cuda else max(1, s.steps // 2)  # on CPU the DeepSpeed run doubles as resume's
        runs: dict[str, dict[str, Any]] = {}
        for engine in ENGINES:
            extra = ("parallel.zero_stage=2",) if engine == "deepspeed" else (
                (f"parallel.impl={'stock' if self.cuda else 'local'}",) if engine == "megatron" else ())
            if self.left() < 30:
                part.skip(engine, f"out of time: {self.left():.0f} s left")
                continue
            try:
                run = self.finetune(f"{engine}-{precision}", engine, s.size, precision, s.steps, every,
                                    timeout=240, extra=extra)
            except Exception as exc:  # one engine's failure is its row; the others still run
                part.status = "error" if part.status == "ok" else part.status
                runs[engine] = {"status": "error", "reason": str(exc)[:400]}
                part.rows.append((engine, f"error: {str(exc)[:300]}"))
                continue
            run.update(status="ok", engine=engine, settings=list(extra), flops_per_token=fpt,
                       mfu=fpt * run["tokens_per_s"] / self.device["peak_flops"])
            if not every:  # a paper-size checkpoint is GBs and nothing reads it: free the disk
                shutil.rmtree(Path(run["out"]) / "checkpoints", ignore_errors=True)
            self.runs[engine] = run
            runs[engine] = {k: v for k, v in run.items() if k != "out"}  # the work folder is gone afterwards
            part.rows.append((engine, f"{' '.join(extra) + ': ' if extra else ''}{run['tokens_per_s']:,.0f} tok/s, "
                              f"MFU {run['mfu']:.1%}, peak memory {run['peak_memory_bytes'] / 1e9:.2f} GB "
                              f"({run['peak_memory_kind']}), loss at step {run['steps']} {run['losses'][-1]:.4f}"))
        part.figures = {"size": s.size, "seq": s.seq, "batch": s.batch, "steps": s.steps, "vocab": s.vocab,
                        "precision": precision, "attention": self._attention(), "runs": runs}
        ok = [r for r in runs.values() if r.get("status") == "ok"]
        if len(ok) >= 2 and "single" in self.runs:
            ref = self.runs["single"]["losses"]
            step_diff = max(max(abs(a - b) for a, b in zip(r["losses"], ref)) for r in ok)
            part.figures["max_step_loss_diff"] = step_diff
            if precision == "fp32":
                diff = step_diff
                part.check("fp32 per-step loss vs single", diff, FP32_LOSS_ATOL, diff <= FP32_LOSS_ATOL)
            else:
                diff = max(abs(_tail_mean(r["losses"]) - _tail_mean(ref)) for r in ok)
                part.check("bf16 mean loss of the last 5 steps vs single", diff, BF16_LOSS_ATOL, diff <= BF16_LOSS_ATOL)
            part.rows.append(("agree", f"{part.checks[-1]['name']}: {diff:.2e} (bound {part.checks[-1]['bound']:.0e})"))
        goal = part.figures["mfu_goal"] = self._mfu_goal(runs)
        if goal["applies"]:
            part.rows.append(("MFU goal", ", ".join(f"{e} {'met' if m else 'NOT met'}" for e, m in goal["met"].items())
                              + f" (>= {MFU_GOAL:.0%}: {goal['setting']})"))
        part.summary = (f"{s.size} {precision}, seq {s.seq} x batch {s.batch}, {s.steps} steps, vocab {s.vocab}, "
                        f"MFU vs {self.device['peak_source']} peak")
        if not self.cuda:
            why = f"needs CUDA ({self.no_cuda})"
            part.skip("bf16 paper-size finetunes, MFU vs datasheet peak, GPU memory", why)
            part.skip("megatron parallel.impl=stock (ran parallel.impl=local)", why)

    def _attention(self) -> dict[str, str]:
        impl = self.attention.get(self.s.size, "transformers' default")
        return {"single": impl, "deepspeed": impl,
                "megatron": "megatron-core local spec: unfused DotProductAttention" if self.cuda else "ours: SDPA"}

    def _mfu_goal(self, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        applies = (self.cuda and self.s.size == "paper-334m" and self.s.seq >= 2048
                   and self.device["peak_source"].startswith("datasheet")
                   and any(k in self.device["name"] for k in ("H100", "H200")))
        values = {e: r["mfu"] for e, r in runs.items() if r.get("status") == "ok"}
        return {"goal": MFU_GOAL, "applies": applies, "values": values,
                "met": {e: v >= MFU_GOAL for e, v in values.items()} if applies else None,
                "setting": "paper-334m, bf16, SDPA attention, seq >= 2048, H100/H200 datasheet peak"}

    def resume(self, part: Part) -> None:
        s = self.s
        full = self.runs.get("deepspeed")
        half = max(1, s.resume_steps // 2)
        if full is None or full["precision"] != "fp32":
            full = self.finetune("deepspeed-fp32-full", "deepspeed", s.resume_size, "fp32", s.resume_steps, half,
                                 timeout=180, extra=("parallel.zero_stage=2",))
        else:
            half = max(1, full["steps"] // 2)
        ckpt = Path(full["out"]) / "checkpoints" / f"step-{half:08d}"
        resumed = self.finetune("deepspeed-fp32-resumed", "deepspeed", full["size"], "fp32", full["steps"], half,
                                timeout=180, resume=str(ckpt), extra=("parallel.zero_stage=2",))
        a, b = full["losses"][half:], resumed["losses"]
        loss_diff = max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) and a else math.inf
        weights = _weights_diff(Path(full["out"]) / "model", Path(resumed["out"]) / "model")
        part.figures = {"size": full["size"], "resumed_from_step": half, "steps": full["steps"],
                        "losses_full": a, "losses_resumed": b, "max_abs_loss_diff": loss_diff, **weights}
        part.check("losses after the resume step, bit-exact", loss_diff, 0.0, loss_diff == 0.0)
        part.check("final weights, bit-exact", weights["max_abs_weight_diff"], 0.0, weights["max_abs_weight_diff"] == 0.0)
        exact = part.status == "ok"
        part.summary = (f"DeepSpeed ZeRO-2 fp32 {full['size']}, resumed at step {half} of {full['steps']}: "
                        f"{'bit-exact' if exact else 'NOT bit-exact'} (max |delta loss| {loss_diff:.1e}, "
                        f"{weights['tensors_differing']} of {weights['tensors']} weight tensors differ, "
                        f"max {weights['max_abs_weight_diff']:.1e})")

    def tests_gpu(self, part: Part) -> None:
        if not self.cuda:
            part.status, part.reason = "skipped", f"needs CUDA ({self.no_cuda}): NCCL and the stock GPTModel"
            return
        timeout = max(30.0, self.left() - 10)
        rc, out = self.run("tests_gpu", [sys.executable, "-m", "pytest", "tests/gpu", "-q", "-ra", "-p",
                                         "no:cacheprovider", "--timeout", str(int(timeout))], timeout)
        line = _pytest_summary(out)
        part.figures = {"exit_code": rc, "summary_line": line}
        part.summary = f"pytest tests/gpu: {line}"
        if rc != 0:
            part.status = "fail"
            part.reason = _last_error(out)

    # -- the whole check -------------------------------------------------------------------------------

    def __call__(self) -> dict[str, Any]:
        parts = [
            self.guard("optimizer", 10, (), self.optimizer),
            self.guard("logits", 30, ("megatron.core",), self.logits),
            self.guard("engines", 60, GPU_PACKAGES, self.engines),
            self.guard("resume", 40, ("deepspeed", "webdataset"), self.resume),
            self.guard("tests_gpu", 30, ("megatron.core",), self.tests_gpu),
        ]
        failed = [p.name for p in parts if p.status in ("fail", "error")]
        return {
            "schema": SCHEMA,
            "command": " ".join(["python -m benchmarks.gpu_check", *sys.argv[1:]]),
            "mode": "cuda" if self.cuda else "cpu",
            "ok": not failed,
            "failed": failed,
            "budget_s": self.budget,
            "wall_s": time.perf_counter() - self.t0,
            "device": self.device,
            "versions": _versions(),
            "settings": asdict(self.s),
            "parts": {p.name: asdict(p) for p in parts},
        }

    def close(self) -> None:
        if not self.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------------------------- workers


def finetune_worker(spec: dict[str, Any]) -> None:
    """One real finetune (trainer.train) in this process; writes losses, tokens/s and peak memory."""
    import resource

    import torch

    from dist_forget.config import load_config
    from dist_forget.engine.config import RunConfig
    from dist_forget.engine.trainer import train
    from dist_forget.schema import read_metrics

    cuda = torch.cuda.is_available()
    attention: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if spec["deterministic"]:  # the fp32 resume check on a GPU: no TF32, no atomics, math attention
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.use_deterministic_algorithms(True, warn_only=True)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention = sdpa_kernel(SDPBackend.MATH)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = load_config(RunConfig, None, spec["overrides"])
    t0 = time.perf_counter()
    with attention:
        train(cfg, "finetune", resume=spec["resume"])
    wall = time.perf_counter() - t0
    out = Path(cfg.out_dir)
    train_records = read_metrics(out / "metrics.jsonl", "train")
    report = json.loads((out / "report.json").read_text())
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {"engine": cfg.engine, "device": "cuda" if cuda else "cpu", "wall_s": wall,
              "steps": train_records[-1]["step"] if train_records else 0,
              "losses": [r["loss"] for r in train_records], "tokens_per_s": report["tokens_per_s"],
              "peak_memory_bytes": peak, "peak_memory_kind": "cuda max_memory_allocated" if cuda else "host max RSS",
              "final_eval": read_metrics(out / "metrics.jsonl", "eval")[-1]}
    Path(spec["result"]).write_text(json.dumps(result))


def logits_worker(spec: dict[str, Any]) -> None:
    """Stock GPTModel (CUDA only), our TP Llama and HF's Llama on the same weights: max |delta logits|."""
    import torch

    from dist_forget.engine.backend import BackendConfig, ParallelConfig
    from dist_forget.engine.megatron_backend import MegatronBackend
    from dist_forget.models import hf
    from dist_forget.models import megatron as M

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backend = MegatronBackend(BackendConfig(ParallelConfig(tp=1), "fp32", 1.0, 0))
    backend.init_distributed()  # a world of one: megatron-core's groups over gloo (CPU) or NCCL (GPU)
    device = backend.device
    ref = hf.build(spec["size"], spec["vocab"], spec["seq"], seed=0).to(device).eval()
    full = ref.state_dict()
    models: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"hf": lambda ids: ref(input_ids=ids).logits}
    local = M.MegatronLlama(ref.config, device=str(device)).eval()
    local.load_full(full)
    models["local"] = local.full_logits
    if spec["stock"]:
        stock = M.StockLlama(ref.config, dtype=torch.float32, device=str(device)).eval()
        stock.load_full(full)
        models["stock"] = stock
    ids = torch.randint(0, spec["vocab"], (2, spec["seq"]), generator=torch.Generator().manual_seed(0)).to(device)
    result: dict[str, Any] = {"size": spec["size"], "seq": spec["seq"], "vocab": spec["vocab"], "batch": 2}
    for precision in ("fp32", "bf16"):
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
               else contextlib.nullcontext())
        with torch.no_grad(), ctx:
            got = {name: fn(ids).float() for name, fn in models.items()}
        r = {"max_abs_logit": float(got["hf"].abs().max())}
        for a, b in (("local", "hf"), ("stock", "hf"), ("stock", "local")):
            if a in got:
                r[f"{a}_vs_{b}"] = float((got[a] - got[b]).abs().max())
        result[precision] = r
    backend.close()
    Path(spec["result"]).write_text(json.dumps(result))


WORKERS: dict[str, Callable[[dict[str, Any]], None]] = {"finetune": finetune_worker, "logits": logits_worker}


# ---------------------------------------------------------------------------------------------- helpers


def _last_error(out: str) -> str:
    """The most telling line of a failed subprocess's output: its last error-looking line, else its last."""
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "error:" in ln or ln.startswith(("E ", "FAILED", "[killed")):
            return ln[:400]
    return lines[-1][:400] if lines else "(no output)"


def _pytest_summary(out: str) -> str:
    for ln in reversed(out.strip().splitlines()):
        if " in " in ln and any(w in ln for w in ("passed", "failed", "skipped", "error", "no tests")):
            return ln.strip("= ").strip()
    return "(no pytest summary line)"


def _tail_mean(losses: list[float], k: int = 5) -> float:
    tail = losses[-k:]
    return sum(tail) / len(tail)


def _weights_diff(a: Path, b: Path) -> dict[str, Any]:
    """Compare two HF exports tensor by tensor (max |delta| over all, and how many tensors differ)."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        return {"tensors": len(wa), "tensors_differing": len(wa), "max_abs_weight_diff": math.inf}
    diffs = [float((wa[k].float() - wb[k].float()).abs().max()) for k in wa]
    return {"tensors": len(diffs), "tensors_differing": sum(d != 0.0 for d in diffs),
            "max_abs_weight_diff": max(diffs, default=0.0)}


def _versions() -> dict[str, str | None]:
    import torch

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for dist in ("transformers", "deepspeed", "megatron-core", "webdataset"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def table(result: dict[str, Any]) -> str:
    """The one table: a row per part, its sub-rows, and one `skipped` row per skipped item with the reason."""
    dev = result["device"]
    head = (f"GPU check ({result['mode']} mode) on {dev['name']}: peak {dev['peak_flops'] / 1e12:.3g} TFLOP/s "
            f"({dev['peak_source']}), {result['wall_s']:.0f} s of the {result['budget_s']:.0f} s budget; "
            f"torch {result['versions']['torch']}")
    rows = [("part", "status", "result"), ("----", "------", "------")]
    for name, p in result["parts"].items():
        rows.append((name, p["status"], p["summary"] or p["reason"]))
        if p["status"] != "skipped" and p["reason"] and p["summary"]:
            rows.append(("", "", p["reason"]))
        rows += [(f"  {label}", "", text) for label, text in p["rows"]]
        rows += [("", "skipped", f"{s['what']}: {s['reason']}") for s in p["skipped"]]
    width = max(len(r[0]) for r in rows)
    body = "\n".join(f"{a:<{width}}  {b:<7}  {c}".rstrip() for a, b, c in rows)
    verdict = "all parts that ran passed" if result["ok"] else f"FAILED: {', '.join(result['failed'])}"
    return f"{head}\n{body}\n{verdict}"


def out_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("OUT") or REPO / "work" / "gpu_check")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="where gpu_check.json/.txt/.log go (default $OUT, else work/gpu_check)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; parts that do not fit are skipped")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--cpu", action="store_true", help="the CPU mode even where CUDA exists")
    ap.add_argument("--size", default=None, help="ladder size of the engine finetunes (GPU default paper-334m)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length of the finetunes (GPU default 2048)")
    ap.add_argument("--steps", type=int, default=None, help="finetune steps (GPU default 50)")
    ap.add_argument("--work", default=None, help="keep data, models and runs in this folder (default: a temp dir, removed)")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](json.loads(Path(args.spec).read_text()))
        return 0
    from dist_forget.errors import UserError

    unknown = sorted(set(filter(None, args.only.split(","))) - set(PARTS))
    if unknown:
        raise UserError(f"--only {args.only}: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s {args.budget_s:g} must be > 0 seconds")
    out = out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(args)
    try:
        result = check()
    finally:
        check.close()
    text = table(result)
    (out / "gpu_check.json").write_text(json.dumps(_finite(result), indent=1, allow_nan=False))
    (out / "gpu_check.txt").write_text(text + "\n")
    (out / "gpu_check.log").write_text("\n".join(check.logs) + "\n")
    print(text)
    print(f"wrote {out / 'gpu_check.json'}, gpu_check.txt and gpu_check.log")
    return 0 if result["ok"] else 1


def _finite(x: Any) -> Any:
    """`x` with every non-finite float as None (strict JSON), paths and other objects as strings."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x if x is None or isinstance(x, (str, int, bool)) else str(x)


if __name__ == "__main__":
    from dist_forget.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
