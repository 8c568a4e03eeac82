# kuberlhf: `make demo` runs the built-in RLHF demo locally; `make test` runs the test suite.
# Both set everything up on a fresh machine (a .venv with pinned versions).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kuberlhf-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install lock label-studio-install mlflow-server-install label-studio browser-install demo compile test test-unit test-integration faults lint bench bench-gpu clean helm-lint manifests-check chart-sync images images-base images-smoke cluster-build cluster-up cluster-down e2e images-push images-pin images-lock images-check

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv (if absent) and install exactly requirements/venv.lock (every package pinned and hashed)

# every environment installs from a complete hash-locked lock (requirements/locks.py sync): the
# packages the lock lists at its versions and nothing else, checked with pip check afterwards
$(STAMP): pyproject.toml requirements/venv.lock requirements/venv-nodeps.lock requirements/locks.py
	$(PYTHON) requirements/locks.py sync $(VENV) venv
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

lock: ## re-resolve every lock (requirements/*.lock, constraints.txt, images/*/*.lock); UPGRADE=1 takes the newest versions
	$(BIN)/python requirements/locks.py lock $(if $(UPGRADE),--upgrade)
	$(BIN)/python images/build.py lock

# Label Studio in a virtualenv of its own (it pins Django and pydantic versions of its own)
LS_VENV := .venv-label-studio
LS_STAMP := $(LS_VENV)/.kuberlhf-installed

label-studio-install: $(LS_STAMP) ## install Label Studio into .venv-label-studio from requirements/label-studio.lock

$(LS_STAMP): requirements/label-studio.lock requirements/locks.py
	$(PYTHON) requirements/locks.py sync $(LS_VENV) label-studio
	touch $(LS_STAMP)

# The MLflow tracking server the suite logs to, in a virtualenv of its own: the full mlflow (Flask, SQLAlchemy,
# pandas, scikit-learn); the stages need only its client, mlflow-skinny, which .venv and the images have
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.kuberlhf-installed

mlflow-server-install: $(MLFLOW_STAMP) ## install the MLflow tracking server into .venv-mlflow from requirements/mlflow-server.lock

$(MLFLOW_STAMP): requirements/mlflow-server.lock requirements/locks.py
	$(PYTHON) requirements/locks.py sync $(MLFLOW_VENV) mlflow-server
	touch $(MLFLOW_STAMP)

browser-install: ## Debian chromium + chromium-driver for the labeling-page test (apt; skipped in the suite without them)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" != 0 ] && command -v sudo ); \
	  $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null 2>&1 && \
	    $$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1; } || \
	  echo "warning: chromium could not be installed; the labeling-page browser test will be skipped"; }

label-studio: install label-studio-install ## start Label Studio on 127.0.0.1:8080 for a labeling round (Ctrl+C stops it)
	$(BIN)/python tests/labelstudio_server.py --port 8080

demo: install ## run the rlhf-ppo pipeline locally on the built-in task (kfp.local): SFT, merge, reward, PPO, report
	$(BIN)/kuberlhf pipeline run --local --pipeline rlhf-ppo

compile: install ## compile the Kubeflow pipelines to outputs/pipelines/*.yaml (upload them in the Kubeflow UI)
	$(BIN)/kuberlhf pipeline compile --pipeline all --out outputs/pipelines

test: install label-studio-install mlflow-server-install browser-install ## run every test (unit + integration; S3 server, Label Studio and MLflow started by the suite)
	$(BIN)/python -m pytest tests -q -m "not faults" --durations=20

test-unit: install ## unit tests only (seconds)
	$(BIN)/python -m pytest tests/unit -q

test-integration: install label-studio-install mlflow-server-install ## integration tests only (tiny models, real processes, real S3 and MLflow servers)
	$(BIN)/python -m pytest tests/integration -q

faults: install ## fault trials: 30 kill -9 runs and 24 SIGTERMs over the stages, 10 object-store outages, 12 corruptions (docs/reliability.md), and the suite's slow kill-and-resume tests
	$(BIN)/python tests/faults.py --kills 30 --sigterms 24 --outages 10 --seed 0
	$(BIN)/python -m pytest tests -q -m faults

lint: install ## ruff, and the import layers of docs/architecture.md (import-linter)
	$(BIN)/ruff check src tests bench images requirements cluster
	$(BIN)/lint-imports

helm-lint: install ## Helm chart: lint --strict, render each ci/*-values.yaml, validate objects, bad values refused
	$(BIN)/python tests/deploy_check.py helm-lint

manifests-check: install ## kustomize manifests: build each overlay, validate objects, in sync with the chart
	$(BIN)/python tests/deploy_check.py manifests-check

chart-sync: install ## copy configs/, the chart's cluster.yaml and Trainer runtimes into manifests/ (after changing either)
	$(BIN)/python tests/deploy_check.py sync

images: install ## build the images, torch first (docker, podman or buildah; IMAGES_BASE=local/debian:bookworm builds on the local base)
	$(BIN)/python images/build.py build

images-base: install ## make local/debian:bookworm with debootstrap where no registry is reachable (installs docker.io, debootstrap; starts and stops dockerd)
	$(BIN)/python images/engine.py base

images-smoke: install ## build every image on the local base (cached) and run each stage's demo in its own image against the test S3 server
	$(BIN)/python images/smoke.py

images-push: install ## push the built images to KUBERLHF_IMAGE_REGISTRY (default ghcr.io/kuberlhf); log in first
	$(BIN)/python images/build.py push

images-pin: install ## pin the images' CUDA base to its digest (skopeo, crane, docker buildx or podman; or DIGEST=sha256:...)
	$(BIN)/python images/build.py pin

images-lock: install ## re-resolve images/*/requirements.lock and source.lock (uv; linux x86_64, the images' Python)
	$(BIN)/python images/build.py lock

images-check: install ## Dockerfiles pass hadolint; locks hashed, agree with pyproject, resolve on the registry
	$(BIN)/python images/check.py

cluster-build: install ## build the test cluster's parts from their Go modules (Kubernetes 1.36.3, etcd, containerd, runc, CNI, CoreDNS, helm, the Kubeflow operators); cached by version
	$(BIN)/python cluster/parts.py

cluster-up: cluster-build ## a one-node Kubernetes on this machine (root): control plane, containerd, kubelet, kube-proxy; KUBECONFIG=.cache/cluster/run/kubeconfig
	$(BIN)/python cluster/cluster.py up

e2e: cluster-build ## tests/e2e on the test cluster (root): up if not up (down afterwards), the stage images loaded; the training stages as real PyTorchJobs and TrainJobs
	$(BIN)/python cluster/e2e.py

cluster-down: ## stop what cluster-up started; leaves no process, mount, bridge or route of it
	$(BIN)/python cluster/cluster.py down

bench: install ## throughput benchmarks; results go to docs/benchmarks.md by hand
	$(BIN)/python bench/sft_throughput.py --repeats 3
	nice -n 10 $(BIN)/python bench/ppo_memory.py
	nice -n 10 $(BIN)/python bench/storage.py
	nice -n 10 $(BIN)/python bench/data_scale.py

bench-gpu: install ## one-GPU benchmark of real shapes (SFT MFU, reward model, PPO), about 5 minutes
	$(BIN)/python bench/gpu.py

clean: ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
