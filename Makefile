# detlit developer and user commands. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.detlit-installed
SAMPLE := data/sample

.PHONY: install demo sample test test-fast lint format bench bench-gpu bench-learning clean

install: $(STAMP)

# Idempotent: re-runs only when the files that decide the environment change.
$(STAMP): setup.cfg pyproject.toml constraints.txt tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c constraints.txt -e ".[dev,mlflow,openvino]"
	# SAHI, the tests' oracle for sliced inference, without the opencv-python it pins (a second
	# OpenCV whose cv2 files would overwrite the headless one detlit uses): docs/small-objects.md.
	$(PIP) install -c constraints.txt --no-deps sahi==0.12.8
	# tidecv, the tests' oracle for the error breakdown, without its opencv-python likewise.
	$(PIP) install -c constraints.txt --no-deps tidecv==1.0.1
	$(PY) tools/install_detectron2.py --constraints constraints.txt
	touch $@

$(SAMPLE)/train.json: | $(STAMP)
	$(PY) -m detlit.sample $(SAMPLE)

sample: $(SAMPLE)/train.json

# Trains on the sample data (on a GPU when there is one), evaluates the last checkpoint on the
# validation images and writes the run's report; the last lines printed name the checkpoint, the
# metrics and the report.
demo: install sample
	$(PY) -m detlit.fit --config configs/sample_cpu.yaml
	run=$$(ls -d runs/sample/version_* | sort -t_ -k2 -n | tail -n 1); \
	$(PY) -m detlit.evaluate --ckpt $$run/checkpoints/last.ckpt --json $(SAMPLE)/val.json \
		--images $(SAMPLE)/val --out $$run/eval --overwrite && \
	$(PY) -m detlit.report --run $$run --eval $$run/eval

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

# detlit against detectron2 and pycocotools on this machine's CPU (at most about 20 minutes);
# rewrites its section of BENCHMARKS.md.
bench: install
	$(PY) tools/bench.py

# The same on a CUDA GPU (R50-FPN, 800 pixels, mixed precision; a few minutes).
bench-gpu: install
	$(PY) tools/bench.py --gpu

# detlit's training against detectron2's own training loop, the same model, weights, solver
# settings and seeds, scored by pycocotools (about 45 minutes on 2 quiet CPU cores; run it again to
# continue where it stopped); rewrites its section of BENCHMARKS.md.
bench-learning: install
	$(PY) tools/bench_learning.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
