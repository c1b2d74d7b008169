# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# The local CPU wheel; never leave torch unpinned (an open range pulls a CUDA build).
TORCH := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit bench clean image

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" numpy
	$(PY) -m pip install -q -e ".[dev]"
	@bash scripts/apt-deps.sh
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgepart demo

lint: $(STAMP)
	$(BIN)/ruff check edgepart tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -q tests

test: lint unit

# The one image for every role (images/Dockerfile), with docker or podman: IMAGE=... ENGINE=...
image:
	bash scripts/build-image.sh

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis out
