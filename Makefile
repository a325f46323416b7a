# Thin wrappers; the commands themselves are in README.md.
PY ?= .venv/bin/python

.PHONY: install lint test up bench

install:
	python3 -m venv .venv && $(PY) -m pip install -e '.[dev]'

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

test:
	$(PY) -m pytest -q

up:
	.venv/bin/agx up

bench:
	$(PY) bench/throughput.py
