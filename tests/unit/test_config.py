"""The config loader: YAML + dotted overrides, strict keys and types, one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from dist_forget.config import flatten, load_config, parse_overrides, to_dict
from dist_forget.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    engine: Literal["single", "deepspeed"] = "single"
    resume_from: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Run, path, ["optim.lr=3e-4", "engine=deepspeed", "optim.betas=[0.8, 0.9]"])
    assert cfg.steps == 5
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.engine == "deepspeed"
    assert cfg.optim.betas == (0.8, 0.9)
    assert flatten(to_dict(cfg))["optim.lr"] == pytest.approx(3e-4)


def test_unknown_key_names_the_key_and_the_known_ones(tmp_path):
    with pytest.raises(UserError, match=r"unknown key 'optim.lrr'.*known keys here: betas, lr"):
        load_config(Run, None, ["optim.lrr=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("steps=ten", r"key 'steps' = 'ten' should be an integer"),
        ("steps=1.5", r"should be an integer"),
        ("optim.lr=fast", r"key 'optim.lr' = 'fast' should be a number"),
        ("engine=megatron", r"should be one of \['single', 'deepspeed'\]"),
        ("optim=3", r"optim must be a mapping"),
        ("nonsense", r"is not key=value"),
    ],
)
def test_wrong_values_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message) as info:
        load_config(Run, None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_broken_yaml_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1,\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+ is not valid YAML"):
        load_config(Run, bad)


def test_none_allowed_only_where_typed_optional():
    assert load_config(Run, None, ["resume_from=null"]).resume_from is None
    with pytest.raises(UserError, match="should be an integer"):
        load_config(Run, None, ["steps=null"])


def test_parse_overrides_nests_and_parses_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=x", "d=true"]) == {"a": {"b": 1, "c": "x"}, "d": True}


@dataclass
class Data:
    inject_fraction: float | Literal["auto"] = 0.0
    max_forgetting: float | None = None
    fractions: list[float] = field(default_factory=list)
    min_lr_ratio: float = 0.1


@dataclass
class WithData:
    data: Data = field(default_factory=Data)
    optim: Optim = field(default_factory=Optim)


@pytest.mark.parametrize(
    ("override", "value"),
    [("data.inject_fraction=1%", 0.01), ("data.inject_fraction=5 %", 0.05), ("data.min_lr_ratio=10%", 0.1),
     ("data.inject_fraction=auto", "auto")],
)  # fmt: skip
def test_a_fraction_takes_a_percent(override, value):
    cfg = load_config(WithData, None, [override])
    key = override.split("=")[0].split(".")[1]
    assert (
        getattr(cfg.data, key) == pytest.approx(value)
        if value != "auto"
        else getattr(cfg.data, key) == "auto"
    )


def test_a_percent_elsewhere_is_refused_saying_what_to_write(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(WithData, None, ["data.max_forgetting=5%"])
    assert "key 'data.max_forgetting' = '5%' is not a fraction" in str(info.value)
    assert "write a plain number" in str(info.value)
    with pytest.raises(UserError, match=r"'data.inject_fraction' = 'x%' is not a percent; write 0.01 or 1%"):
        load_config(WithData, None, ["data.inject_fraction=x%"])
    with pytest.raises(UserError, match=r"'data.inject_fraction' = 'abc' should be float or 'auto'"):
        load_config(WithData, None, ["data.inject_fraction=abc"])


def test_an_unknown_key_says_where_it_came_from_and_what_was_meant(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(UserError) as info:
        load_config(WithData, path, ["optim.lrr=1e-3"])
    assert str(info.value).startswith(
        "command line override 'optim.lrr=1e-3': unknown key 'optim.lrr' (did you mean 'optim.lr'?)"
    )
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as info:
        load_config(WithData, path, ["optim.lr=1e-3"])
    assert str(info.value).startswith(f"{path}: unknown key 'optim.lrr' (did you mean 'optim.lr'?)")
    with pytest.raises(
        UserError, match=r"^command line override 'dta.seed=1': unknown key 'dta' \(did you mean 'data'"
    ):
        load_config(WithData, None, ["dta.seed=1"])
    with pytest.raises(UserError) as info:  # nothing close: no guess
        load_config(WithData, None, ["zzz=1"])
    assert "did you mean" not in str(info.value)


def test_a_bad_value_on_the_command_line_is_blamed_on_that_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(UserError, match=r"^command line override 'optim.lr=fast': key 'optim.lr' = 'fast'"):
        load_config(WithData, path, ["optim.lr=fast"])
