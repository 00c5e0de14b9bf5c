"""`dist-forget config show` (a config resolved as the run would see it) and `dist-forget config reference`
(every key of the run and sweep configs, generated from their dataclasses: docs/config.md).

A key's meaning is the comment on its dataclass field: the comment lines right above it, or the comment
on its own line(s). The reference fails on a field without one, so a new key is documented where it is
defined and docs/config.md is regenerated with `dist-forget config reference > docs/config.md`
(tests/unit/test_config_commands.py fails when the committed file is out of date).
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import re
import tokenize
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_forget.config import is_fraction_key, load_config, read_yaml, to_dict, type_name
from dist_forget.errors import UserError

REGENERATE = "dist-forget config reference > docs/config.md"
# top-level keys only a sweep YAML has (a run config has none of them)
SWEEP_KEYS = {"grid", "finetune", "extra_grids", "slurm", "fit", "adaptive"}


def _config_class(kind: str) -> type:
    if kind == "sweep":
        from dist_forget.sweep.config import SweepConfig

        return SweepConfig
    from dist_forget.engine.config import RunConfig

    return RunConfig


def show(
    config: Path, kind: Literal["auto", "run", "sweep"] = "auto", overrides: list[str] | None = None
) -> int:
    """Print a config resolved from its YAML and key=value overrides, as YAML: every key with its value.

    What a run or sweep started with the same --config and overrides would use (defaults filled in,
    types checked, percents turned into fractions); an unknown key or a bad value is refused as the run
    would refuse it.

    Args:
        config: the YAML file (configs/pretrain, configs/finetune or configs/sweep)
        kind: run (pretrain/finetune) or sweep config; auto: a sweep when the YAML has a grid or finetune
            section
        overrides: dotted overrides, e.g. optim.lr=1e-3 data.inject_fraction=1%
    """
    if kind == "auto":
        kind = "sweep" if SWEEP_KEYS & set(read_yaml(config)) else "run"
    cfg = load_config(_config_class(kind), config, overrides)
    plain = json.loads(json.dumps(to_dict(cfg)))  # tuples as lists: plain YAML
    print(yaml.safe_dump(plain, sort_keys=False, width=110).rstrip())
    return 0


def reference() -> int:
    """Print the reference of every run-config and sweep-config key (type, default, meaning) as Markdown.

    Generated from the config dataclasses and their field comments; docs/config.md is this output.
    """
    print(reference_markdown(), end="")
    return 0


def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment as one line}: the comment lines right above the field, then those on its lines."""
    lines = inspect.getsourcelines(cls)[0]
    indent = len(lines[0]) - len(lines[0].lstrip())  # a class defined inside a function is indented
    lines = [line[indent:] for line in lines]
    source = "".join(lines)
    comments: dict[int, str] = {}  # line number (1-based, in `lines`) -> comment text
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    pattern = re.compile(r"^\s{4}(\w+)\s*:")
    names = {f.name for f in dataclasses.fields(cls)}
    starts = [(i, m.group(1)) for i, line in enumerate(lines, 1) if (m := pattern.match(line))]
    starts = [(i, name) for i, name in starts if name in names]
    for k, (i, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines) + 1
        above, j = [], i - 1
        while j in comments and lines[j - 1].lstrip().startswith("#"):
            above.insert(0, comments[j])
            j -= 1
        own = [
            comments[n] for n in range(i, end) if n in comments and not lines[n - 1].lstrip().startswith("#")
        ]
        own += [comments[n] for n in range(i + 1, end) if n in comments and _inside(lines, i, n)]
        out[name] = " ".join([*above, *dict.fromkeys(own)]).strip()
    return out


def _inside(lines: list[str], start: int, n: int) -> bool:
    """Whether comment line `n` sits inside the statement of the field at line `start` (a wrapped default)."""
    text = "".join(lines[start - 1 : n - 1])
    return text.count("(") > text.count(")") or text.count("[") > text.count("]")


def _meaning(comment: str) -> str:
    """The first sentence of a field comment: the reference is one line a key."""
    first = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", comment, maxsplit=1)[0]
    return first.replace("|", "\\|")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    if dataclasses.is_dataclass(value):
        return ""
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) < 60 else f"`{text[:56]}...`"


def _rows(cls: type, prefix: str, missing: list[str]) -> list[str]:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key, tp = prefix + f.name, hints[f.name]
        section = _section_class(tp)
        if section is not None:
            rows += _rows(section, key + ".", missing)
            continue
        meaning = _meaning(comments.get(f.name, ""))
        if not meaning:
            missing.append(f"{cls.__module__}.{cls.__name__}.{f.name}")
        kind = type_name(tp) + (" (or N%)" if is_fraction_key(key) else "")
        rows.append(f"| `{key}` | {kind.replace('|', chr(92) + '|')} | {_shown(_default(f))} | {meaning} |")
    return rows


def _section_class(tp: Any) -> type | None:
    """The dataclass a field holds as a section (also `Stage | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def reference_markdown() -> str:
    """docs/config.md: a table per config (run, sweep) of every key with its type, default and meaning."""
    from dist_forget.engine.config import RunConfig
    from dist_forget.sweep.config import SweepConfig

    missing: list[str] = []
    parts = [
        "# Config reference\n",
        "Generated from the config dataclasses and their field comments; regenerate with\n"
        f"`{REGENERATE}` (a test fails when this file is out of date).\n",
        "Any key can be set in the YAML file or on the command line as `key=value` (values are read as\n"
        "YAML: `optim.lr=3e-4`, `grid.inject_fraction=[0,0.01]`, `model.init_from=null`). A fraction may be\n"
        "written as a percent (`data.inject_fraction=1%` is 0.01). `dist-forget config show --config FILE\n"
        "[key=value ...]` prints a config resolved as a run would use it.\n",
    ]
    for title, cls, note in (
        (
            "Run config",
            RunConfig,
            "`dist-forget pretrain` and `finetune` (configs/pretrain, configs/finetune)",
        ),
        ("Sweep config", SweepConfig, "`dist-forget sweep` and `demo` (configs/sweep)"),
    ):
        parts.append(f"## {title}\n\n{note}.\n")
        parts.append("| key | type | default | meaning |\n|---|---|---|---|")
        parts.append("\n".join(_rows(cls, "", missing)) + "\n")
    if missing:
        raise UserError(
            f"config fields without a comment: {', '.join(missing)}; add a comment saying what each is"
        )
    return "\n".join(parts)
