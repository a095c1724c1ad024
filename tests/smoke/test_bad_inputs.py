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

import numpy as np
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


def _wrong_normalization(tmp: Path) -> None:
    """Hopper demos (obs_dim 11) whose normalization.npz has 5 observation dims."""
    _hopper_demos(tmp)
    folder = tmp / "data/gym/hopper-medium-v2"
    np.savez(
        folder / "normalization.npz",
        obs_min=-np.ones(5),
        obs_max=np.ones(5),
        action_min=-np.ones(3),
        action_max=np.ones(3),
    )


def _checkpoint_dicts(tmp: Path) -> None:
    """Plain checkpoints (no weights needed: the errors come first): a fine-tuning one, a finished fine-tuning one
    (5 iterations), a pretraining one, and a pretraining one whose stored normalization has 5 obs dims."""
    torch.save({"kind": "finetune", "itr": 2, "env_steps": 10, "model": {}}, tmp / "ft.pt")
    torch.save({"kind": "finetune", "itr": 5, "env_steps": 10, "model": {}}, tmp / "ft_done.pt")
    torch.save({"kind": "pretrain", "epoch": 1, "model": {}, "ema": {}}, tmp / "pre.pt")
    norm = {"obs_min": -np.ones(5), "obs_max": np.ones(5), "action_min": -np.ones(3), "action_max": np.ones(3)}
    torch.save({"kind": "pretrain", "epoch": 1, "model": {}, "ema": {}, "normalization": norm}, tmp / "pre_norm.pt")


def _finished_pretraining(tmp: Path) -> None:
    """A pretraining run of one epoch, finished."""
    _hopper_demos(tmp)
    out = run_cli([*PRETRAIN, *SMALL, "train.n_epochs=1"], tmp)
    assert out.returncode == 0, out.stderr[-2000:]


def _a_file(tmp: Path) -> None:
    (tmp / "afile").write_text("not a folder")


