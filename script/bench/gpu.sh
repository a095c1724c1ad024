#!/usr/bin/env bash
# The GPU check of issues 13 and 17, one prepared script (<= 8 minutes on an H200 with 16 cores):
#   1. the CUDA-vs-CPU tests (python -m pytest -m gpu tests/gpu),
#   2. the pretraining benchmark (script/bench/pretrain.py) on the device,
#   3. the fine-tuning benchmark (script/bench/finetune.py --full: rates, one paper-size hopper iteration, and one
#      ReFlow PPO iteration beside one DPPO iteration on the same env steps: issue 17's ratio, goal <= 0.3),
#   4. paper-size hopper iterations with their parts (script/bench/iteration.py), the config's env and +env.workers=auto,
# then ONE summary table (script/bench/gpu_summary.py).
#
#   bash script/bench/gpu.sh                      # on the GPU machine
#   DEVICE=cpu QUICK=1 bash script/bench/gpu.sh   # dry run on a CPU: short runs, no paper-size iteration
#
# Environment: DEVICE (cuda), QUICK (0), LOGS (where the step logs go: $OUT/gpu_logs when OUT is set, else a
# temporary folder), PYTHON (python3). Missing Python packages (hydra-core, gymnasium, mujoco, ...) are installed
# from wheels in .whl/ (carried to the machine) into /tmp/site, without touching the machine's numpy or torch.
set -uo pipefail
cd "$(dirname "$0")/../.."

DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
if [ -n "${OUT:-}" ]; then LOGS=${LOGS:-$OUT/gpu_logs}; else LOGS=${LOGS:-$(mktemp -d)}; fi
mkdir -p "$LOGS"
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
export MUJOCO_GL=${MUJOCO_GL:-disable}  # nothing here renders; skips MuJoCo's EGL/GLFW context set-up
START=$(date +%s)

step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, output to the screen and $LOGS/NAME.log
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name ($(($(date +%s) - START)) s in; limit ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "=== $name exited with $rc (124: stopped at its ${limit} s limit)" | tee -a "$LOGS/$name.log"
}

# 1. dependencies
if ! "$PY" -c "import hydra, omegaconf, gymnasium, mujoco, tqdm" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "installing the missing Python packages from .whl/ into /tmp/site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "import hydra, omegaconf, gymnasium, mujoco, tqdm" || {
        echo "gpu.sh: the project's packages do not import; install them (pip install -e .[gym]) or carry wheels in .whl/"
        exit 2
    }
fi

# 2. the machine
echo "=== machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PY" - <<'PY'
import os, sys
import numpy, torch, gymnasium, mujoco
cuda = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, available: {cuda}),"
      f" numpy {numpy.__version__}, gymnasium {gymnasium.__version__}, mujoco {mujoco.__version__},"
      f" {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads")
if cuda:
    print(f"GPU: {torch.cuda.get_device_name(0)}")
PY
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu.sh: DEVICE=cuda but CUDA is not available here; run DEVICE=cpu QUICK=1 bash script/bench/gpu.sh for a dry run"
    exit 2
fi

# 3. steps (limits sum to < 8 minutes)
if [ "$DEVICE" = cuda ]; then
    step tests 120 "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
else
    step tests 120 env DPPO_TEST_DEVICE=cpu "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider
fi
if [ "$QUICK" = 1 ]; then
    step pretrain 120 "$PY" script/bench/pretrain.py --device "$DEVICE" --steps 5 --repeats 1 --configs hopper
    step finetune 150 "$PY" script/bench/finetune.py --device "$DEVICE" --steps 4 --batch 2000 --repeats 1
    step iteration 120 "$PY" script/bench/iteration.py --device "$DEVICE" --iterations 1 --n-steps 5 --batch 2000
else
    step pretrain 60 "$PY" script/bench/pretrain.py --device "$DEVICE" --steps 100 --repeats 3
    step finetune 170 "$PY" script/bench/finetune.py --device "$DEVICE" --repeats 3 --full
    step iteration 80 "$PY" script/bench/iteration.py --device "$DEVICE" --iterations 2
    step iteration_workers 50 "$PY" script/bench/iteration.py --device "$DEVICE" --iterations 1 +env.workers=auto
    cat "$LOGS/iteration_workers.log" >>"$LOGS/iteration.log"
fi

# 4. the table
echo
echo "=== summary: device $DEVICE, $(($(date +%s) - START)) s in all; logs in $LOGS"
"$PY" script/bench/gpu_summary.py "$LOGS"
