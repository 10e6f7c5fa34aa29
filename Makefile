# fashion-mnist-mlops: `make repro` runs the pipeline from a fresh clone, `make test` tests it.
SHELL := /bin/bash
comma := ,
# The Python the venv is built with: the first of python3.11/3.12/3.13/python3 that runs a
# supported version (tools/pick-python); `make install PYTHON=/path/to/python` is used or refused.
PYTHON ?=
# TensorFlow build on Linux x86_64: cpu (tensorflow-cpu) or gpu (tensorflow[and-cuda], untested).
TF ?= cpu
# uv (the version in uv.lock) installs the lock; INSTALLER=pip installs the same pins with pip.
INSTALLER ?= uv
UV_VERSION := $(shell sed -n '/^name = "uv"$$/{n;s/^version = "\(.*\)"/\1/p;}' uv.lock)
EXTRAS := $(TF) dev s3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The system data folder, as the config group names it (the one place it is written).
DATA_DIR := $(shell sed -n 's/^system_dir: *//p' conf/data/fashion_mnist.yaml)
PORT ?= 5001
UI_PORT ?= 5000
# Workers of `make train-workers`.
N ?= 2
# The registered model to serve: models:/<registry.model_name>@<registry.alias> from conf/.
MODEL_URI = $(shell $(BIN)/python -c 'from fmnist_mlops.config.compose import champion_uri; print(champion_uri())')

.DEFAULT_GOAL := help
.PHONY: help python-check install data test-deps params check-params repro test test-fast test-integration lint format bench bench-recipes tune ui report screenshots server serve serve-stop rollback champion-history reproduce clean-runs clean train-workers

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-14s %s\n", $$1, $$2}'

python-check: # (order-only) the Python to install with, used or refused: one line and exit 2
	$(eval PICKED := $(shell tools/pick-python "$(PYTHON)" "$(VENV)"))
	$(if $(filter error:,$(firstword $(PICKED))),$(error install: $(wordlist 2,99,$(PICKED))))
	$(if $(filter cpu gpu,$(TF)),,$(error install: TF=$(TF); accepted: cpu, gpu))
	$(if $(filter pip uv,$(INSTALLER)),,$(error install: INSTALLER=$(INSTALLER); accepted: uv, pip))

# Bytecode is compiled once at install (pip does it by default, uv with UV_COMPILE_BYTECODE=1):
# where PYTHONDONTWRITEBYTECODE is set, every process otherwise compiled TensorFlow's ~1,800
# modules again (import keras: 12 s of CPU, 5 s compiled). UV_COMPILE_BYTECODE=0 skips it (~60 s
# of CPU) for a venv that runs a few commands and is thrown away.
UV_COMPILE_BYTECODE ?= 1
$(STAMP): pyproject.toml uv.lock | python-check
	@echo "install: $(INSTALLER) into $(VENV) with $$($(PICKED) -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	@test -x $(BIN)/python || $(PICKED) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
ifeq ($(INSTALLER),pip)
	$(BIN)/uv export -q --frozen --no-hashes --no-emit-project $(addprefix --extra ,$(EXTRAS)) -o $(VENV)/pins.txt
	$(BIN)/python -m pip install -q -c $(VENV)/pins.txt -e '.[$(subst $(eval ) ,$(comma),$(EXTRAS))]'
else
	UV_COMPILE_BYTECODE=$(UV_COMPILE_BYTECODE) $(BIN)/uv sync -q --frozen --inexact $(addprefix --extra ,$(EXTRAS))
endif
	@touch $@

install: $(STAMP) ## Create .venv and install the project with pinned versions