def _robomimic_file(tmp: Path, kind: str) -> None:
    """`tmp/rm.hdf5`: a robomimic file with one defect (`kind`)."""
    import h5py

    path = tmp / "rm.hdf5"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        return
    with h5py.File(path, "w") as f:
        if kind == "no_data":
            f.create_group("stuff")
            return
        data = f.create_group("data")
        if kind == "empty_data":
            return
        demo = data.create_group("demo_0")
        demo.create_dataset("actions", data=np.zeros((10, 7)))
        if kind == "no_obs":
            return
        obs = demo.create_group("obs")
        t_pos = 9 if kind == "length_mismatch" else 10
        obs.create_dataset("robot0_eef_pos", data=np.zeros((t_pos, 3)))
        obs.create_dataset("robot0_eef_quat", data=np.zeros((10, 4)))
        obs.create_dataset("robot0_gripper_qpos", data=np.zeros((10, 2)))
        if kind != "missing_key":
            obs.create_dataset("object", data=np.zeros((10, 10)))
        if kind == "truncated":
            obs.create_dataset("padding", data=np.zeros((20000,)))  # so that the cut lands inside the data
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _d4rl_file(tmp: Path, kind: str) -> None:
    """`tmp/d4rl.<ext>`: a D4RL dictionary with one defect (`kind`)."""
    n = 20
    arrays = {
        "observations": np.zeros((n, 11)),
        "actions": np.zeros((n, 3)),
        "rewards": np.ones(n),
        "terminals": np.eye(1, n, n - 1, dtype=bool)[0],
    }
    if kind == "random_bytes":
        (tmp / "d4rl.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "length_mismatch":
        np.savez(tmp / "d4rl.npz", **{**arrays, "actions": np.zeros((n - 1, 3))})
    elif kind == "missing_key":
        np.savez(tmp / "d4rl.npz", **{k: v for k, v in arrays.items() if k != "rewards"})
    elif kind == "strings":
        np.savez(tmp / "d4rl.npz", **{**arrays, "observations": np.array(["a"] * n)})
    elif kind == "truncated":
        import h5py

        with h5py.File(tmp / "d4rl.hdf5", "w") as f:
            for k, v in {**arrays, "padding": np.zeros(20000)}.items():
                f.create_dataset(k, data=v)
        data = (tmp / "d4rl.hdf5").read_bytes()
        (tmp / "d4rl.hdf5").write_bytes(data[: len(data) // 2])


SETUPS = {
    "evil": _malicious_checkpoint,
    "evil_pkl": _malicious_pickle,
    "demos": _hopper_demos,
    "wrong_norm": _wrong_normalization,
    "ckpts": _checkpoint_dicts,
    "finished": _finished_pretraining,
    "afile": _a_file,
    **{
        f"rm_{k}": (lambda tmp, k=k: _robomimic_file(tmp, k))
        for k in ("random_bytes", "no_data", "empty_data", "no_obs", "length_mismatch", "missing_key", "truncated")
    },
    **{
        f"d4rl_{k}": (lambda tmp, k=k: _d4rl_file(tmp, k))
        for k in ("random_bytes", "length_mismatch", "missing_key", "strings", "truncated")
    },
}


@dataclass(frozen=True)
class Case:
    """One bad command line.

    Attributes:
        id: the test id.
        args: the command line after the script (`{tmp}` is the test folder).
        message: a piece of the one error line.
        setup: names of `SETUPS` to run first.
        no_run_folder: the error comes before the run starts (or the run folder it made is removed again), so
            no file or folder may appear in the test folder.
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
        "typed-block-value-of-the-wrong-type",
        [*PRETRAIN, "device=cpu", "wandb=null", "train.n_epochs=abc"],
        "train.n_epochs: Value 'abc' of type 'str' could not be converted to Integer; give a value of that type",
        no_run_folder=True,
    ),
    Case(
        "typed-block-range-check",
        [*PRETRAIN, "device=cpu", "wandb=null", "train.lr_scheduler.warmup_steps=-1"],
        "train.lr_scheduler.warmup_steps must be >= 0, got -1",
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


def _convert_robomimic(kind: str, message: str) -> Case:
    return Case(
        f"convert-robomimic-{kind.replace('_', '-')}",
        ["--input", "{tmp}/rm.hdf5", "--task", "lift"],
        message,
        (f"rm_{kind}",),
        no_run_folder=True,
        script="script/dataset/convert_robomimic.py",
    )


def _convert_d4rl(kind: str, message: str) -> Case:
    ext = "hdf5" if kind == "truncated" else "npz"
    return Case(
        f"convert-d4rl-{kind.replace('_', '-')}",
        ["--input", f"{{tmp}}/d4rl.{ext}", "--task", "hopper-medium-v2"],
        message,
        (f"d4rl_{kind}",),
        no_run_folder=True,
        script="script/dataset/convert_d4rl.py",
    )


CASES += [
    Case(
        "override-syntax",
        [*PRETRAIN, *SMALL, "train.batch_size=[1,2"],
        "cannot parse the override 'train.batch_size=[1,2' (no viable alternative at input '[1,2')",
        no_run_folder=True,
    ),
    Case(
        "log-folder-is-a-file",
        [*PRETRAIN, *SMALL, "log_dir={tmp}/afile/log"],
        "afile is a file, not a folder; set log_dir=<folder> or DPPO_LOG_DIR to a writable folder",
        ("afile",),
        no_run_folder=True,
    ),
    Case(
        "log-folder-name-too-long",
        [*PRETRAIN, *SMALL, "log_dir={tmp}/" + "a" * 300],
        "has a name longer than 255 bytes",
        no_run_folder=True,
    ),
    Case(
        "log-folder-not-creatable",
        [*PRETRAIN, *SMALL, "log_dir=/proc/no/such/folder"],
        "cannot create the run folder /proc/no/such/folder/",
        no_run_folder=True,
    ),
    Case(
        "dataset-missing-leaves-no-run-folder",
        [*PRETRAIN, *SMALL, "train.n_epochs=1"],
        "dataset file not found",
        no_run_folder=True,
    ),
    Case(
        "pretrain-normalization-of-another-dimension",
        [*PRETRAIN, *SMALL, "train.n_epochs=1"],
        "normalization.npz: obs_min has shape (5,), but obs_dim=11",
        ("wrong_norm",),
        no_run_folder=True,
    ),
    Case(
        "finetune-checkpoint-normalization-of-another-dimension",
        [*FINETUNE, "device=cpu", "wandb=null", "base_policy_path={tmp}/pre_norm.pt"],
        "the normalization stored in {tmp}/pre_norm.pt: obs_min has shape (5,), but obs_dim=11",
        ("ckpts",),
        no_run_folder=True,
    ),
    Case(
        "eval-checkpoint-normalization-of-another-dimension",
        [*EVAL, "device=cpu", "wandb=null", "base_policy_path={tmp}/pre_norm.pt"],
        "obs_min has shape (5,), but obs_dim=11",
        ("ckpts",),
        no_run_folder=True,
    ),
    Case(
        "pretrain-resume-of-a-finetuning-checkpoint",
        [*PRETRAIN, *SMALL, "train.n_epochs=2", "resume={tmp}/ft.pt"],
        "is a finetune checkpoint, not a pretraining one",
        ("ckpts", "demos"),
        no_run_folder=True,
    ),
    Case(
        "finetune-resume-of-a-pretraining-checkpoint",
        [*FINETUNE, "device=cpu", "wandb=null", "resume={tmp}/pre.pt"],
        "is a pretrain checkpoint, not a fine-tuning one; pass it as base_policy_path",
        ("ckpts",),
        no_run_folder=True,
    ),
    Case(
        "finetune-resume-of-a-finished-run",
        [*FINETUNE, "device=cpu", "wandb=null", "train.n_train_itr=5", "resume={tmp}/ft_done.pt"],
        "that run already finished 5 iterations (train.n_train_itr=5); raise train.n_train_itr",
        ("ckpts",),
        no_run_folder=True,
    ),
    Case(
        "pretrain-resume-of-a-finished-run",
        [*PRETRAIN, *SMALL, "train.n_epochs=1", "resume=true"],
        "that run already finished 1 epochs (train.n_epochs=1); raise train.n_epochs",
        ("finished",),
        no_run_folder=True,
    ),
    _convert_robomimic("random_bytes", "rm.hdf5: cannot read the file (OSError"),
    _convert_robomimic("no_data", "rm.hdf5 has no 'data' group; is it a robomimic hdf5?"),
    _convert_robomimic("empty_data", "rm.hdf5: the 'data' group holds no demo_<i> groups"),
    _convert_robomimic("no_obs", "rm.hdf5: data/demo_0 has no 'obs' (it has ['actions'])"),
    _convert_robomimic("length_mismatch", "data/demo_0/obs/robot0_eef_pos has 9 steps but data/demo_0/actions has 10"),
    _convert_robomimic("missing_key", "rm.hdf5: data/demo_0/obs lacks key(s) ['object']"),
    _convert_robomimic("truncated", "the file is truncated, damaged or not an hdf5 file"),
    _convert_d4rl("random_bytes", "d4rl.npz is not a readable npz file"),
    _convert_d4rl("length_mismatch", "d4rl.npz: actions has shape (19, 3); expected (N, D) with N=20"),
    _convert_d4rl("missing_key", "d4rl.npz lacks ['rewards']"),
    _convert_d4rl("strings", "d4rl.npz: observations holds <U1 values, not numbers"),
    _convert_d4rl("truncated", "d4rl.hdf5 is not a readable hdf5 file"),
]


def visible_lines(stderr: str) -> list[str]:
    """The lines a terminal shows of `stderr`: a progress bar that was cleared (overwritten by as many blanks,
    which tqdm writes on a line of their own when stderr is not a terminal) is not one."""
    shown: list[str] = []
    for raw in stderr.replace("\r", "\n").split("\n"):
        if raw.strip():
            shown.append(raw)
        elif raw and shown and len(raw) >= len(shown[-1]):
            shown.pop()
    return [line.strip() for line in shown]


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
    before = sorted(tmp_path.rglob("*"))
    out = run_script(case.script, [a.replace("{tmp}", str(tmp_path)) for a in case.args], tmp_path)
    lines = visible_lines(out.stderr)
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    assert case.message.replace("{tmp}", str(tmp_path)) in lines[0], lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / MARKER).exists(), "loading the checkpoint ran the code it holds"
    if case.no_run_folder:
        assert sorted(tmp_path.rglob("*")) == before, "nothing may be written"


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


PIPELINE, ASYNC = ["env.pipeline=true"], ["env.pipeline=false", "+env.asynchronous=true"]


@pytest.mark.parametrize(
    ("mode", "sig", "message"),
    [
        (PIPELINE, "SIGSTOP", "is stopped (SIGSTOP"),
        (ASYNC, "SIGSTOP", "is stopped (SIGSTOP"),
        (PIPELINE, "SIGKILL", "killed by signal SIGKILL"),
    ],
    ids=["pipeline-stopped", "async-stopped", "pipeline-killed"],
)
def test_stopped_or_dead_env_worker_ends_the_run_with_one_line(tmp_path: Path, mode: list[str], sig: str, message: str):
    """A SIGSTOPped or killed env worker: the run ends within step_timeout + 10 s, exit 2, one error line (the last,
    after the progress bar) naming the worker, and no traceback."""
    import signal
    import time

    _hopper_demos(tmp_path)  # for its normalization.npz
    timeout = 3
    args = [
        "--config-name=ft_ppo_diffusion_mlp_cpu",
        "--config-dir=cfg/gym/finetune/hopper-v2",
        "device=cpu",
        "wandb=null",
        "base_policy_path=null",
        "env.n_envs=4",
        "train.n_steps=50",
        "train.batch_size=100",
        *mode,
        f"+env.step_timeout={timeout}",
        "train.n_train_itr=100000",
    ]
    env = {**os.environ, "DPPO_DATA_DIR": str(tmp_path / "data"), "DPPO_LOG_DIR": str(tmp_path / "log")}
    proc = subprocess.Popen(
        [sys.executable, "script/run.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        workers: list[int] = []
        while time.time() < deadline and not workers and proc.poll() is None:
            time.sleep(0.5)  # the workers: forked children running the same command, once an iteration is logged
            if any(p.stat().st_size for p in (tmp_path / "log").glob("*/*/*/metrics.jsonl")):  # (a reset waits 4x)
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                same = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                workers = [int(c) for c in children if Path(f"/proc/{c}/cmdline").read_bytes() == same]
        assert workers, f"no env worker process appeared: {proc.poll()=}"
        os.kill(workers[0], getattr(signal, sig))
        stopped = time.time()
        _, err = proc.communicate(timeout=timeout + 60)
        took = time.time() - stopped
    finally:
        proc.kill()
    errors = [line for line in visible_lines(err) if line.startswith("error: ")]
    assert proc.returncode == 2, err[-2000:]
    assert took < timeout + 10, took
    # after the progress bar (the run had started), as for the diverging run above
    assert len(errors) == 1 and errors[0] == visible_lines(err)[-1] and message in errors[0], err[-2000:]
    assert "Traceback" not in err
