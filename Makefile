# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv when missing).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Ahead-of-time TPU compilation needs libtpu, which must stay out of .venv (with it, JAX looks for a TPU first).
# .venv-tpu holds libtpu alone and reads everything else from .venv's site-packages through a .pth file.
TPU_VENV := .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed
# The libtpu that jax[tpu] pins for the jax in requirements.txt.
LIBTPU := libtpu==0.0.42.1

# Tests run in worker processes, one per core up to four, each taking whole test files (module fixtures train once),
# with loopback as their only network where the machine allows (tests/offline.sh).
PYTEST := tests/offline.sh $(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

.PHONY: setup setup-tpu demo test test-unit test-all lint clean

$(STAMP): requirements.txt requirements-runtime.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

$(TPU_STAMP): $(STAMP)
	test -x $(TPU_VENV)/bin/python || $$($(PY) -c "import sys; print(sys._base_executable)") -m venv $(TPU_VENV)
	$(PY) -c "import site; print(f'import site; site.addsitedir({site.getsitepackages()[0]!r})')" \
		> "$$($(TPU_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/ela_jax_main_venv.pth"
	$(TPU_VENV)/bin/python -m pip install --quiet --no-deps $(LIBTPU)
	touch $(TPU_STAMP)

setup-tpu: $(TPU_STAMP)

demo: setup
	$(PY) -m ela_jax.demo --workdir runs/demo

test: setup setup-tpu
	$(PYTEST) tests

# The fast inner loop: everything `make test` runs except the `integration` tests (they train, compile whole models or
# train steps, spawn processes or convert checkpoints).
test-unit: setup
	$(PYTEST) -m "not slow and not integration" tests

# Also the checks marked slow (each has a faster twin in the default run).
test-all: setup setup-tpu
	$(PYTEST) -m "slow or not slow" tests

lint: setup
	$(PY) -m ruff format --check ela_jax configs tests benchmarks launch

clean:
	rm -rf $(VENV) $(TPU_VENV) runs .pytest_cache
