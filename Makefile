# tickguard — one entry point for building, testing and benchmarking.
# `make test` works on a fresh machine: it installs system packages, the venv and the servers first.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TICKGUARD_CACHE ?= $(HOME)/.cache/tickguard
export TICKGUARD_CACHE

.PHONY: help sysdeps venv tick k8s data lint format proto test test-fast train train-fast bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

sysdeps: ## Debian packages the suite needs (skipped when already present)
	@bash scripts/install-sysdeps.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## the Python venv with tickguard and its dev tools

tick: ## build kapacitord/kapacitor 1.7.6 and influxd/influx 1.8.10 into .tick/bin (cached)
	@bash scripts/build-tick.sh

k8s: tick ## build helm and the strict Kubernetes manifest validator into .k8s/bin (cached; needs Go: after tick)
	@bash scripts/build-k8s-tools.sh

data: venv ## fetch the bundled detectors' data sets (fraud, shuttle, waterflow) and the unsupervised benchmark's series into data/raw (hash-verified)
	$(VENV)/bin/tickguard data fetch --detector fraud
	$(VENV)/bin/tickguard data fetch --detector shuttle
	$(VENV)/bin/tickguard data fetch --detector waterflow
	$(VENV)/bin/python -c "from tickguard.data.series import load_series; [load_series(n) for n in ('sp500', 'airline')]"

proto: venv ## regenerate the protocol bindings: the UDF's (udf/udf.proto) and gRPC inference's (src/tickguard/proto)
	$(PY) -m grpc_tools.protoc -Iudf --python_out=src/tickguard/agent --pyi_out=src/tickguard/agent udf/udf.proto
	$(PY) -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src src/tickguard/proto/grpc_predict_v2.proto src/tickguard/proto/triton_extensions.proto

lint: venv ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv ## apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: sysdeps venv tick k8s data lint ## the whole suite, from scratch if need be
	$(VENV)/bin/pytest

train-fast: venv data ## quick model (small sample, few trials) into models/fraud/_scratch
	$(VENV)/bin/tickguard train --fast

train: venv data ## full training with Optuna tuning; writes models/fraud/<version>
	$(VENV)/bin/tickguard train

bench: venv tick data ## end-to-end, UDF, API, model and Locust benchmarks; results in benchmarks/results/
	$(PIP) install --quiet -e '.[dev,bench]'
	$(PY) -m benchmarks.run_all

clean: ## remove the venv and caches inside the repo (the server cache in ~/.cache stays)
	rm -rf $(VENV) .tick .k8s .pytest_cache .ruff_cache .hypothesis
