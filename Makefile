# Two commands do all the set-up on a fresh machine: `make run` and `make test` (both create .venv/ first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: help install run test test-all bench reproduce clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv/ and install the package with its dev tools

run: $(STAMP)  ## denoise the built-in example (astronaut, sigma=25) on this machine; ARGS='key=value ...'
	$(BIN)/dip-run $(ARGS)

test: $(STAMP)  ## the test suite (what CI runs)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)  ## framework overhead against a plain PyTorch loop (records experiments/RESULTS.md)
	$(BIN)/python experiments/bench_overhead.py $(ARGS)

clean:  ## remove run outputs (not the venv)
	rm -rf outputs multirun
