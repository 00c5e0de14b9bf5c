"""`train.precision: auto`: the choice from CPU flags, engine and model width (engine/precision.py)."""

from __future__ import annotations

import pytest

from dist_forget.engine.precision import BF16_MIN_HIDDEN_CPU, choose, cpu_flags
from dist_forget.models.ladder import shape_of

AVX512 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw"}


def test_cpu_without_native_bf16_stays_fp32_at_any_width():
    c = choose("auto", False, "single", AVX512, 576)
    assert c.precision == "fp32" and "no native bf16" in c.reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_bf16_cpu_picks_bf16_for_wide_models_only(flag):
    wide = choose("auto", False, "single", AVX512 | {flag}, 576)  # SmolLM2-135M
    assert wide.precision == "bf16" and flag in wide.reason and "576" in wide.reason
    at = choose("auto", False, "megatron", AVX512 | {flag}, BF16_MIN_HIDDEN_CPU)
    assert at.precision == "bf16"
    below = choose("auto", False, "single", AVX512 | {flag}, BF16_MIN_HIDDEN_CPU - 1)
    assert below.precision == "fp32" and "no clear gain" in below.reason


def test_the_demo_and_micro_ladders_stay_fp32_on_a_bf16_cpu():
    """Their committed figures were made in fp32: auto must not change them on any CPU."""
    flags = AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}
    for size in ("cpu-0.01m", "cpu-0.015m", "cpu-0.03m", "cpu-0.1m", "cpu-0.3m", "cpu-1m"):
        assert choose("auto", False, "single", flags, shape_of(size).hidden).precision == "fp32", size
    for size in ("cpu-3m", "cpu-10m", "paper-41m"):
        assert choose("auto", False, "single", flags, shape_of(size).hidden).precision == "bf16", size


def test_deepspeed_on_cpu_and_unknown_width_stay_fp32_gpu_and_explicit_win():
    flags = AVX512 | {"amx_bf16"}
    assert choose("auto", False, "deepspeed", flags, 2048).precision == "fp32"
    assert choose("auto", False, "single", flags, None).precision == "fp32"
    assert choose("auto", True, "deepspeed", (), None).precision == "bf16"
    assert choose("fp32", True, "single", flags, 2048).precision == "fp32"
    explicit = choose("bf16", False, "single", AVX512, 16)
    assert explicit.precision == "bf16" and explicit.reason == "train.precision = bf16"


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\nprocessor\t: 1\n"
    )
    assert cpu_flags(info) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
