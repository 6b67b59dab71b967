# Two commands do all the set-up on a fresh machine: `make run` and `make test` (both create .venv/ first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
TABLE ?=
MODE ?= quick
DATA ?= ../shared/data
# Measured (experiments/bench_speed.py, RESULTS.md): glibc returns DIP's large activations to the kernel every
# step unless told to keep them; these tunables keep them, faster on CPU, same results.
export GLIBC_TUNABLES ?= glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295

.PHONY: help install install-physics run test test-slurm test-physics test-hydra-range format test-all bench bench-speed bench-gpu gpu-wheels gpu-check reproduce clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' \
		'{ name[NR] = $$1; text[NR] = $$2; if (length($$1) > w) w = length($$1) } \
		END { for (i = 1; i <= NR; i++) printf "  make %-" w "s  %s\n", name[i], text[i] }'

# torch first (.ci/install_torch.py): an importable torch in pyproject.toml's range already in .venv/ (a CUDA build)
# is kept; else, without a GPU, the CPU build that constraints-cpu.txt pins (from pip's own indexes and find-links
# where they hold one, as on this project's machines, else the PyTorch CPU index); with a GPU, the default index's
# CUDA build. TORCH_BUILD=cpu|cuda chooses. The package is then installed with that torch pinned (.venv/torch-pin.txt).
TORCH_BUILD ?= auto
$(STAMP): pyproject.toml constraints-cpu.txt .ci/install_torch.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python .ci/install_torch.py $(TORCH_BUILD) $(VENV)/torch-pin.txt
	$(BIN)/python -m pip install -q -c $(VENV)/torch-pin.txt -e '.[dev,baselines]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv/ and install the package with its dev tools; TORCH_BUILD=auto|cpu|cuda (docs/development.md)

run: $(STAMP)  ## denoise the built-in example (astronaut, sigma=25) on this machine; ARGS='key=value ...'
	$(BIN)/dip-run $(ARGS)

