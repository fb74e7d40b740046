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

# One pytest worker per core, at most 4 (some tests start several processes of their own); worksteal because a
# few end-to-end tests take minutes while most take seconds.
XDIST := -n auto --maxprocesses=4 --dist worksteal

test: setup
	$(BIN)/pytest -q $(XDIST) --durations=25

test-fast: setup
	$(BIN)/pytest -q $(XDIST) -m "not slow"

quickstart: setup
	$(BIN)/distillctl pipeline recipe=quickstart

clean:
	rm -rf runs .pytest_cache
