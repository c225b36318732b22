# `make run` and `make test` each work on a fresh machine: they create .venv if it is
# missing, install the project into it (again whenever pyproject.toml changes), then
# run or test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck drift pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m bastion demo
	$(PY) -m bastion serve --host 127.0.0.1 --port 8000

test: lint typecheck drift pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests benchmarks migrations
	$(VENV)/bin/ruff format --check platform tests benchmarks migrations

typecheck: $(STAMP)
	$(VENV)/bin/mypy

drift: $(STAMP)
	$(PY) -m bastion db check

pytest: $(STAMP)
	$(PY) -m pytest -q

# Every benchmark, one after another (about 7 minutes on 2 cores; see
# benchmarks/README.md). Each prints ratios against a baseline measured in the same
# run; none fails on speed, and none is part of `make test`.
bench: $(STAMP)
	$(PY) -m benchmarks.run --duration 10
	$(PY) -m benchmarks.policy
	$(PY) -m benchmarks.crypto
	$(PY) -m benchmarks.audit
	$(PY) -m benchmarks.pipeline --large 1000000
	$(PY) -m benchmarks.dsr --large 1000000
	$(PY) -m benchmarks.rotation

clean:
	rm -rf $(VENV) .bastion .pytest_cache .mypy_cache .ruff_cache
