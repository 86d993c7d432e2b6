# The two commands a newcomer runs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-quick bench-gpu bench-peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxcurv demo --out runs/demo --overwrite

# The suite is mostly compiling small programs: with XLA's LLVM optimizations off they
# compile ~30% faster and still compute the same things (codegen only; every tolerance
# comes from an error bound, not from one build's rounding). Benchmarks never use this.
TEST_XLA := --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true

test: $(STAMP)
	$(VENV)/bin/ruff check jaxcurv tests benchmarks
	XLA_FLAGS="$(TEST_XLA)" $(PY) -m pytest -q -n 2 -m "not multidevice" --durations=15
	XLA_FLAGS="$(TEST_XLA)" $(PY) -m pytest -q -n 2 --doctest-modules jaxcurv
	XLA_FLAGS="--xla_force_host_platform_device_count=8 $(TEST_XLA)" \
	  $(PY) -m pytest -q -n 2 --dist loadfile -m multidevice --durations=5

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxcurv tests benchmarks
	$(VENV)/bin/ruff format --check jaxcurv tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

# The suite on an NVIDIA GPU: JAX's CUDA plugin for the installed jax, then the same run
# (results in benchmarks/results/gpu/, BENCHMARKS.md with cpu and gpu side by side).
# JAX_PLATFORMS=cuda stops at once if no GPU is seen (no CPU results are overwritten).
# `make bench-gpu BENCH_ARGS=--quick` for a short run; `JAX_CUDA=cuda13` for CUDA 13.
JAX_CUDA ?= cuda12
bench-gpu: $(STAMP)
	$(PY) -m pip install -q "jax[$(JAX_CUDA)]==$$($(PY) -c 'import jax; print(jax.__version__)')"
	JAX_PLATFORMS=cuda $(PY) -m benchmarks.run $(BENCH_ARGS)

# Every peer library (PyTorch, curvlinops, PyHessian, kfac-jax, optimistix) in a venv of
# its own, so the test venv never carries a several-GB torch; then the suite with them.
PEERS_VENV ?= .venv-peers
$(PEERS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -e '.[peers]'
	touch $@

bench-peers: $(PEERS_VENV)/.installed
	$(PEERS_VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) runs .pytest_cache
