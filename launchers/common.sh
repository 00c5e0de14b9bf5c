# Sourced by the launchers: environment defaults and the command each rank runs. No logic of its own.
#   TARGET: a dist-forget command line without `dist-forget` (`finetune --config C key=value...`) or a
#   Python script (`x.py args`).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Use the project's virtualenv when there is one (a cluster may provide its own environment instead).
if [[ -x "$root/.venv/bin/python" ]]; then export PATH="$root/.venv/bin:$PATH"; fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU: DeepSpeed's CPU accelerator (gloo) and one thread per rank; ranks sharing cores with several
  # threads each run about 4x slower.
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
export TOKENIZERS_PARALLELISM=false MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# SIGUSR1 asks the ranks to save and stop (preempt.signals; SLURM's warning ahead of the time limit, passed
# to every process of the step): the launcher itself must outlive it (torchrun's agent and DeepSpeed's
# launcher would die of it and leave their ranks to be killed mid-save). Ignored here, it stays ignored
# through exec; the ranks install their own handler.
trap '' USR1
if [[ $# -eq 0 ]]; then
  echo "usage: $0 COMMAND [ARGS...]   (a dist-forget command line such as 'finetune --config C', or a .py script)" >&2
  exit 2
fi
if [[ "$1" == *.py ]]; then is_script=1; else is_script=0; fi
