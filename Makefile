# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv at the repository root when missing and install everything into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP_STAMP := $(VENV)/.setup-stamp
BENCH_STAMP := $(VENV)/.bench-stamp
APT_BENCH := pkg-config libturbojpeg0-dev libopencv-dev

FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup setup-bench data demo test test-all gpu-check clean

setup: $(SETUP_STAMP)

# Re-runs only when setup.py changes; torch is pinned in the same pip command as the rest so a
# CUDA build is never pulled in as someone's dependency.
$(SETUP_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test]"
	touch $@

# Optional: FFCV for .beton export and side-by-side benchmarks. Needs Debian build packages.
setup-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(SETUP_STAMP)
	@if ! dpkg -s $(APT_BENCH) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_BENCH) >/dev/null; \
	  else echo "setup-bench: needs Debian packages: sudo apt-get install $(APT_BENCH)"; exit 1; fi; fi
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==2.13.0" -e ".[test,bench]"
	touch $@

# Real data for the learning tests (tests/test_learning.py): Debian's dataset-fashion-mnist, installed
# when run as root; without it those tests skip, naming the package.
data:
	@if [ ! -f $(FASHION) ]; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "data: dataset-fashion-mnist could not be installed; the learning tests will skip"; \
	  else echo "data: for the learning tests: sudo apt-get install dataset-fashion-mnist"; fi; fi

demo: setup
	$(PY) tools/demo.py

test: setup data
	$(PY) -m pytest -q tests

# The GPU acceptance run (tools/gpu_check.py): one JSON and one log under bench_out/gpu_check;
# without CUDA it collects the GPU tests, says so in one line and exits 0.
gpu-check: setup
	$(PY) tools/gpu_check.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
