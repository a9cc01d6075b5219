# The two commands that do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: venv demo demo-manager test lint bench bench-ray bench-ray-cluster clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import trainkeep, torch, pytest, moto, hypothesis, ray"
	touch $(STAMP)

venv: $(STAMP)

## The main demo: a PyTorch model on 2 workers, a checkpoint per epoch kept by score, one crash recovered from.
demo: $(STAMP)
	$(PY) examples/demo.py

## The engine on its own, in a plain loop (no trainer).
demo-manager: $(STAMP)
	$(PY) examples/demo_manager.py

## The full test suite.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

## Benchmarks (never part of `make test`): report round trip, persistence against the raw disk, constant cost.
bench: $(STAMP)
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_persist.py
	$(PY) benchmarks/bench_scale.py

## Side by side with Ray Train 2.60 (installs Ray into a separate .venv-bench; never part of `make test`).
bench-ray:
	bash benchmarks/bench_vs_ray.sh

## Issue 12: the report round on a simulated 3-node Ray cluster, trainkeep's Ray executor vs Ray Train 2.60.
bench-ray-cluster: $(STAMP)
	PYTHONPATH=src $(PY) benchmarks/bench_ray_cluster.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis demo_runs