data: ## Make sure the raw IDX files can be found (installs dataset-fashion-mnist as root)
	@if [ ! -f $(DATA_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

test-deps: data ## Make sure nginx, PostgreSQL, Chromium and curl (used by tests) are installed (as root)
	@if { [ ! -x /usr/sbin/nginx ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
		|| [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/curl ]; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages nginx postgresql chromium chromium-driver curl"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx postgresql chromium chromium-driver curl; \
	fi

params: $(STAMP) ## Compose params.yaml from conf/ (what every DVC stage runs with)
	$(BIN)/python src/params.py

check-params: $(STAMP) ## Fail if params.yaml is not what conf/ composes
	$(BIN)/python src/params.py --check

repro: $(STAMP) data params ## Run the pipeline: prepare -> train -> evaluate (+ promotion)
	source $(BIN)/activate && dvc repro

# Two test processes: most tests wait on subprocesses, servers and stores, so two overlap well
# on two cores. What is costly to build is built once per run by tests/conftest.py's build_once
# and xdist_group marks keep a module's live server in one process (pytest <9.2, pyproject.toml).
PYTEST = PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test: $(STAMP) test-deps ## Run every test, all three tiers (what CI runs; ~16-25 min on 2 cores)
	$(PYTEST) --durations=25

test-fast: $(STAMP) data ## The fast tier: pure code and command contracts (~1 min; run it after every edit)
	$(PYTEST) -m "not integration and not slow"

test-integration: $(STAMP) test-deps ## The middle tier: smoke trainings, local servers and stores
	$(PYTEST) -m integration

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check src tests benchmarks deploy tools && $(BIN)/ruff format --check src tests benchmarks deploy tools

format: $(STAMP) ## ruff format + autofix
	$(BIN)/ruff format src tests benchmarks deploy tools && $(BIN)/ruff check --fix src tests benchmarks deploy tools

ui: $(STAMP) ## Browse runs and the registry at http://127.0.0.1:UI_PORT (default 5000)
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --workers 1 -h 127.0.0.1 -p $(UI_PORT)

bench: $(STAMP) data ## Training/pipeline benchmark vs the tutorial's recipe (~25 min): table + benchmarks/results/training.json
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/training.py

bench-recipes: $(STAMP) data ## +experiment=fast and best against their goals: 3 seeds of dvc exp run each, beside a default run (RECIPES="fast best", ~1.6 h; rerun continues a stopped one)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/recipes.py --recipes $(or $(RECIPES),fast best)

train-workers: $(STAMP) data ## One training over N local worker processes (N=2 ARGS="+experiment=smoke"); worker 0 tracks it
	$(BIN)/python src/train_workers.py -n $(N) -- $(ARGS)

tune: $(STAMP) data ## Optuna study (resumes; ARGS="tune.n_trials=20 tune.timeout_s=1800"), best trial -> promotion rule
	$(BIN)/python src/tune.py $(ARGS)

report: $(STAMP) ## Self-contained HTML report of @champion -> reports/champion.html
	$(BIN)/python src/report.py

screenshots: $(STAMP) test-deps ## Check the champion in the MLflow UI (headless Chromium) and save docs/ui-*.png
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python tools/ui_check.py

server: $(STAMP) ## Shared tracking server on 127.0.0.1:5000 (MLFLOW_BACKEND_STORE_URI=postgresql://..., else SQLite)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python src/server.py --port $${SERVER_PORT:-5000}

serve: $(STAMP) ## (Re)start serving models:/<registry.model_name>@<registry.alias> on 127.0.0.1:PORT (default 5001)
	@echo "mlflow models serve -m $(MODEL_URI) --env-manager local -h 127.0.0.1 -p $(PORT)"
	PATH=$(CURDIR)/$(BIN):$$PATH MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} \
		$(BIN)/python src/serve.py start --port $(PORT) -- \
		$(BIN)/mlflow models serve -m $(MODEL_URI) --env-manager local -h 127.0.0.1 -p $(PORT)

serve-stop: $(STAMP) ## Stop the model server `make serve` started on PORT (nothing else)
	@$(BIN)/python src/serve.py stop --port $(PORT)

rollback: $(STAMP) ## Undo @champion's last move (make champion-history shows them)
	$(BIN)/python src/rollback.py

# The registered version to rebuild: a number or an alias (default: reproduce.version, @champion).
VERSION ?=
reproduce: $(STAMP) data ## Rebuild a registered version (VERSION=N; default @champion) and compare: exact, close or differs
	$(BIN)/python src/reproduce.py $(if $(VERSION),reproduce.version=$(VERSION))

champion-history: $(STAMP) ## Every move of @champion: when, from, to, by which command, scores, why
	$(BIN)/python src/champion_history.py

clean-runs: $(STAMP) ## Collect deleted MLflow runs, stale backups, old DVC experiments and cache (keeps @champion)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python src/clean_runs.py

clean: $(STAMP) ## Remove this checkout's scratch folders of finished ad-hoc runs (live runs' stay; MLflow and DVC outputs are kept)
	rm -rf outputs multirun
	$(BIN)/python src/clean.py
