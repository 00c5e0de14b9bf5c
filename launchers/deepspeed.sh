#!/usr/bin/env bash
# Run a dist-forget command under DeepSpeed's launcher. Settings come from the environment:
#   NPROC        processes on this node (single-node mode; default 1)
#   HOSTFILE     hostfile for a multi-node run (see hostfile.example); without NODE_RANK the launcher
#                starts every node over ssh (pdsh)
#   NODE_RANK    with HOSTFILE: the per-node mode (`--no_ssh`): run this script once on every node,
#                each with its own NODE_RANK and the same MASTER_ADDR
#   MASTER_ADDR  address of node 0 (needed with NODE_RANK); MASTER_PORT (default 29500)
# Examples:
#   NPROC=2 launchers/deepspeed.sh finetune --config configs/finetune/zero2.yaml parallel.zero_stage=3
#   HOSTFILE=launchers/hostfile.example launchers/deepspeed.sh finetune --config configs/finetune/zero2.yaml
#   HOSTFILE=H NODE_RANK=0 MASTER_ADDR=10.0.0.1 launchers/deepspeed.sh finetune --config ...   # on node 0
#   HOSTFILE=H NODE_RANK=1 MASTER_ADDR=10.0.0.1 launchers/deepspeed.sh finetune --config ...   # on node 1
set -euo pipefail
source "$(dirname "$0")/common.sh"
# --no_local_rank: ranks read $LOCAL_RANK; a --local_rank=N word would break the CLI's parsing.
args=(--no_local_rank --master_port "${MASTER_PORT:-29500}")
if [[ -n "${HOSTFILE:-}" ]]; then
  args+=(--hostfile "$HOSTFILE")
else
  args+=(--num_gpus "${NPROC:-1}")
fi
if [[ -n "${NODE_RANK:-}" ]]; then
  : "${HOSTFILE:?the per-node mode (NODE_RANK) needs HOSTFILE}"
  args+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:?set MASTER_ADDR to node 0 address}")
elif [[ -n "${MASTER_ADDR:-}" ]]; then
  args+=(--master_addr "$MASTER_ADDR")
fi
if [[ $is_script == 1 ]]; then
  exec deepspeed "${args[@]}" "$@"
fi
exec deepspeed "${args[@]}" --module dist_forget.cli "$@"
