"""One command that proves the GPU path (`make gpu-check`): it runs the GPU proof, the pytest tests marked `gpu`
in tests/gpu, within a time budget, and renders what they measured as one table.

    python -m benchmarks.gpu_check [--out DIR] [--budget-s 480] [--only engines,resume] [--cpu]

On a machine with CUDA it runs `pytest -m gpu` on tests/gpu, part by part, within `--budget-s` seconds:

- `optimizer` (test_optimizer_gpu.py): AnchoredAdamW step time vs `torch.optim.AdamW(fused=True)` on the same
  CUDA parameters (goal <= 1.15x, recorded) and the path each step takes (fused / foreach / per-tensor);
- `logits` (test_logits_gpu.py): megatron-core's stock GPTModel, our tensor-parallel Llama and HF's Llama on the
  same weights: max |delta logits| in fp32 (TF32 off) and under bf16 autocast;
- `engines` (test_engines_gpu.py): a bf16 finetune (`--size`, default paper-334m at seq 2048) on the three
  engines: tokens/s, MFU against the datasheet bf16 dense peak (goal >= 40 %, recorded), peak memory, loss,
  the engines' agreement;
- `resume` (test_resume_gpu.py): a DeepSpeed fp32 run resumed from its mid checkpoint: bit-exact losses and
  final weights (deterministic kernels, math attention);
- `tests_gpu`: every other test in tests/gpu (NCCL, the stock GPTModel's finetune, its torch_dist folders).

Without CUDA (or with `--cpu`) the same tests run their CPU setting (tests/gpu/support.py): the optimizer on
CPU parameters, our TP Llama vs HF, the three engines in fp32 on a tiny model (megatron with
parallel.impl=local), the DeepSpeed resume; what needs CUDA is listed as skipped with the reason, and the exit
code is 0 unless a part that ran failed. A test with too little of the budget left skips, saying so; pytest
itself is stopped at the deadline. The data are made offline from tests/data; each finetune is a real
`trainer.train` in its own process.

Writes `gpu_check.json` (SI units, fractions; strict JSON), `gpu_check.txt` (the table) and `gpu_check.log`
(pytest's output, then every subprocess's output tail) to `--out`, else `$OUT` when set, else `work/gpu_check`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.gpu_table import PART_FILES, PARTS, Part, finite, table, tabulate
from tests.gpu import support

REPO = Path(__file__).resolve().parents[1]
SCHEMA = 1
GPU_TESTS = REPO / "tests" / "gpu"
GPU_PACKAGES = ("deepspeed", "megatron.core", "webdataset")  # beyond torch and transformers
NEEDS = {"optimizer": (), "logits": ("megatron.core",), "engines": GPU_PACKAGES,
         "resume": ("deepspeed", "webdataset"), "tests_gpu": ("megatron.core",)}
_last_error = support.last_error


def part_files(name: str) -> list[Path]:
    if name in PART_FILES:
        return [GPU_TESTS / PART_FILES[name]]
    return sorted(p for p in GPU_TESTS.glob("test_*.py") if p.name not in PART_FILES.values())


def run_pytest(files: list[Path], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """`pytest -m gpu` on `files` (in this order), its output shown as it comes; killed (exit 124) after
    `timeout` seconds with everything it started. A test that hangs past the budget outside a finetune (whose
    own timeout comes first) fails by pytest-timeout where it is installed, so that the others are told."""
    per_test = ["--timeout", str(int(max(30, timeout - 5)))] if importlib.util.find_spec("pytest_timeout") else []
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-ra", "--tb=short", "-p", "no:cacheprovider",
           *per_test, *(str(f.relative_to(REPO)) for f in files)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            print(line, end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = 124
        proc.wait()
    reader.join(timeout=10)
    if rc == 124:
        lines.append(f"\n[killed after {timeout:.0f} s: out of time]\n")
    return rc, "".join(lines)


def check(args: argparse.Namespace, t0: float) -> tuple[dict[str, Any], str]:
    """Run the selected parts' tests: the result (gpu_check.json) and the log."""
    cuda = not args.cpu and _cuda_available()
    no_cuda = "--cpu given" if args.cpu else "no CUDA device here"
    only = set(args.only.split(",")) if args.only else set(PARTS)
    parts = {name: Part(name) for name in PARTS}
    run: list[str] = []
    for name, part in parts.items():
        missing = [m for m in NEEDS[name] if importlib.util.find_spec(m.split(".")[0]) is None
                   or importlib.util.find_spec(m) is None]
        if name not in only:
            part.status, part.reason = "skipped", "not in --only"
        elif missing:
            part.status = "error"
            part.reason = (f"missing Python packages {', '.join(missing)}: install them (on a lent machine, carry "
                           "the wheels tools/gpu_wheels.sh downloads)")
        else:
            run.append(name)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    records, log = work / "records.jsonl", work / "subprocesses.log"
    records.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    left = args.budget_s - (time.perf_counter() - t0)
    # what the tests take from the runner (tests/gpu/support.py): deadline, sizes, where to write
    config = {"records": str(records), "log": str(log), "work": str(work), "deadline": time.time() + left,
              "budget_s": args.budget_s, "size": args.size, "seq": args.seq, "steps": args.steps,
              "no_cuda": no_cuda}
    env = {**support.child_env(cuda), support.CONFIG_ENV: json.dumps(config)}
    if not cuda:
        env[support.CPU_ENV] = "1"
    rc, out, t1 = 0, "", time.perf_counter()
    try:
        if run:
            rc, out = run_pytest([f for name in run for f in part_files(name)], env, left - 3)
        lines = records.read_text().splitlines() if records.is_file() else []
        recs = [json.loads(ln) for ln in lines if ln.strip()]
        outcomes = tabulate(parts, run, [r for r in recs if r["kind"] != "environment"], rc, _last_error(out))
        log_text = f"===== pytest: exit {rc} after {time.perf_counter() - t1:.1f} s\n{out[-20000:]}\n"
        log_text += log.read_text() if log.is_file() else ""
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [p.name for p in parts.values() if p.status in ("fail", "error")]
    # the device and versions the tests ran with (measured in their process); here where none of them ran
    measured = next((r for r in reversed(recs) if r["kind"] == "environment"), None) or {
        "device": support.device_info(cuda), "versions": support.versions()}
    return {
        "schema": SCHEMA,
        "command": " ".join(["python -m benchmarks.gpu_check", *sys.argv[1:]]),
        "mode": "cuda" if cuda else "cpu",
        "ok": not failed,
        "failed": failed,
        "budget_s": args.budget_s,
        "wall_s": time.perf_counter() - t0,
        "device": measured["device"],
        "versions": measured["versions"],
        "settings": asdict(support.Settings.for_mode(cuda, args.size, args.seq, args.steps)),
        "pytest": {"exit_code": rc, "summary_line": _pytest_summary(out) if run else None, "tests": outcomes},
        "parts": {name: asdict(p) for name, p in parts.items()},
    }, log_text


def _pytest_summary(out: str) -> str:
    for ln in reversed(out.strip().splitlines()):
        if " in " in ln and any(w in ln for w in ("passed", "failed", "skipped", "error", "no tests")):
            return ln.strip("= ").strip()
    return "(no pytest summary line)"


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def out_dir(arg: str | None) -> Path:
    return Path(arg or os.environ.get("OUT") or REPO / "work" / "gpu_check")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="where gpu_check.json/.txt/.log go (default $OUT, else work/gpu_check)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; tests that do not fit skip")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--cpu", action="store_true", help="the CPU mode even where CUDA exists")
    ap.add_argument("--size", default=None, help="ladder size of the engine finetunes (GPU default paper-334m)")
    ap.add_argument("--seq", type=int, default=None, help="sequence length of the finetunes (GPU default 2048)")
    ap.add_argument("--steps", type=int, default=None, help="finetune steps (GPU default 50)")
    ap.add_argument("--work", default=None, help="keep data, models and runs in this folder (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    from dist_forget.errors import UserError
    from dist_forget.io import write_text_atomic

    unknown = sorted(set(filter(None, args.only.split(","))) - set(PARTS))
    if unknown:
        raise UserError(f"--only {args.only}: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.budget_s <= 0:
        raise UserError(f"--budget-s {args.budget_s:g} must be > 0 seconds")
    out = out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result, log = check(args, t0)
    text = table(result)
    write_text_atomic(out / "gpu_check.json", json.dumps(finite(result), indent=1, allow_nan=False))
    write_text_atomic(out / "gpu_check.txt", text + "\n")
    write_text_atomic(out / "gpu_check.log", log)
    print(text)
    print(f"wrote {out / 'gpu_check.json'}, gpu_check.txt and gpu_check.log")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    from dist_forget.errors import UserError

    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
