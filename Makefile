# Distillery: `make run` starts everything on this machine; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0
# On a GPU host: make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
TORCH_INDEX_URL ?=
DATA_DIR ?= data
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: install run test lint format example clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned, so that nothing below pulls a different (multi-GB) build.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)" \
		$(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: install
	$(VENV)/bin/distillery up --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

example: install
	$(PY) examples/digits/make_example.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Benchmarks (bench/): every figure a ratio measured side by side; rewrites BENCHMARKS.md.
# BENCH_ARGS=--quick for a smoke run, BENCH_ARGS="--only api,queue" for some sections.
BENCH_ARGS ?=
.PHONY: bench
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)

# The default-recipe measurement (issue 3): a longer run, kept out of `make bench`.
.PHONY: bench-recipes
bench-recipes: install
	$(PY) -m bench.recipes
	$(PY) -m bench.report

.PHONY: bench-hf-recipes
bench-hf-recipes: install
	$(PY) -m bench.hf_recipes
	$(PY) -m bench.report

# The recipe suite (issue 11): budget rule + recipe chosen on tuning tasks, checked on
# held-out ones (tensor tasks, then transformer tasks); then the kept-aside kind of task
# through the service, defaults only and a 900 s search. Rewrites BENCHMARKS.md's section.
.PHONY: bench-suite
bench-suite: install
	$(PY) -m bench.suite_hf --tuning-seeds 0 1
	$(PY) -m bench.suite_search
	$(PY) -m bench.suite
