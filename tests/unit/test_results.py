"""script/results.py: which stages run (resume and redo rules), merging resumed segments, and the report drawn
from the per-run summaries alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from script import results


def args(out: Path, **kw) -> argparse.Namespace:
    base = {
        "tasks": ["avoid_m2"],
        "seeds": 2,
        "budget_min": 1.0,
        "baselines": False,
        "jobs": 1,
        "out": out,
        "device": "cpu",
    }
    return argparse.Namespace(**{**base, **kw})


def write_summary(pipe: results.Pipeline, key: str, payload: dict | None = None) -> None:
    path = pipe.summary_path(pipe.stages[key])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload or {}))


def test_stage_graph_of_a_task(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path))
    names = [s.name for s in pipe.stages.values()]
    assert names[0] == "data"
    for seed in (0, 1):
        assert {
            f"ft_dppo_s{seed}",
            f"ft_gaussian_ppo_s{seed}",
            f"eval_dppo_s{seed}",
            f"eval_pre_gaussian_s{seed}",
        } <= set(names)
    # Gaussian PPO gets DPPO's env steps of the same seed, so it waits for that run
    assert pipe.stages["avoid_m2/ft_gaussian_ppo_s1"].deps == ["avoid_m2/pretrain_gaussian", "avoid_m2/ft_dppo_s1"]
    assert pipe.stages["avoid_m2/eval_dppo_s0"].deps == ["avoid_m2/ft_dppo_s0"]
    assert len(pipe.needed()) == len(pipe.stages)


def test_a_failed_stage_blocks_every_stage_that_needs_it_directly_or_not(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1))
    todo = {k: s for k, s in pipe.stages.items() if k != "avoid_m2/ft_dppo_s0"}
    blocked = results.blocked_by(todo, {"avoid_m2/ft_dppo_s0": "exit 1"})
    # Gaussian PPO waits for DPPO's env steps, and its evaluation waits for it: both are blocked in one pass
    assert set(blocked) == {"avoid_m2/eval_dppo_s0", "avoid_m2/ft_gaussian_ppo_s0", "avoid_m2/eval_gaussian_ppo_s0"}
    assert results.blocked_by(todo, {}) == []


def test_finished_stages_are_skipped_and_redone_only_when_a_pending_stage_needs_their_output(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1))
    for key in pipe.stages:
        if key != "avoid_m2/eval_gaussian_ppo_s0":
            write_summary(pipe, key)
    # everything is summarised except one evaluation, whose fine-tuning checkpoint is gone (a fresh clone): the
    # fine-tuning run is redone, and with it the pretraining and the data it needs; nothing else
    needed = {s.key for s in pipe.needed()}
    assert needed == {
        "avoid_m2/eval_gaussian_ppo_s0",
        "avoid_m2/ft_gaussian_ppo_s0",
        "avoid_m2/pretrain_gaussian",
        "avoid_m2/data",
    }
    # with the checkpoint there, only the evaluation runs
    ckpt = tmp_path / "work/log/avoid_m2/ft_gaussian_ppo_s0/seg0/checkpoint/state_3.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    assert [s.key for s in pipe.needed()] == ["avoid_m2/eval_gaussian_ppo_s0"]
    write_summary(pipe, "avoid_m2/eval_gaussian_ppo_s0")
    assert pipe.needed() == []


def test_a_resumed_run_gets_a_new_segment_that_resumes_from_the_newest_checkpoint(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1))
    stage = pipe.stages["avoid_m2/pretrain_diffusion"]
    assert pipe._prepare_training(stage) == [f"logdir={stage.rundir / 'seg0'}"]
    ckpt = stage.rundir / "seg0" / "checkpoint" / "state_40.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    (stage.rundir / "seg1").mkdir()  # a segment killed before its first checkpoint
    assert pipe._prepare_training(stage) == [f"logdir={stage.rundir / 'seg2'}", f"resume={stage.rundir / 'seg0'}"]


def test_budgets(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1, budget_min=7.5))
    dppo, gauss = pipe.stages["avoid_m2/ft_dppo_s0"], pipe.stages["avoid_m2/ft_gaussian_ppo_s0"]
    assert pipe._budget(dppo, results.METHODS[0], results.METHODS) == ["train.max_wall_min=7.5"]
    write_summary(pipe, dppo.key, {"env_steps": 123456})
    assert pipe._budget(gauss, results.METHODS[1], results.METHODS) == [
        "train.max_env_steps=123456",
        "train.max_wall_min=22.5",
    ]


def test_an_env_step_budget_replaces_the_wall_time_for_dppo(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1, budget_min=6.0, budget_env_steps=324000))
    dppo = pipe.stages["avoid_m2/ft_dppo_s0"]
    assert pipe._budget(dppo, results.METHODS[0], results.METHODS) == [
        "train.max_env_steps=324000",
        "train.max_wall_min=60.0",
    ]


def test_redo_forgets_a_stage_and_everything_after_it(tmp_path: Path):
    pipe = results.Pipeline(args(tmp_path, seeds=1))
    for key in pipe.stages:
        write_summary(pipe, key)
    gone = pipe.redo(["avoid_m2/ft_dppo_s0"])
    # DPPO's run, its evaluation, and Gaussian PPO (which takes DPPO's env steps) with its evaluation
    assert set(gone) == {
        "avoid_m2/ft_dppo_s0",
        "avoid_m2/eval_dppo_s0",
        "avoid_m2/ft_gaussian_ppo_s0",
        "avoid_m2/eval_gaussian_ppo_s0",
    }
    assert set(gone) <= {s.key for s in pipe.needed()}  # (with the data and pretraining, whose files are absent here)
    with pytest.raises(SystemExit, match="is not a stage"):
        pipe.redo(["avoid_m2/ft_nothing_s0"])


def write_metrics(folder: Path, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_merged_rows_let_a_resumed_segment_replace_the_rows_after_its_checkpoint(tmp_path: Path):
    write_metrics(tmp_path / "seg0", [{"step": i, "train/x": i} for i in range(1, 6)])  # killed after step 5
    write_metrics(tmp_path / "seg1", [{"step": i, "train/x": 10 * i} for i in range(4, 7)])  # resumed at 3
    write_metrics(tmp_path / "seg10", [{"step": 7, "train/x": 70}])  # numeric, not lexical, order
    rows = results.merged_rows(tmp_path)
    assert [r["train/x"] for r in rows] == [1, 2, 3, 40, 50, 60, 70]


def fake_finetune(steps: list[int], values: list[float], metric: str, wall_s: float) -> dict:
    curve = {"env_steps": steps, "episode_return": [None] * len(steps), "success_rate": [None] * len(steps)}
    curve[metric] = values
    return {"env_steps": steps[-1], "wall_s": wall_s, "iterations": len(steps), "curve": curve}


def test_report_tabulates_mean_and_std_over_seeds_and_draws_the_curves(tmp_path: Path):
    runs = tmp_path / "runs" / "hopper"
    runs.mkdir(parents=True)
    summaries = {
        "eval_pre_diffusion_s0": {"episode_return": 400.0},
        "eval_pre_diffusion_s1": {"episode_return": 600.0},
        "eval_dppo_s0": {"episode_return": 900.0},
        "eval_dppo_s1": {"episode_return": 1100.0},
        "ft_dppo_s0": fake_finetune([0, 10, 20], [400, 700, 900], "episode_return", 600),
        "ft_dppo_s1": fake_finetune([0, 10, 30], [500, 800, 1000], "episode_return", 660),
        "pretrain_diffusion": {"epochs": 100, "final_loss": 0.05, "wall_s": 300},
    }
    for name, payload in summaries.items():
        (runs / f"{name}.json").write_text(json.dumps(payload))
    path = results.report(tmp_path, results.METHODS, total_s=120.0)
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| hopper"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:7] == ["hopper", "episode_return", "DPPO", "2", "500 ± 100", "1000 ± 100", "+500 (+100%)"]
    assert cells[7] == "25" and cells[8] == f"{630 / 60:.1f}"
    assert "Gaussian PPO" not in text  # no Gaussian run: no row
    assert (tmp_path / "hopper.png").stat().st_size > 0 and "![hopper](hopper.png)" in text
    assert "2.0 min" in text


def test_success_rate_changes_are_points(tmp_path: Path):
    runs = tmp_path / "runs" / "lift"
    runs.mkdir(parents=True)
    for name, payload in {
        "eval_pre_diffusion_s0": {"success_rate": 0.3},
        "eval_dppo_s0": {"success_rate": 0.75},
        "ft_dppo_s0": fake_finetune([0, 5], [0.3, 0.7], "success_rate", 60),
    }.items():
        (runs / f"{name}.json").write_text(json.dumps(payload))
    text = results.report(tmp_path, results.METHODS, None).read_text()
    assert "| lift | success_rate | DPPO | 1 | 0.300 | 0.750 | +45.0 pts |" in text


def test_bad_flags_exit_with_one_line(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exc:
        results.main(["--seeds", "0"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results.main(["--tasks", "nope"])


def test_downsample_keeps_the_ends():
    idx = results.downsample(1000, 300)
    assert idx[0] == 0 and idx[-1] == 999 and len(idx) == 300
    assert np.array_equal(results.downsample(5, 300), np.arange(5))


def test_pretrain_summary_sums_the_time_of_resumed_segments(tmp_path: Path):
    rundir = tmp_path / "pretrain"
    write_metrics(rundir / "seg0", [{"step": i, "pretrain/loss": 1 / i, "time/elapsed_s": 10.0 * i} for i in (1, 2, 3)])
    write_metrics(rundir / "seg1", [{"step": i, "pretrain/loss": 0.1, "time/elapsed_s": 5.0 * (i - 3)} for i in (4, 5)])
    stage = results.Stage("t", "pretrain_diffusion", [], [], results.summarize_pretrain, rundir=rundir)
    summary = results.summarize_pretrain(stage)
    assert summary["epochs"] == 5 and summary["final_loss"] == 0.1 and summary["wall_s"] == 40.0


STOPPABLE = """
import argparse, sys
from pathlib import Path
from script import results

