# adbench — `make help` lists the targets.
PY      ?= .venv/bin/python
PIP     ?= .venv/bin/pip
SHARED  ?= ../shared
# use the shared weights cache beside the repo when there is one (and TORCH_HOME is not set)
ifneq ($(wildcard $(SHARED)/torch_home),)
export TORCH_HOME ?= $(abspath $(SHARED)/torch_home)
endif
PRESET  ?= paper
DATA    ?= datasets/mvtec_ad
RESULTS ?= results
PEER_VENV ?= /tmp/anomalib-venv

.DEFAULT_GOAL := help
.PHONY: help setup demo test test-slow test-slurm gpu-check bench peer-venv table1 report clean

help: ## show this help
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

setup: ## create .venv and install adbench with its test dependencies
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'

demo: ## PatchCore (preset=cpu) on the generated synthetic dataset
	$(PY) -m adbench experiment=demo

test: ## the test suite (what CI runs), slow tests excluded
	$(PY) -m pytest -q

test-slow: ## only the slow tests (minutes of training each)
	$(PY) -m pytest -q -m slow

test-slurm: ## start a one-node SLURM cluster here (root; scripts/slurm_local.sh), run the slurm tests, stop it
	scripts/slurm_local.sh start
	SLURM_CONF=$${SLURM_LOCAL_DIR:-$${TMPDIR:-/tmp}/adbench-slurm}/slurm.conf $(PY) -m pytest -q -m slurm -s; \
		rc=$$?; scripts/slurm_local.sh stop; exit $$rc

gpu-check: ## GPU readiness check, < 8 min on one CUDA GPU: JSON + timing table in OUT (default results/gpu_check; DEVICE=cpu: tiny CPU mode; WHEELS=DIR: missing deps)
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) DEVICE=$(DEVICE) WHEELS=$(WHEELS) STEPS=$(STEPS) \
		DATA=$(if $(wildcard $(SHARED)/data/mvtec_ad),$(SHARED)/data/mvtec_ad,$(DATA)) \
		scripts/gpu_check.sh $(or $(OUT),results/gpu_check)

bench: ## performance benchmark of PatchCore (prints a table, writes results/bench.json; PEER=anomalib SIZES=200,1000,3000)
	$(PY) -m adbench.bench --data $(if $(wildcard $(SHARED)/data/mvtec_ad),$(SHARED)/data/mvtec_ad,$(DATA)) \
		$(if $(SIZES),--sizes "$(SIZES)") $(if $(PEER),--peer $(PEER) --peer-python $(or $(PEER_PYTHON),$(PEER_VENV)/bin/python)) $(BENCH_ARGS)

peer-venv: ## throwaway venv with anomalib 2.7.0 for `make bench PEER=anomalib` (never an adbench dependency; PEER_VENV=DIR)
	test -x $(PEER_VENV)/bin/python || python3 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q anomalib==2.7.0

table1: ## run the paper-table sweeps, write RESULTS/table1.{md,csv} and report.html (PRESET=paper|cpu DATA=DIR RESULTS=DIR SEEDS=0,bottle=0,1,2 SEED_METHODS=a,b)
	$(PY) -m adbench.table1 --preset $(PRESET) --data $(DATA) --results $(RESULTS) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(SEED_METHODS),--seed-methods $(SEED_METHODS))

report: ## rebuild RESULTS/report.html from the runs under RESULTS (PRESET=...: that preset's runs)
	$(PY) -m adbench.report --results $(RESULTS) $(if $(filter command line environment,$(origin PRESET)),--preset $(PRESET))

clean: ## remove Hydra outputs and caches
	rm -rf outputs multirun .pytest_cache
