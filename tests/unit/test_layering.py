"""Dependencies point down the data flow (DEVELOPERS.md): checked on the import statements themselves."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dist_forget"

FORBIDDEN = {
    "laws": ("torch", "deepspeed", "megatron", "transformers", "dist_forget.engine", "dist_forget.models"),
    "data": ("dist_forget.engine", "dist_forget.models", "dist_forget.laws", "deepspeed", "megatron"),
    "optim": ("deepspeed", "megatron", "dist_forget.engine"),
    # the on-disk formats: engine backends and converters both call them, so they import neither (issue 16)
    "checkpoint": ("dist_forget.engine", "dist_forget.convert"),
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_area_imports_only_what_lies_below_it(area):
    for path in sorted((PACKAGE / area).rglob("*.py")):
        for name in _imports(path):
            bad = [f for f in FORBIDDEN[area] if name == f or name.startswith(f + ".")]
            assert not bad, (
                f"{path.relative_to(PACKAGE.parent)} imports {name}, which {area}/ must not depend on"
            )


def test_schema_needs_only_the_standard_library():
    """The runs-table and metrics.jsonl formats are read by torch-free stages (laws/, sweep/, study/)."""
    names = _imports(PACKAGE / "schema.py")
    assert {n.split(".")[0] for n in names} <= set(sys.stdlib_module_names) | {"__future__"}, names
