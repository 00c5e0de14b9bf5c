"""Numbers as the reports and JSON outputs show them (standard library only: laws/ and study/ share it).

A value that was not measured (None, NaN, ±inf) is `null` in JSON, which strict readers (the study, jq,
browsers) accept where they reject NaN, and "–" in text.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"


def json_finite(obj: Any) -> Any:
    """NaN/inf -> None throughout dicts, lists and tuples (tuples become lists, as JSON has no tuple)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_finite(v) for v in obj]
    return obj


def measured(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def pct(x: float | None) -> str:
    """A fraction as percent with two decimals: 0.0123 -> "1.23 %"."""
    return f"{100 * x:.2f} %" if measured(x) else MISSING


def num(x: float | None, spec: str = ".3f") -> str:
    """A number in a format spec: num(3.14159) -> "3.142", num(12345.0, ",.0f") -> "12,345"."""
    return f"{x:{spec}}" if measured(x) else MISSING
