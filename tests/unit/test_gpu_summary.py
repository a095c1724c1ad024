"""script/bench/gpu_summary.py reads the figures of each step's log into the one table, and marks missing ones."""

from __future__ import annotations

from pathlib import Path

from script.bench.gpu_summary import pytest_counts, table

PRETRAIN = """torch 2.11.0+cu130, 16 threads
config   batch device   end-to-end/s  model-only/s e2e/model e2e vs ref
hopper     128 cuda           61,234        70,100      0.87      2.78x
can        256 cuda           50,500        55,000      0.92      1.94x
"""
FINETUNE = """measure                                                  wall        cpu  reference wall/ref
policy chunk queries/s (40 conditions, chains)          1,234        980      3,000    0.41x
old-log-prob pass, rows/s                           5,600,000  5,000,000     73,000   76.71x
PPO update, rows/s (50,000-row minibatches)         2,100,000  2,000,000     22,000   95.45x
rollout (sample+env+buffer), env steps/s, pipelined      9,876     12,000          -
one paper iteration, s (measured, --full)                 11.5        9.9         60    5.22x

flow beside diffusion: one training iteration at each config's shapes, 16,000 env steps each
  diffusion (ft_ppo_diffusion_mlp, K=20, K'=10), s        4.10       30.5          -
  reflow (ft_ppo_reflow_mlp, K=K'=4), s                   1.05        8.0          -
  reflow / diffusion (goal <= 0.3; paired rounds)         0.26
"""
ITERATION = """\
iteration 1 [config] device=cuda:0 n_steps=500 batch=50000 total_s=16.20 rollout_s=12.00 env_wait_s=3.00 \
update_s=4.00 rest_s=0.20 env_steps_per_s=6667 minibatches=20
iteration 2 [config] device=cuda:0 n_steps=500 batch=50000 total_s=12.50 rollout_s=9.00 env_wait_s=2.00 \
update_s=3.30 rest_s=0.20 env_steps_per_s=8889 minibatches=20
iteration 1 [env.workers=auto] device=cpu n_steps=5 batch=2000 total_s=4.81 rollout_s=0.35 env_wait_s=0.04 \
update_s=4.31 rest_s=0.15 env_steps_per_s=2110 minibatches=5
"""


def row(lines: list[str], start: str) -> list[str]:
    (line,) = [x for x in lines if x.startswith(f"| {start}")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_table_reads_every_log(tmp_path: Path) -> None:
    for name, text in {"pretrain": PRETRAIN, "finetune": FINETUNE, "iteration": ITERATION}.items():
        (tmp_path / f"{name}.log").write_text(text)
    (tmp_path / "tests.log").write_text("....F...\nFAILED tests/gpu/test_cuda.py::x\n1 failed, 7 passed in 9.1s\n")
    lines = table(tmp_path, goal_s=15.0)
    assert row(lines, "pretrain can samples/s, end to end")[1] == "50,500"
    assert row(lines, "pretrain hopper samples/s, model only")[1] == "70,100"
    assert row(lines, "policy chunk queries/s")[1] == "1,234"
    assert row(lines, "PPO update rows/s")[1] == "2,100,000"
    assert row(lines, "rollout env steps/s")[1] == "9,876"
    assert row(lines, "paper iteration s (finetune.py --full)")[1] == "11.5"
    assert row(lines, "flow comparison: DPPO iteration s")[1] == "4.10"
    assert row(lines, "flow comparison: reflow / diffusion")[1] == "0.26"
    assert row(lines, "raw vector env")[1] == "-"  # not in the log
    first, second = row(lines, "hopper iteration 1, 500 steps"), row(lines, "hopper iteration 2, 500 steps")
    assert first[1] == "16.20" and first[2].startswith("misses the 15 s goal") and "start-up" in first[2]
    assert second[1] == "12.50" and second[2].startswith("meets the 15 s goal; rollout 9.00 s (env wait 2.00)")
    assert row(lines, "hopper iteration 1, 5 steps, s [env.workers=auto]")[2].startswith("not paper-size")
    assert row(lines, "CUDA vs CPU tests")[1] == "7 passed, 1 failed"


def test_missing_logs_show_dashes_and_no_test_result(tmp_path: Path) -> None:
    lines = table(tmp_path, goal_s=15.0)
    assert row(lines, "old-log-prob pass rows/s")[1] == "-"
    assert row(lines, "CUDA vs CPU tests")[1] == "no result"


def test_pytest_counts_reads_the_last_summary_line() -> None:
    text = "8 passed in 1s\n...\n2 passed, 1 skipped, 3 deselected, 1 error in 4.2s\n"
    assert pytest_counts(text) == {"passed": 2, "failed": 0, "skipped": 1, "errors": 1}
