# edgetune — see README.md. Every target installs what it needs first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
export EDGETUNE_CACHE ?= $(HOME)/.cache/edgetune
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: help install install-base test test-unit bench clean
help:
	@echo "make demo       local cluster + operator + the three example resources, prints AP and latency"
	@echo "make test       every test (unit, cluster, ml; gpu tests are reported as skipped here)"
	@echo "make bench      benchmarks (print figures, never fail on a time)"
	@echo "make install    pinned Python environment in .venv (+ cached mmcv wheel)"

install:
	bash scripts/install.sh

install-base:
	bash scripts/install.sh --base

test: install ml-image tools
	$(PYTEST) tests

test-unit: install-base
	$(PYTEST) tests/unit

bench: bench-operator bench-edge bench-train bench-store

clean:
	rm -rf .pytest_cache build *.egg-info

# Each area adds its own targets.
include $(wildcard mk/*.mk)
