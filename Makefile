# `make test` and `make demo` work on a fresh clone: they create .venv and install the package
# with its dev extras under constraints.txt (which pins the CPU build of torch on this disk).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# xdist workers: both cores of the CI machine.
WORKERS ?= 2

.PHONY: setup test test-slow demo bench bench-compare lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) -m "not slow" --durations=15 tests

test-slow: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) -m slow tests

# The main job: a character language model on the built-in Python documentation text, the
# defaults' model for 900 steps at a constant learning rate (about 2 minutes on 2 cores; the
# default run is `rnnkit train`, 4-6 minutes), then its test figures and a sample.
DEMO_RUN := runs/demo
demo: $(STAMP)
	rm -rf $(DEMO_RUN)
	$(VENV)/bin/rnnkit train charlm --schedule constant --steps 900 --eval-every 450 --out $(DEMO_RUN)
	$(VENV)/bin/rnnkit evaluate $(DEMO_RUN)
	$(VENV)/bin/rnnkit sample $(DEMO_RUN) --prime "The " --length 400 --temperature 0.8 --seed 0

# the layers against another revision, side by side: make bench-compare REV=HEAD~1
bench-compare: $(STAMP)
	$(PY) benchmarks/compare_revisions.py $(REV) --out docs/benchmarks.md

bench: $(STAMP)
	$(PY) benchmarks/bench_kernels.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_jordan.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_layer_norm.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_native.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_gemm.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_scan.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_export.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_mainjob.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_sample.py --out docs/benchmarks.md
	$(PY) benchmarks/bench_long.py --out docs/benchmarks.md

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) build dist src/*.egg-info
