"""Bad inputs on the command line (issue 14): each case ends with exit code 2, exactly one `error:` line on stderr,
no traceback, and nothing written that should not be (the marker a malicious checkpoint would create, or, for
config errors caught before the run starts, any run folder).

A case is a row of `CASES`: its command line (`{tmp}` stands for the test's folder), what the error line must say,
and what the test folder must hold first (`SETUPS`).
"""

from __future__ import annotations

import datetime
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, make_demo_npz
from tests.smoke.test_cli import run_cli

PRETRAIN = ["--config-name=pre_diffusion_mlp", "--config-dir=cfg/gym/pretrain/hopper-medium-v2"]
FINETUNE = ["--config-name=ft_ppo_diffusion_mlp", "--config-dir=cfg/gym/finetune/hopper-v2"]
EVAL = ["--config-name=eval_diffusion_mlp", "--config-dir=cfg/gym/eval/hopper-v2"]
# batch_size is derived from n_steps and n_envs here (n_steps * n_envs // 4)
FINETUNE_GAUSSIAN = ["--config-name=ft_ppo_gaussian_mlp", "--config-dir=cfg/gym/finetune/hopper-v2"]
SMALL = ["device=cpu", "wandb=null", "train.batch_size=32", "model.network.mlp_dims=[64,64,64]"]
MARKER = "MARKER"


class _RunsCode:
    """Unpickles into `os.system("touch <marker>")`: what a malicious checkpoint does on `torch.load`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious_checkpoint(tmp: Path) -> None:
    payload = {"kind": "pretrain", "epoch": 1, "model": {}, "ema": {}, "config": _RunsCode(tmp / MARKER)}
    torch.save(payload, tmp / "evil.pt")


def _malicious_pickle(tmp: Path) -> None:
    (tmp / "evil.pkl").write_bytes(pickle.dumps({"observations": _RunsCode(tmp / MARKER)}))


def _hopper_demos(tmp: Path) -> None:
    make_demo_npz(tmp / "data/gym/hopper-medium-v2/train.npz", 11, 3, (40, 40))


SETUPS = {
    "evil": _malicious_checkpoint,
    "evil_pkl": _malicious_pickle,
    "demos": _hopper_demos,
}


@dataclass(frozen=True)
class Case:
    """One bad command line.

    Attributes:
        id: the test id.
        args: the command line after the script (`{tmp}` is the test folder).
        message: a piece of the one error line.
        setup: names of `SETUPS` to run first.
        no_run_folder: the error comes before the run starts, so no log or data folder may appear.
        script: the script run.
    """

    id: str
    args: list[str]
    message: str
    setup: tuple[str, ...] = ()
    no_run_folder: bool = False
    script: str = "script/run.py"


CASES = [
    Case(
        "pretrain-resume-malicious-checkpoint",
        [*PRETRAIN, *SMALL, "train.n_epochs=1", "resume={tmp}/evil.pt"],
        "needs arbitrary unpickling to load",
        ("evil", "demos"),
    ),
    Case(
        "finetune-base-policy-malicious-checkpoint",
        [*FINETUNE, "device=cpu", "wandb=null", "base_policy_path={tmp}/evil.pt"],
        "add allow_pickle=true",
        ("evil",),
    ),
    Case(
        "finetune-resume-malicious-checkpoint",
        [*FINETUNE, "device=cpu", "wandb=null", "resume={tmp}/evil.pt"],
        "add allow_pickle=true",
        ("evil",),
    ),
    Case(
        "eval-malicious-checkpoint",
        [*EVAL, "device=cpu", "wandb=null", "base_policy_path={tmp}/evil.pt"],
        "add allow_pickle=true",
        ("evil",),
    ),
    Case(
        "eval-power-tower",
        [*PRETRAIN, *SMALL, "train.n_epochs=${eval:'9**9**9'}"],
        "train.n_epochs=${eval:'9**9**9'} cannot be evaluated: the power has at least",
        no_run_folder=True,
    ),
    Case(
        "eval-huge-string",
        [*PRETRAIN, *SMALL, "train.n_epochs=1", "train.batch_size=${eval:'\"a\"*10**10'}"],
        "train.batch_size=${eval:'\"a\"*10**10'} cannot be evaluated: the repeated sequence has 10000000000 items",
        no_run_folder=True,
    ),
    Case(
        "eval-syntax-error",
        [*PRETRAIN, *SMALL, "train.n_epochs=${eval:'1+'}"],
        "train.n_epochs=${eval:'1+'} cannot be evaluated: invalid syntax",
        no_run_folder=True,
    ),
    Case(
        "too-many-envs",
        [*FINETUNE, "device=cpu", "wandb=null", "env.n_envs=100000000"],
        "env.n_envs=100000000 is more envs than a run can hold",
        no_run_folder=True,
    ),
    Case(
        "zero-steps-named-not-the-derived-batch-size",
        [*FINETUNE_GAUSSIAN, "device=cpu", "wandb=null", "train.n_steps=0"],
        "train.n_steps must be an integer >= 1, got 0",
        no_run_folder=True,
    ),
    Case(
        "zero-envs-named-not-the-derived-batch-size",
        [*FINETUNE_GAUSSIAN, "device=cpu", "wandb=null", "env.n_envs=0"],
        "env.n_envs must be an integer >= 1, got 0",
        no_run_folder=True,
    ),
    Case(
        "layer-widths-not-a-list",
        [*PRETRAIN, "device=cpu", "wandb=null", "train.n_epochs=1", "model.network.mlp_dims=abc"],
        "model.network.mlp_dims must be a list of positive integers such as [256, 256], got 'abc'",
        no_run_folder=True,
    ),
    Case(
        "convert-d4rl-malicious-pickle",
        ["--input", "{tmp}/evil.pkl", "--task", "hopper-medium-v2"],
        "pass --allow-pickle",
        ("evil_pkl",),
        no_run_folder=True,
        script="script/dataset/convert_d4rl.py",
    ),
]


def run_script(script: str, args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    """Run a script of the repository with the test's data and log folders, as `run_cli` does."""
    if script == "script/run.py":
        return run_cli(args, tmp)
    env = {**os.environ, "DPPO_DATA_DIR": str(tmp / "data"), "DPPO_LOG_DIR": str(tmp / "log"), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, script, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: Case):
    for name in case.setup:
        SETUPS[name](tmp_path)
    out = run_script(case.script, [a.replace("{tmp}", str(tmp_path)) for a in case.args], tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert case.message in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / MARKER).exists(), "loading the checkpoint ran the code it holds"
    if case.no_run_folder:
        assert not (tmp_path / "log").exists() and not (tmp_path / "data").exists(), "nothing may be written"


