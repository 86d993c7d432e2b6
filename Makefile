# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxcurv demo --out runs/demo --overwrite

test: $(STAMP)
	$(VENV)/bin/ruff check jaxcurv tests benchmarks
	$(PY) -m pytest -q -n 2 -m "not multidevice" --durations=15
	$(PY) -m pytest -q --doctest-modules jaxcurv
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PY) -m pytest -q -m multidevice

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxcurv tests benchmarks
	$(VENV)/bin/ruff format --check jaxcurv tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
