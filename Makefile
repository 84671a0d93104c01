PY := .venv/bin/python

.PHONY: setup demo demo-engine test test-all mutate lint bench services chaos

setup:  ## create .venv and install everything (CPU torch first)
	bash scripts/setup.sh

demo: setup  ## the main job: embedded service + toy world -> DSKD job over REST -> download and load the student
	bash scripts/demo.sh

demo-engine: setup  ## the same distillation with the engine alone (no service)
	bash scripts/demo_engine.sh

test: setup  ## the default test run (CPU, no network; starts PostgreSQL/Redis if needed)
	bash scripts/test.sh

test-all: setup  ## including slow tests
	bash scripts/test.sh -m "slow or not slow"

mutate: setup  ## mutation testing of the critical modules (long; not in test or test-all; docs/testing.md)
	bash scripts/mutate.sh $(MODULES)

services:  ## start (or install) PostgreSQL and Redis on 127.0.0.1
	bash scripts/services.sh

chaos: setup  ## the fault suite: its own PostgreSQL and Redis, worker kills, broker/database restarts, serve kill -9, disk full
	$(PY) bench/chaos.py

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench: setup  ## benchmarks print ratios measured in one run
	$(PY) bench/loss_memory.py
	$(PY) bench/throughput.py
	$(PY) bench/alignment.py
	$(PY) bench/api_load.py
	$(PY) bench/quality.py
