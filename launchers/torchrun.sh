#!/usr/bin/env bash
# Run a dist-forget command under torchrun with c10d rendezvous. Settings come from the environment:
#   NPROC          processes per node (default 1)
#   NNODES         number of nodes (default 1); run this script once on every node, same settings
#   RDZV_ENDPOINT  host:port of the rendezvous, e.g. node 0 (default 127.0.0.1:29400)
#   RDZV_ID        a job id shared by all nodes (default dist-forget)
# Examples:
#   NPROC=2 launchers/torchrun.sh finetune --config configs/finetune/tiny.yaml engine=deepspeed parallel.zero_stage=2
#   NNODES=2 NPROC=8 RDZV_ENDPOINT=10.0.0.1:29400 RDZV_ID=job42 launchers/torchrun.sh finetune --config ...  # each node
set -euo pipefail
source "$(dirname "$0")/common.sh"
args=(
  --nnodes "${NNODES:-1}" --nproc-per-node "${NPROC:-1}"
  --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:-127.0.0.1:29400}" --rdzv-id "${RDZV_ID:-dist-forget}"
)
if [[ $is_script == 1 ]]; then
  exec torchrun "${args[@]}" "$@"
fi
exec torchrun "${args[@]}" -m dist_forget.cli "$@"
