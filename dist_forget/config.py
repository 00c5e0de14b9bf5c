"""Dataclass configs: YAML in, dotted overrides, strict validation.

Every component owns a small dataclass; a run's config is a tree of them. `load_config` reads a YAML
file whose keys mirror the dataclass fields, applies `a.b.c=value` overrides (values parsed as YAML, so
`optim.lr=3e-4` is a float), rejects unknown keys and wrong types with a one-line `UserError` naming the
key, and returns the dataclass. `to_dict` gives the resolved config back as plain data, which is what
gets saved into every checkpoint and MLflow run.
"""

from __future__ import annotations

import dataclasses
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
    data = merge(data, parse_overrides(list(overrides or [])))
    where = str(path) if path is not None else "config"
    return from_dict(cls, data, where=where)


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


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build a (nested) dataclass from plain data; unknown keys and wrong types are `UserError`s.

    Every problem of the tree is collected first (unknown keys, wrong types, then each section's own
    checks), so one error lists them all instead of making the user fix them one run at a time."""
    obj, problems = _build(cls, data, where, prefix)
    if problems:
        raise ConfigErrors(where, problems)
    return obj  # type: ignore[return-value]


def _build(cls: type[T], data: Any, where: str, prefix: str) -> tuple[T | None, list[str]]:
    if not isinstance(data, dict):
        return None, [f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}"]
    problems: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name in sorted(set(data) - set(fields)):
        known = ", ".join(sorted(fields))
        problems.append(f"{where}: unknown key {prefix + name!r}; known keys here: {known}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            continue
        try:
            kwargs[name] = _coerce(hints[name], value, where, f"{prefix}{name}")
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


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
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
                return _coerce(arg, value, where, key)
            except UserError as exc:
                errors.append(exc)
        raise UserError(f"{where}: key {key!r} = {value!r} should be {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: key {key!r} = {value!r} should be one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where, prefix=f"{key}.")  # ConfigErrors carries all of the section's
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise UserError(f"{where}: key {key!r} should have {len(args)} items, got {len(value)}")
            return tuple(_coerce(a, v, where, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_coerce(item_tp, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: key {key!r} = {value!r} should be a mapping")
        return dict(value)
    if tp is float:
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
