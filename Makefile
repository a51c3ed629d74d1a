# detlit developer and user commands. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.detlit-installed
SAMPLE := data/sample

.PHONY: install demo sample test test-fast lint format bench bench-gpu clean

install: $(STAMP)

# Idempotent: re-runs only when the files that decide the environment change.
$(STAMP): setup.cfg pyproject.toml constraints.txt tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PY) tools/install_detectron2.py --constraints constraints.txt
	touch $@

$(SAMPLE)/train.json: | $(STAMP)
	$(PY) -m detlit.sample $(SAMPLE)

sample: $(SAMPLE)/train.json

demo: install sample
	$(PY) -m detlit.fit --config configs/sample_cpu.yaml

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check detlit tests tools
	$(PY) -m ruff format --check detlit tests tools
	$(PY) -m mypy

format: install
	$(PY) -m ruff format detlit tests tools
	$(PY) -m ruff check --fix detlit tests tools

# detlit against detectron2 and pycocotools on this machine's CPU (about 10 minutes on 2 cores);
# rewrites its section of BENCHMARKS.md.
bench: install
	$(PY) tools/bench.py

# The same on a CUDA GPU (R50-FPN, 800 pixels, mixed precision; a few minutes).
bench-gpu: install
	$(PY) tools/bench.py --gpu

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
