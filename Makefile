# The few commands a contributor needs. `make test` and `make quickstart` set everything up first.
PY ?= python
# CPU wheel by default (it installs from local disk here and is small elsewhere); on a GPU machine use
# `make install TORCH="torch"` (or preinstall the CUDA build you want).
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-all lint format bench quickstart clean

install:
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench:
	$(PY) script/bench/pretrain.py
	$(PY) script/bench/envs.py --quick
	$(PY) script/bench/finetune.py

quickstart: install
	$(PY) script/quickstart.py

clean:
	rm -rf log/quickstart .pytest_cache .ruff_cache
