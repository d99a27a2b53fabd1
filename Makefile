# tsemu: every target installs what it needs into a local venv (.venv) first.
#   make run    start the emulator on its embedded default scenario
#   make test   install and run the test suite
#   make bench  run the benchmarks (results in bench/results/)
#   make lint   ruff and mypy
#   make golden re-capture the kernel's replies into tests/golden (needs a taskstats kernel, root)
#   make clean  remove the venv and build leftovers

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench lint golden clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $@

run: install
	$(VENV)/bin/tsemu serve

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m bench

lint: install
	$(VENV)/bin/ruff check wire emulator cli tsemu tests bench scripts
	$(VENV)/bin/mypy wire

golden: install
	$(PY) scripts/capture_golden.py tests/golden/kernel.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