out = Path(sys.argv[1])
pipe = results.Pipeline(argparse.Namespace(tasks=[], seeds=1, budget_min=1.0, baselines=False, jobs=1, out=out,
                                           device="cpu"))
child = "import sys, time, pathlib\\nmarker = pathlib.Path(sys.argv[1])\\ntry:\\n" \\
        "    marker.write_text('ready')\\n    time.sleep(60)\\nexcept KeyboardInterrupt:\\n" \\
        "    marker.write_text('stopped')\\n    sys.exit(130)"
pipe.stages["t/slow"] = results.Stage("t", "slow", [sys.executable, "-c", child, str(out / "marker")], [],
                                      lambda s: {})
sys.exit(pipe.run())
"""


def test_sigterm_stops_every_running_stage_as_ctrl_c_does(tmp_path: Path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    # started with SIGINT ignored, as a shell's background job is: the stage must still get a Ctrl-C
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE, str(tmp_path)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    marker = tmp_path / "marker"
    deadline = time.time() + 60
    while not (marker.is_file() and marker.read_text() == "ready") and time.time() < deadline:
        time.sleep(0.1)  # until the stage is inside its sleep
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert marker.read_text() == "stopped"
    assert "run the same command again" in err
    assert not (tmp_path / "runs/t/slow.json").exists()