# task=physics needs deepinv, which imports torchvision: PyPI's torchvision does not import beside the CPU torch
# 2.13.0 of .venv/, so its tests run in a second environment with the pair torch 2.14.1 + torchvision 0.29.1 (a CUDA
# build that runs on the CPU; pip takes both from this project's machines' disk). Measured (2-core CPU): 2.4 min to
# build, 6.1 GB; make test builds it while the main suite runs (docs/physics.md).
PHYSICS_VENV := .venv-physics
PHYSICS_STAMP := $(PHYSICS_VENV)/.installed
PHYSICS_TORCH ?= torch==2.14.1 torchvision==0.29.1
PHYSICS ?= 1
$(PHYSICS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(PHYSICS_VENV)
	$(PHYSICS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PHYSICS_VENV)/bin/python -m pip install -q $(PHYSICS_TORCH)
	printf '%s\n' $(PHYSICS_TORCH) > $(PHYSICS_VENV)/torch-pin.txt
	$(PHYSICS_VENV)/bin/python -m pip install -q -c $(PHYSICS_VENV)/torch-pin.txt -e '.[dev,deepinv]'
	touch $(PHYSICS_STAMP)

install-physics: $(PHYSICS_STAMP)  ## create .venv-physics/ (torch 2.14.1 + torchvision 0.29.1 + the deepinv extra) for task=physics

TEST_WORKERS ?= 2
# tests/slurm starts a single-node SLURM (Debian's slurm-wlm and munge, as root; .ci/run installs them; elsewhere
# they skip, saying why) and mostly waits on its scheduler: it runs in its own process beside the main suite
SLURM ?= 1
SLURM_LOG := .pytest-slurm.log
test: $(STAMP)  ## ruff, import-linter (the layers), the test suite on TEST_WORKERS processes with tests/slurm beside it, then tests/physics in .venv-physics (what CI runs; PHYSICS=0, SLURM=0: not)
	@set -e; \
	if [ "$(PHYSICS)" = 1 ]; then \
		echo "make test: building $(PHYSICS_VENV) for tests/physics in the background (log: $(PHYSICS_VENV).log)"; \
		$(MAKE) --no-print-directory install-physics > $(PHYSICS_VENV).log 2>&1 & physics=$$!; \
	fi; \
	echo "$(BIN)/ruff check src tests experiments"; $(BIN)/ruff check src tests experiments; \
	echo "$(BIN)/ruff format --check src tests experiments"; $(BIN)/ruff format --check src tests experiments; \
	echo "$(BIN)/lint-imports (the package's layers: pyproject.toml)"; $(BIN)/lint-imports --no-cache; \
	if [ "$(SLURM)" = 1 ]; then \
		echo "make test: tests/slurm on a single-node SLURM in the background (log: $(SLURM_LOG))"; \
		DIP_SLURM_TESTS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/slurm > $(SLURM_LOG) 2>&1 & slurm=$$!; \
	fi; \
	echo "$(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(ARGS)"; $(BIN)/python -m pytest -q -n $(TEST_WORKERS) $(ARGS); \
	if [ "$(SLURM)" = 1 ]; then \
		echo "make test: tests/slurm (single-node SLURM):"; \
		wait $$slurm && tail -n 3 $(SLURM_LOG) || { cat $(SLURM_LOG); echo "make test: tests/slurm failed (above)"; exit 1; }; \
	else echo "make test: SLURM=0, tests/slurm not run"; fi; \
	if [ "$(PHYSICS)" = 1 ]; then \
		wait $$physics || { cat $(PHYSICS_VENV).log; echo "make test: building $(PHYSICS_VENV) failed (above)"; exit 1; }; \
		echo "$(PHYSICS_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) tests/physics"; \
		$(PHYSICS_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) tests/physics; \
	else echo "make test: PHYSICS=0, tests/physics not run"; fi

test-slurm: $(STAMP)  ## tests/slurm alone: sweeps, preemption, requeue and cancellation on a single-node SLURM
	DIP_SLURM_TESTS=1 $(BIN)/python -m pytest -q tests/slurm $(ARGS)

test-physics: $(PHYSICS_STAMP)  ## tests/physics alone, in .venv-physics
	$(PHYSICS_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) tests/physics $(ARGS)

test-hydra-range: $(STAMP)  ## the dip sweeper's tests with the oldest and newest hydra-core of its range (needs the registry)
	$(BIN)/python experiments/hydra_range.py $(ARGS)

format: $(STAMP)  ## fix import order and format the code as make test expects
	$(BIN)/ruff check --fix src tests experiments
	$(BIN)/ruff format src tests experiments

bench: $(STAMP)  ## framework overhead against a plain PyTorch loop (records experiments/RESULTS.md)
	$(BIN)/python experiments/bench_overhead.py $(ARGS)

bench-speed: $(STAMP)  ## it/s and memory of skip128x5: framework vs plain loop, channels_last, allocator, threads
	$(BIN)/python experiments/bench_speed.py $(ARGS)

bench-gpu: $(STAMP)  ## GPU speed options: precision, channels_last, cudnn.benchmark, compile (records experiments/RESULTS.md)
	$(BIN)/python experiments/bench_gpu.py $(ARGS)

gpu-wheels: $(STAMP)  ## here: the wheels (.whl/) and images (.gpu_data/) that gpu-check needs on an offline GPU machine
	bash experiments/gpu_wheels.sh

gpu-check:  ## on a GPU machine: GPU tests, speed table, paper tables, compile, in ARGS='--budget 480' seconds
	bash experiments/gpu_check.sh $(ARGS)

reproduce: $(STAMP)  ## one paper table: TABLE=denoise9|sr_set5_x4|sr_set14_x4|sr_set5_x8|sr_set14_x8|inpaint11 MODE=quick|full [DATA=../shared/data]
	@test -n "$(TABLE)" || { echo "error: TABLE is not set; expected TABLE=denoise9|sr_set5_x4|sr_set14_x4|sr_set5_x8|sr_set14_x8|inpaint11 (MODE=quick|full)"; exit 2; }
	$(BIN)/python experiments/paper/reproduce.py --table $(TABLE) --mode $(MODE) --data $(DATA) $(ARGS)

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun
