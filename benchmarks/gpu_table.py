"""The GPU check's table: the records the tests in tests/gpu wrote (tests/gpu/conftest.py: each test's outcome;
tests/gpu/support.py `Recorder`: its summary, rows, figures, checks, skipped items) become one `Part` per part
of the check, gpu_check.json's "parts", and gpu_check.txt, the table (benchmarks/gpu_check.py runs the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# each part of the check and the test file that proves it; tests_gpu is every other test file of tests/gpu
PART_FILES = {"optimizer": "test_optimizer_gpu.py", "logits": "test_logits_gpu.py",
              "engines": "test_engines_gpu.py", "resume": "test_resume_gpu.py"}
PARTS = (*PART_FILES, "tests_gpu")
OUTCOME_RANK = {"cut off": 0, "passed": 1, "skipped": 2, "failed": 3}  # a test's worst phase is its outcome


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


def part_of(test: str) -> str:
    """The part a test (pytest node id, or its file's path) belongs to."""
    file = Path(test.split("::")[0]).name
    return next((name for name, f in PART_FILES.items() if f == file), "tests_gpu")


def tabulate(parts: dict[str, Part], run: list[str], records: list[dict[str, Any]], rc: int,
             last_error: str) -> dict[str, str]:
    """Fill `parts` from the tests' records; each test's outcome. `run`: the parts whose tests pytest ran,
    `rc` its exit code, `last_error` the telling line of its output (for a part none of whose tests ran).

    A part is an error when one of its tests crashed or was cut off, fail when one missed a bound (an assert),
    skipped (with its tests' reasons) when all its tests skipped; a test that skipped beside others that ran
    is one of its skipped items."""
    tests: dict[str, dict[str, Any]] = {}
    for rec in records:
        new = {"outcome": "cut off", "reason": "", "error": True, "wall_s": 0.0}
        if rec["kind"] == "collected":  # a test collected but never reported was cut off
            for test in rec["tests"]:
                tests.setdefault(test, dict(new))
            continue
        part = parts[part_of(rec["test"])]
        if rec["kind"] == "outcome":  # one per phase: setup, call, teardown
            t = tests.setdefault(rec["test"], new)
            t["wall_s"] += rec["duration"]
            if OUTCOME_RANK[rec["outcome"]] > OUTCOME_RANK[t["outcome"]]:
                t.update(outcome=rec["outcome"], reason=rec["reason"], error=rec["error"])
        elif rec["kind"] == "summary":
            part.summary = rec["text"]
        elif rec["kind"] == "row":
            part.rows.append((rec["label"], rec["text"]))
        elif rec["kind"] == "figures":
            _merge(part.figures, rec["values"])
        elif rec["kind"] == "check":
            part.check(rec["name"], rec["value"], rec["bound"], rec["ok"])
        elif rec["kind"] == "skip":
            part.skip(rec["what"], rec["reason"])
    for name in run:
        part, mine = parts[name], {t: v for t, v in tests.items() if part_of(t) == name}
        part.wall_s = sum(v["wall_s"] for v in mine.values())
        ran = {t: v for t, v in mine.items() if v["outcome"] != "skipped"}
        if not mine:
            part.status, part.reason = "error", f"pytest ran none of its tests (exit {rc}): {last_error}"
        elif not ran:
            part.status, part.reason = "skipped", "; ".join(dict.fromkeys(v["reason"] for v in mine.values()))
        else:
            _settle(part, mine, ran, rc)
    return {t: v["outcome"] for t, v in tests.items()}


def _settle(part: Part, mine: dict[str, dict[str, Any]], ran: dict[str, dict[str, Any]], rc: int) -> None:
    for t, v in mine.items():
        if v["outcome"] == "skipped":
            part.skip(_what(t), v["reason"])
        elif v["outcome"] == "cut off":
            v["reason"] = f"cut off: pytest exited {rc} before it ended" + (" (out of time)" if rc == 124 else "")
    bad = [v for v in ran.values() if v["outcome"] != "passed"]
    if any(v["error"] for v in bad):
        part.status = "error"
    elif bad:
        part.status = "fail"
    part.reason = bad[0]["reason"] if bad else ""
    if not part.summary and not part.rows:  # a part whose tests record nothing: their outcomes
        counts = [f"{sum(v['outcome'] == o for v in mine.values())} {o}" for o in OUTCOME_RANK]
        part.summary = "pytest: " + ", ".join(c for c in counts if not c.startswith("0 "))
        part.rows = [(_what(t), f"{v['outcome']} in {v['wall_s']:.1f} s") for t, v in ran.items()]


def _what(test: str) -> str:
    """A test's name in the table: its parameter (an engine) where it has one, else its function's name."""
    name = test.split("::")[-1]
    return name[name.index("[") + 1 : -1] if name.endswith("]") else name


def _merge(into: dict[str, Any], values: dict[str, Any]) -> None:
    """Figures recorded by several tests of a part: dicts merged key by key (each engine's run)."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


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


def finite(x: Any) -> Any:
    """`x` with every non-finite float as None (strict JSON), paths and other objects as strings."""
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x if x is None or isinstance(x, (str, int, bool)) else str(x)
