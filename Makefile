# kuberlhf: `make demo` runs the built-in RLHF demo locally; `make test` runs the test suite.
# Both set everything up on a fresh machine (a .venv with pinned versions).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kuberlhf-installed
CONSTRAINTS := requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install demo test test-unit test-integration lint bench clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv (if absent) and install kuberlhf with pinned dependencies

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip>=24"
	# torch first and pinned: an unpinned torch would pull a newer CUDA build on CPU machines
	$(BIN)/pip install -q -c $(CONSTRAINTS) torch
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[all,dev]"
	# deepspeed builds from source against the installed torch (no build isolation, no CUDA ops)
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -c $(CONSTRAINTS) deepspeed
	touch $(STAMP)

demo: install ## run the built-in demo locally: SFT, reward model, PPO (outputs/demo/)
	$(BIN)/kuberlhf sft --config configs/sft/demo.yaml overwrite=true training.disable_tqdm=true
	$(BIN)/kuberlhf reward --config configs/reward/demo.yaml overwrite=true training.disable_tqdm=true
	$(BIN)/kuberlhf ppo --config configs/ppo/demo.yaml overwrite=true
	@echo "gold-judge scores on held-out prompts (SFT policy -> PPO policy), from outputs/demo/ppo/metrics.json:"
	@$(BIN)/python -c "import json; m = json.load(open('outputs/demo/ppo/metrics.json')); \
	print(f\"  SFT {m['gold_score_before']:.3f} -> PPO {m['gold_score_after']:.3f} (KL {m['kl']:.2f})\")"

test: install ## run every test (unit + integration; S3 server started by the suite)
	$(BIN)/python -m pytest tests -q

test-unit: install ## unit tests only (seconds)
	$(BIN)/python -m pytest tests/unit -q

test-integration: install ## integration tests only (tiny models, real processes, real S3 server)
	$(BIN)/python -m pytest tests/integration -q

lint: install ## ruff
	$(BIN)/ruff check src tests bench

bench: install ## throughput benchmarks; results go to docs/benchmarks.md by hand
	$(BIN)/python bench/sft_throughput.py --repeats 3

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
