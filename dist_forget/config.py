"""Dataclass configs: YAML in, dotted overrides, strict validation.

Every component owns a small dataclass; a run's config is a tree of them. `load_config` reads a YAML
file whose keys mirror the dataclass fields, applies `a.b.c=value` overrides (values parsed as YAML, so
`optim.lr=3e-4` is a float), rejects unknown keys and wrong types with a one-line `UserError` naming the
key (and where it came from: the YAML file or a command-line override; a typo gets a "did you mean"),
and returns the dataclass. A fraction (a key named `*_fraction`, `*_ratio`, `*_share` or `inject_max`)
may be written as a percent: `data.inject_fraction=1%` is 0.01. `to_dict` gives the resolved config back
as plain data, which is what gets saved into every checkpoint and MLflow run.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dist_forget.errors import UserError

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain dicts/lists/scalars (safe for YAML, JSON and MLflow params)."""
    return dataclasses.asdict(cfg)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for MLflow params and for diffing configs."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["optim.lr=3e-4", "data.seed=1"] -> nested dict; each value parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} is not key=value; write it like optim.lr=3e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r} sets a field inside {part!r}, which is not a section")
        node[parts[-1]] = value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass a YAML file from configs/")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path}{where} is not valid YAML; fix the syntax there") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build dataclass `cls` from an optional YAML file plus dotted overrides, strictly validated."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    given = {item.split("=", 1)[0].strip(): item for item in overrides or [] if "=" in item}
    data = merge(data, parse_overrides(list(overrides or [])))
    where = str(path) if path is not None else "config"
    return from_dict(cls, data, where=where, cli=given)


# Keys whose values are fractions (0.01 = 1 %): they also take a percent string, "1%" or "1 %".
FRACTION_KEY = re.compile(r"(fraction|_ratio|_share|^inject_max)$")


def is_fraction_key(key: str) -> bool:
    """Whether dotted `key` (list items as `key[i]`) names a fraction, which may be written as N%."""
    return bool(FRACTION_KEY.search(re.sub(r"(\[\d+\])+$", "", key).rsplit(".", 1)[-1]))


class ConfigErrors(UserError):
    """Several config problems at once; the message lists them all (one line)."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            items = " ".join(f"({i}) {_strip_where(p, where)}" for i, p in enumerate(problems, 1))
            super().__init__(f"{where}: {len(problems)} problems: {items}")


def _strip_where(problem: str, where: str) -> str:
    return problem[len(where) + 2 :] if problem.startswith(where + ": ") else problem


def from_dict(
    cls: type[T],
    data: dict[str, Any],
    where: str = "config",
    prefix: str = "",
    cli: dict[str, str] | None = None,
) -> T:
    """Build a (nested) dataclass from plain data; unknown keys and wrong types are `UserError`s.

    Every problem of the tree is collected first (unknown keys, wrong types, then each section's own
    checks), so one error lists them all instead of making the user fix them one run at a time. `cli`
    maps the dotted keys given on the command line to their `key=value` words, so that an unknown key
    is blamed on the override that brought it rather than on the file `where`."""
    obj, problems = _build(cls, data, where, prefix, cli or {})
    if problems:
        raise ConfigErrors(where, problems)
    return obj  # type: ignore[return-value]


def _unknown_key(key: str, fields: list[str], where: str, cli: dict[str, str]) -> str:
    """One line: which key, where it came from (the override that set it, or the file), a close known key."""
    word = next((w for k, w in cli.items() if k == key or k.startswith(key + ".")), None)
    source = f"command line override {word!r}" if word else where
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    hint = f" (did you mean {key[: len(key) - len(name)] + close[0]!r}?)" if close else ""
    return f"{source}: unknown key {key!r}{hint}; known keys here: {', '.join(sorted(fields))}"


def _build(
    cls: type[T], data: Any, where: str, prefix: str, cli: dict[str, str]
) -> tuple[T | None, list[str]]:
    if not isinstance(data, dict):
        return None, [f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}"]
    problems: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in sorted(set(data) - set(fields)):
        problems.append(_unknown_key(prefix + name, list(fields), where, cli))
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            continue
        key = f"{prefix}{name}"
        # a value set on the command line is blamed on that override, not on the file beneath it
        source = f"command line override {cli[key]!r}" if key in cli else where
        try:
            kwargs[name] = _coerce(hints[name], value, source, key, cli)
        except ConfigErrors as exc:
            problems.extend(exc.problems)
        except UserError as exc:
            problems.append(str(exc))
    if len(kwargs) < len(set(data) & set(fields)):  # a value could not be read: the section cannot be built
        return None, problems
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        return None, [*problems, f"{where}: {prefix.rstrip('.') or cls.__name__}: {exc}"]
    validate = getattr(obj, "validate", None)
    if callable(validate):  # an unknown key beside it does not hide what is wrong with the known ones
        try:
            validate()
        except UserError as exc:
            problems.append(str(exc))
    return (None if problems else obj), problems


def type_name(tp: Any) -> str:
    """A field type as a reader writes it: `float or 'auto'`, `list of int`, `str or null`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(type_name(a) for a in args)}]"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping {type_name(args[0])} -> {type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return "section"
    return "any" if tp is Any else getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _percent(value: str, where: str, key: str) -> float:
    """'1%' or '1 %' -> 0.01 for a fraction key; a percent anywhere else is refused, saying what to write."""
    if not is_fraction_key(key):
        raise UserError(f"{where}: key {key!r} = {value!r} is not a fraction, so a percent means nothing "
                        "here; write a plain number")  # fmt: skip
    try:
        return float(value.strip()[:-1]) / 100
    except ValueError:
        raise UserError(f"{where}: key {key!r} = {value!r} is not a percent; write 0.01 or 1%") from None


def _coerce(tp: Any, value: Any, where: str, key: str, cli: dict[str, str] | None = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where, key, cli)
            except UserError as exc:
                errors.append(exc)
        percent = [e for e in errors if "percent" in str(e)]
        if len(errors) == 1 or percent:  # one real type beside null, or a percent: that message says more
            raise (percent or errors)[0]
        raise UserError(f"{where}: key {key!r} = {value!r} should be {type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: key {key!r} = {value!r} should be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(
            tp, value, where, prefix=f"{key}.", cli=cli
        )  # ConfigErrors carries all of the section's
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{where}: key {key!r} should have {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(a, v, where, f"{key}[{i}]", cli) for i, (a, v) in enumerate(zip(args, value))
            )
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, where, f"{key}[{i}]", cli) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a mapping")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and value.strip().endswith("%"):
            return _percent(value, where, key)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a number (float)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise UserError(f"{where}: key {key!r} = {value!r} should be an integer")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: key {key!r} = {value!r} should be true or false")
        return value
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a string")
        return str(value)
    return value
