# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit test-all lint clean

$(STAMP): requirements.txt requirements-runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m ela_jax.demo --workdir runs/demo

test: setup
	$(PY) -m pytest -q tests

# The fast inner loop: everything `make test` runs except tests that train, spawn processes or convert real checkpoints.
test-unit: setup
	$(PY) -m pytest -q -m "not slow and not integration" tests

# Also the checks marked slow (each has a faster twin in the default run).
test-all: setup
	$(PY) -m pytest -q -m "slow or not slow" tests

lint: setup
	$(PY) -m ruff format --check ela_jax configs tests benchmarks launch

clean:
	rm -rf $(VENV) runs .pytest_cache
