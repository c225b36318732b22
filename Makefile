# `make run` and `make test` each work on a fresh machine: they create .venv if it is
# missing, install the project into it (again whenever pyproject.toml or constraints.txt
# changes) with every dependency at the version constraints.txt pins, then run or test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck drift pytest fuzz bench screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Plain http on 127.0.0.1: the console's session cookie may go without `Secure` there
# (refused in production mode; see [console] in the README).
run: $(STAMP)
	$(PY) -m bastion demo
	BASTION_CONSOLE_COOKIE_SECURE=false $(PY) -m bastion serve --host 127.0.0.1 --port 8000

test: lint typecheck drift pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check platform tests benchmarks migrations docs
	$(VENV)/bin/ruff format --check platform tests benchmarks migrations docs

typecheck: $(STAMP)
	$(VENV)/bin/mypy

drift: $(STAMP)
	$(PY) -m bastion db check

pytest: $(STAMP)
	$(PY) -m pytest -q

# The API fuzz of `make test` at length, on SQLite: 50 generated cases per operation
# and mode for each of two roles, then stateful runs (over 5,000 cases; a few minutes).
# Prints how many cases each role ran.
FUZZ_EXAMPLES ?= 50
fuzz: $(STAMP)
	BASTION_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/functional/test_fuzz.py -k sqlite

# Every benchmark, one after another (about 25 minutes on 2 cores; see
# benchmarks/README.md), then BENCHMARKS.md and its plots. Each prints ratios against
# a baseline measured in the same run; none fails on speed, none is part of `make test`.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.report

# The console's screenshots in docs/console/ (shown in the README), taken in the same
# headless Chromium as the browser tests (apt-get install chromium chromium-driver).
screenshots: $(STAMP)
	$(PY) -m docs.screenshots

# Resolve every dependency afresh (the newest releases pyproject.toml allows) in a
# throwaway virtualenv and pin them in constraints.txt; run `make test` before committing.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev,bench]'
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) .bastion .pytest_cache .mypy_cache .ruff_cache
