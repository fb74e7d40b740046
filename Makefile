# `make quickstart` and `make test` each do all the set-up they need on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast quickstart clean

setup: $(VENV)/.installed

# torch and torchvision are pinned to the builds this machine serves from local disk (see README).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: setup
	$(BIN)/pytest -q --durations=25

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

quickstart: setup
	$(BIN)/distillctl pipeline recipe=quickstart

clean:
	rm -rf runs .pytest_cache
