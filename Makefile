# pad-lightning — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel on the reference machine; set TORCH_SPEC="torch" (or a CUDA index) on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: help setup run test lint bench bench-epoch bench-memory ui

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create the virtual environment (torch first) and install the package

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

run: setup ## Run the default PAD experiment (toy world, offline, CPU); extra overrides: ARGS="loss=vpd"
	$(OFFLINE) $(PY) -m pad_lightning.run $(ARGS)

test: setup ## Run the test suite (offline; slow end-to-end tests included)
	$(OFFLINE) $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: setup ## ruff check and format check
	$(VENV)/bin/ruff check src tests experiments
	$(VENV)/bin/ruff format --check src tests experiments

bench: setup ## Benchmarks: preference math, scoring, calibration, sampling (ratios vs references run alongside)
	$(OFFLINE) $(PY) experiments/bench_preference.py
	$(OFFLINE) $(PY) experiments/bench_ranking_precision.py
	$(OFFLINE) $(PY) experiments/bench_scoring.py
	$(OFFLINE) $(PY) experiments/bench_calibration.py
	$(OFFLINE) $(PY) experiments/bench_sampling.py

bench-epoch: setup ## Epoch time of the default run: this tree vs REF (default c719095), n=4 vs n=8
	$(OFFLINE) $(PY) experiments/bench_epoch.py $(if $(REF),--ref $(REF),)

bench-memory: setup ## Memory over 60 calibrated epochs: PyTorch's kernel caches vs the run's bound
	$(OFFLINE) $(PY) experiments/bench_memory.py

ui: setup ## Open the MLflow UI on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
