# The few commands a contributor needs. `make test` and `make quickstart` set everything up first.
PY ?= python
# CPU wheel by default (it installs from local disk here and is small elsewhere); on a GPU machine use
# `make install TORCH="torch"` (or preinstall the CUDA build you want).
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install sysdeps test test-all lint format bench quickstart results clean
SYSDEPS := libegl1 libegl-mesa0 libgl1-mesa-dri libgl1

# Software EGL for offscreen MuJoCo rendering (videos, pixel observations); installed when apt and root are there.
sysdeps:
	@if command -v dpkg >/dev/null && ! dpkg -s $(SYSDEPS) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	  else echo "note: rendering needs the system packages $(SYSDEPS)"; fi; fi

install: sysdeps
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all]"

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench:
	$(PY) script/bench/pretrain.py --emulate-reference
	$(PY) script/bench/envs.py --quick
	$(PY) script/bench/finetune.py --emulate-reference
	$(PY) script/bench/pixels.py --rollout

quickstart: install
	$(PY) script/quickstart.py

# The results table (results/RESULTS.md): data -> pretrain -> fine-tune (DPPO, Gaussian PPO) -> evaluate, per task.
# Resumable; RESULTS_ARGS passes flags, e.g. make results RESULTS_ARGS="--budget-min 60 --seeds 3".
RESULTS_ARGS ?=
results: install
	$(PY) script/results.py $(RESULTS_ARGS)

clean:
	rm -rf log/quickstart .pytest_cache .ruff_cache
