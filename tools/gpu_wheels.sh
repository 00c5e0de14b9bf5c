#!/usr/bin/env bash
# Wheels a GPU machine without this project's stack needs for `make gpu-check` (python -m benchmarks.gpu_check),
# downloaded here into .whl/ (git-ignored) for Python 3.12 on x86-64 Linux (PYVER to change), at the versions
# this .venv holds. Such an image usually has torch, transformers, tokenizers, safetensors, numpy, scipy,
# matplotlib, pyyaml, pytest and pytest-timeout (pytest is needed: the check runs the tests of tests/gpu);
# this brings megatron-core, DeepSpeed (+ hjson, pydantic) and webdataset. On the GPU machine, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=${DEST:-.whl}
PYVER=${PYVER:-3.12}
pins=$("$PY" -c 'import importlib.metadata as m; print(" ".join(f"{n}=={m.version(n)}" for n in (
    "megatron-core", "webdataset", "braceexpand", "hjson", "pydantic", "pydantic-core", "annotated-types",
    "typing-inspection")))')
mkdir -p "$DEST"
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" $pins
# DeepSpeed publishes only a source archive: build its pure-Python wheel (no ops compiled; they JIT on use).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" \
    "deepspeed==$("$PY" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')"
ls -l "$DEST"
