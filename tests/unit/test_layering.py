"""Dependencies point down the data flow (DEVELOPERS.md): checked on the import statements themselves."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dist_forget"

FORBIDDEN = {
    "laws": ("torch", "deepspeed", "megatron", "transformers", "dist_forget.engine", "dist_forget.models"),
    "data": ("dist_forget.engine", "dist_forget.models", "dist_forget.laws", "deepspeed", "megatron"),
    "optim": ("deepspeed", "megatron", "dist_forget.engine"),
    # the on-disk formats: engine backends and converters both call them, so they import neither
    "checkpoint": ("dist_forget.engine", "dist_forget.convert"),
    "engine": ("dist_forget.convert",),
    "convert": ("dist_forget.engine",),
    # model.init_from is resolved to an HF folder before a model is built (checkpoint/init_from.py)
    "models": ("dist_forget.checkpoint", "dist_forget.convert", "dist_forget.engine"),
}
MAX_FUNCTION_LINES = 80
# functions over the limit that a rewrite under way shortens: the test fails once one is short, to drop it
KNOWN_LONG: set[str] = set()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from dist_forget import engine` imports the package as surely as `import dist_forget.engine`
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
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


def test_no_function_over_80_lines_in_engine_convert_checkpoint():
    """A newcomer reads a function top to bottom: the engine, converters and formats stay short."""
    long: set[str] = set()
    for area in ("engine", "convert", "checkpoint"):
        for path in sorted((PACKAGE / area).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                        long.add(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert long - KNOWN_LONG == set(), (
        f"functions over {MAX_FUNCTION_LINES} lines: {sorted(long - KNOWN_LONG)}"
    )
    assert KNOWN_LONG <= long, f"{sorted(KNOWN_LONG - long)} are short now: remove them from KNOWN_LONG"


ROOT = PACKAGE.parent
# what a comment must not point at instead of saying the fact: notes kept outside the repository, and
# tracker numbers ("issue" or "#" and a number) that mean nothing to a reader of the code
POINTERS = re.compile(
    r"platform[- ]?facts|\.\./shared|\bshared/notes|\bissues? ?#?\d+|(?<![\w&/])#\d+\b", re.I
)
TEXT_SUFFIXES = {".py", ".sh", ".sbatch", ".yaml", ".yml", ".md", ".toml", ".cfg", ".example"}


def test_comments_state_facts_instead_of_pointing_elsewhere():
    found = []
    for area in ("dist_forget", "tests", "benchmarks", "tools", "launchers", "configs"):
        for path in sorted((ROOT / area).rglob("*")):
            if path.suffix in TEXT_SUFFIXES and path.is_file():
                for number, line in enumerate(path.read_text().splitlines(), 1):
                    if POINTERS.search(line):
                        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "say the fact in a sentence instead:\n" + "\n".join(found)


# megatron-core's tensor names: models/mcore_map.py maps them to Llama's, and every other module asks it
MCORE_NAMES = re.compile(
    r"\b(linear_qkv|linear_fc1|linear_fc2|linear_proj|word_embeddings|self_attention|final_layernorm|"
    r"pre_mlp_layernorm|layer_norm_weight|output_layer)\b|decoder\.layers"
)
MAX_MODULE_LINES = 600


def test_megatron_core_names_live_in_one_module():
    found = {
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if MCORE_NAMES.search(path.read_text())
    }
    assert found == {"models/mcore_map.py"}, (
        f"megatron-core tensor names outside models/mcore_map.py: {found}"
    )


def test_no_library_module_over_600_lines():
    long = {
        f"{path.relative_to(PACKAGE)}: {n} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these by job: {sorted(long)}"


# the modules that call MLflow: its client (tracking/mlflow_calls.py), its system-metrics monitor, the
# artifact stores of a local store, and the laws' reader of the runs table. The tracker only queues and
# its records send through mlflow_calls, so an inactive tracker (other ranks, tracking off) loads no MLflow.
MLFLOW_MODULES = {
    "tracking/mlflow_calls.py",
    "tracking/system_metrics.py",
    "tracking/store.py",
    "laws/table.py",
}


def test_mlflow_is_imported_only_where_mlflow_is_called():
    found = {
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if any(n == "mlflow" or n.startswith("mlflow.") for n in _imports(path))
    }
    assert found <= MLFLOW_MODULES, (
        f"import mlflow through tracking/mlflow_calls.py: {sorted(found - MLFLOW_MODULES)}"
    )


def test_the_run_folder_module_is_not_named_like_the_checkpoint_package():
    """engine/run_folder.py (tags, `latest`, retention, branches, the resume choice) beside checkpoint/
    (the formats): one name, one meaning."""
    assert not (PACKAGE / "engine" / "checkpoint.py").exists()
    assert (PACKAGE / "engine" / "run_folder.py").is_file()


ENGINES = ("single", "deepspeed", "megatron")
FORMATS = PACKAGE / "checkpoint" / "formats.py"
# what knows a format's files: each engine's format in checkpoint/formats.py, and nothing else
FORMAT_FUNCTIONS = ("verify_checkpoint", "expected_files")


def _engine_comparisons(tree: ast.AST) -> list[int]:
    """The lines of `tree` that compare something with an engine name."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(isinstance(o, ast.Constant) and o.value in ENGINES for o in (node.left, *node.comparators))
    ]


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_checkpoint_formats_are_looked_up_by_engine_never_switched_on():
    """verify_checkpoint asks the format meta.json's engine names (FORMATS): no function that verifies a
    checkpoint or lists its files compares an engine name, and only formats.py lists a format's files."""
    switches, defined = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in _functions(ast.parse(path.read_text())):
            if fn.name.startswith(("verify", "_verify")) or fn.name in FORMAT_FUNCTIONS:
                switches += [f"{path.relative_to(PACKAGE)}:{line}" for line in _engine_comparisons(fn)]
            if fn.name in FORMAT_FUNCTIONS:
                defined.add(path)
    assert not switches, f"an engine switch where checkpoints are verified: {switches}"
    assert defined == {FORMATS}, f"a format's files listed outside checkpoint/formats.py: {defined}"
    assert not _engine_comparisons(ast.parse((PACKAGE / "engine" / "run_folder.py").read_text()))


def _class_engines(path: Path) -> set[str]:
    """The `engine = "..."` class attributes of module `path`."""
    return {
        node.value.value
        for cls in ast.walk(ast.parse(path.read_text()))
        if isinstance(cls, ast.ClassDef)
        for node in cls.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["engine"]
        and isinstance(node.value, ast.Constant)
    }


def test_every_backend_has_a_checkpoint_format():
    tree = ast.parse((PACKAGE / "engine" / "backend.py").read_text())
    backends = next(
        {k.value for k in node.value.keys}  # type: ignore[union-attr]
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "BACKENDS"
    )
    assert _class_engines(FORMATS) == backends == set(ENGINES)
