# flwr-byz developer commands. Everything runs inside .venv, created on first use.
# torch==2.13.0 is installed first (a CPU wheel is available locally); the project's own
# requirement stays torch>=2.4, which that install already satisfies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TEST_JOBS ?= 2
# the tests' compiled (and assertion-rewritten) modules are cached in __pycache__ even where
# the environment sets PYTHONDONTWRITEBYTECODE: each run then skips ~5 s of compiling
PYTEST := PYTHONDONTWRITEBYTECODE= $(PY) -m pytest
BENCH_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast bench bench-engines results lint wheel clean

help:
	@echo "make install    create .venv (torch==2.13.0 first) and install flwr-byz[dev]"
	@echo "make demo       install, then run the flagship experiment -> results/demo/ (JSON + PNG)"
	@echo "make test       install, then run the test suite"
	@echo "make test-fast  same, skipping tests marked slow/deployment"
	@echo "make bench      install (+ ByzFL --no-deps), run benchmarks/aggregators.py -> benchmarks/results/"
	@echo "make bench-engines  install, run benchmarks/engines.py (engines vs a plain loop, ~30-60 min)"
	@echo "make results    install, then regenerate docs/RESULTS.md and its figures (~66 min)"
	@echo "make lint       ruff + mypy"
	@echo "make wheel      install, then build the sdist and, from it, the wheel -> dist/ (offline)"

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/flwr-byz demo

# Three passes: the in-process tests on TEST_JOBS pytest-xdist workers; the "serial" ones
# (they start Flower runtimes, Ray, pools: several cores each) one at a time; then the
# deployment tests two at a time (they mostly wait on Flower's polls and
# heartbeats; each deployment listens on ports of its own). Exit code 5 ("no tests
# collected", e.g. PYTEST_ARGS naming one file) is not a failure.
test: $(STAMP)
	$(PYTEST) -n $(TEST_JOBS) -m "not serial" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTEST) -p no:xdist -m "serial and not deployment" $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PYTEST) -n 2 -m deployment $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-fast: $(STAMP)
	$(PYTEST) -n $(TEST_JOBS) -m "not slow and not deployment" $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PIP) install --quiet --no-deps byzfl==0.0.11
	$(PY) benchmarks/aggregators.py

bench-engines: $(STAMP)
	$(PY) benchmarks/engines.py $(BENCH_ARGS)

results: $(STAMP)
	$(VENV)/bin/flwr-byz reproduce all

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy flwr_byz

# No build isolation: setuptools and build come from .venv (the dev extra), nothing is
# downloaded. The wheel is built from the sdist, so the sdist is known to be complete.
wheel: $(STAMP)
	rm -f dist/flwr_byz-*
	$(PY) -m build --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
