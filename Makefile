PY := .venv/bin/python

.PHONY: setup demo test test-all lint bench services

setup:  ## create .venv and install everything (CPU torch first)
	bash scripts/setup.sh

demo: setup  ## the main job: toy world -> DSKD distillation -> export, on CPU in minutes
	bash scripts/demo.sh

test: setup  ## the default test run (CPU, no network; starts PostgreSQL/Redis if needed)
	bash scripts/test.sh

test-all: setup  ## including slow tests
	bash scripts/test.sh -m "slow or not slow"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench: setup  ## benchmarks print ratios measured in one run
	$(PY) bench/loss_memory.py
