# Thin wrappers; the commands themselves are in README.md.
PY ?= .venv/bin/python

.PHONY: install lint test fuzz history up bench

install:
	python3 -m venv .venv && $(PY) -m pip install -e '.[dev]'

lint:
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy

test:
	$(PY) -m pytest -q

# A longer fuzz of the OpenAPI spec than the test suite's: FUZZ_EXAMPLES per operation and
# generation mode, a new seed each run (FUZZ_SEED=fixed repeats the suite's own examples).
FUZZ_EXAMPLES ?= 300
FUZZ_SEED ?= random
fuzz:
	AGX_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) AGX_FUZZ_SEED=$(FUZZ_SEED) \
		$(PY) -m pytest -q -s --timeout 3600 tests/test_fuzz.py

up:
	.venv/bin/agx up

bench:
	$(PY) bench/throughput.py

# The history check with more fault rounds than the suite's one (about 25 s per round).
HISTORY_ROUNDS ?= 10
history:
	AGX_HISTORY_ROUNDS=$(HISTORY_ROUNDS) $(PY) -m pytest -q -s --timeout 3600 tests/test_history.py