def test_allow_pickle_loads_a_trusted_checkpoint(tmp_path: Path):
    """A checkpoint holding a harmless non-tensor object (a date) needs `allow_pickle=true` to resume from."""
    from agent.checkpoint import latest_checkpoint, load_checkpoint

    _hopper_demos(tmp_path)
    out = run_cli([*PRETRAIN, *SMALL, "train.n_epochs=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    ckpt = load_checkpoint(latest_checkpoint(next((tmp_path / "log/gym-pretrain").glob("*/*"))))
    ckpt["written_on"] = datetime.date(2026, 1, 1)
    torch.save(ckpt, tmp_path / "trusted.pt")
    resume = [*PRETRAIN, *SMALL, "train.n_epochs=2", f"resume={tmp_path}/trusted.pt"]
    out = run_cli(resume, tmp_path)
    assert out.returncode == 2 and "allow_pickle=true" in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    out = run_cli([*resume, "allow_pickle=true"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]


def test_diverging_pretraining_stops_with_one_error_line_and_no_nan_checkpoint(tmp_path: Path):
    """`train.learning_rate=1e6`: exit 2 with one `error:` line (after the progress bar) naming the epoch and the
    last good checkpoint; every checkpoint left is finite."""
    from agent.checkpoint import list_checkpoints, load_checkpoint

    _hopper_demos(tmp_path)
    huge_lr = ["train.n_epochs=20", "train.save_model_freq=1", "train.learning_rate=1e6"]
    out = run_cli([*PRETRAIN, *SMALL, *huge_lr], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
    assert "training diverged: non-finite loss at epoch" in errors[0] and "last good checkpoint" in errors[0]
    assert "Traceback" not in out.stderr
    run = next((tmp_path / "log/gym-pretrain").glob("*/*"))
    for _, path in list_checkpoints(run):
        ckpt = load_checkpoint(path)
        assert all(torch.isfinite(v).all() for part in ("model", "ema") for v in ckpt[part].values())
