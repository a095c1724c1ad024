"""`script/run.py` end to end: a real pretraining run, resume, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agent.checkpoint import latest_checkpoint, load_checkpoint
from tests.conftest import REPO, make_demo_npz

HOPPER = ["--config-name=pre_diffusion_mlp", "--config-dir=cfg/gym/pretrain/hopper-medium-v2"]


def run_cli(args: list[str], tmp: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DPPO_DATA_DIR": str(tmp / "data"),
        "DPPO_LOG_DIR": str(tmp / "log"),
        "WANDB_MODE": "disabled",
    }
    return subprocess.run(
        [sys.executable, "script/run.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _small(extra: list[str] = ()) -> list[str]:
    return [
        *HOPPER,
        "device=cpu",
        "wandb=null",
        "train.batch_size=32",
        "model.network.mlp_dims=[64,64,64]",
        *extra,
    ]


def test_pretrain_cli_writes_loadable_checkpoint_and_resumes(tmp_path):
    make_demo_npz(tmp_path / "data/gym/hopper-medium-v2/train.npz", 11, 3, (40, 40))
    out = run_cli(_small(["train.n_epochs=2"]), tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = list((tmp_path / "log/gym-pretrain").glob("*/*"))
    assert len(runs) == 1
    ckpt = load_checkpoint(latest_checkpoint(runs[0]))
    assert ckpt["epoch"] == 2 and set(ckpt["ema"]) == set(ckpt["model"])
    rows = [json.loads(x) for x in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]

    # resume=true continues the newest run of the experiment up to the new n_epochs
    out = run_cli(_small(["train.n_epochs=3", "resume=true"]), tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    newest = max((tmp_path / "log/gym-pretrain").glob("*/*"), key=lambda p: p.stat().st_mtime)
    resumed = load_checkpoint(latest_checkpoint(newest))
    assert resumed["epoch"] == 3 and resumed["n_batches"] == 3 * ckpt["n_batches"] // 2


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "dataset file not found"),
        (["horizon_steps=0"], "horizon_steps must be an integer >= 1"),
        (["model.network.mlp_dim=[3]"], "did you mean model.network.mlp_dims"),
        (["model.network.cond_dim=${nope}"], "the config does not resolve: Interpolation key 'nope' not found"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, extra, message):
    out = run_cli(_small(["train.n_epochs=1", *extra]), tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_request_without_cuda(tmp_path):
    make_demo_npz(tmp_path / "data/gym/hopper-medium-v2/train.npz", 11, 3, (40,))
    out = run_cli(_small(["train.n_epochs=1", "device=cuda:0"]), tmp_path)
    assert out.returncode == 2 and "CUDA is not available" in out.stderr.strip().splitlines()[-1]


def test_malformed_dataset_and_dim_mismatch(tmp_path):
    make_demo_npz(tmp_path / "data/gym/hopper-medium-v2/train.npz", 7, 3, (40,))
    out = run_cli(_small(["train.n_epochs=1"]), tmp_path)
    assert out.returncode == 2 and "obs_dim=11" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("sig", "code", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_signal_stops_with_one_line_naming_the_checkpoint_to_resume(tmp_path, sig, code, word):
    """Ctrl-C and SIGTERM stop alike: exit 130 / 143 and one line naming the run to resume; the named run resumes,
    and when its newest checkpoint is damaged, from the one before (saying so)."""
    import signal
    import time

    from agent.checkpoint import list_checkpoints, load_checkpoint

    make_demo_npz(tmp_path / "data/gym/hopper-medium-v2/train.npz", 11, 3, (40, 40))
    env = {**os.environ, "DPPO_DATA_DIR": str(tmp_path / "data"), "DPPO_LOG_DIR": str(tmp_path / "log")}
    proc = subprocess.Popen(
        [sys.executable, "script/run.py", *_small(["train.n_epochs=100000", "train.save_model_freq=1"])],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((tmp_path / "log").glob("*/*/*/checkpoint/state_*.pt"))) < 2:
            time.sleep(0.2)
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    run = next((tmp_path / "log/gym-pretrain").glob("*/*"))
    assert proc.returncode == code, err[-1500:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{word}; continue from ") and f"resume={run}" in last, err[-1500:]
    assert "Traceback" not in err
    (_, previous), (_, newest) = list_checkpoints(run)[-2:]
    epoch = int(load_checkpoint(previous)["epoch"])
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged: a full disk, an interrupted copy
    out = run_cli(_small([f"train.n_epochs={epoch + 1}", f"resume={run}"]), tmp_path)  # the named run loads
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{newest} is truncated or damaged; resuming from the previous complete checkpoint {previous}" in (
        out.stdout + out.stderr
    )


def test_cfg_job_prints_the_composed_config_with_the_schema_defaults(tmp_path: Path):
    """`--cfg job` prints the composed config without running: the typed train block shows every key, the schema's
    defaults included, and nothing is written."""
    import yaml

    args = ["--config-name=ft_dql_diffusion_mlp", "--config-dir=cfg/gym/finetune/hopper-v2", "train.eta=0.5"]
    args += ["--cfg", "job"]
    out = run_cli(args, tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    train = yaml.safe_load(out.stdout)["train"]
    assert train["eta"] == 0.5 and train["target_ema_rate"] == 0.005 and train["save_replay_buffer"] is False
    assert not (tmp_path / "log").exists()


def test_an_append_of_a_key_the_schema_declares_becomes_an_override():
    """`+env.step_timeout=3` was how a command added the key before the env block was typed; it still works, while
    `+` of a key the config lacks stays an append."""
    from agent.cli import promote_appends

    argv = [
        "--config-dir=cfg/gym/finetune/hopper-v2",
        "--config-name=ft_ppo_diffusion_mlp",
        "+env.step_timeout=3",
        "+train.not_a_key=1",
        "++env.n_envs=2",
        "seed=1",
    ]
    assert promote_appends(argv) == [*argv[:2], "++env.step_timeout=3", *argv[3:]]
    assert promote_appends(argv[2:]) == argv[2:]  # no config named: left to preflight


def test_dppo_keys_are_renamed_or_dropped_with_a_note():
    """DPPO's `model.actor.*` (the fine-tuned network) and `model.network_path` map onto this toolkit's keys; keys
    with no effect here are dropped, each named once."""
    import io

    from agent.config import compose
    from agent.dppo_keys import translate_dppo_overrides

    argv = [
        "--config-name=ft_ppo_diffusion_mlp",
        "model.actor.mlp_dims=[256,256]",
        "++model.network_path=/ckpt/state_10.pt",
        "train.render.freq=1",
        "train.render.num=2",
        "model.device=cuda:0",
        "seed=3",
    ]
    notes = io.StringIO()
    out = translate_dppo_overrides(argv, notes)
    assert out == [argv[0], "model.network.mlp_dims=[256,256]", "++base_policy_path=/ckpt/state_10.pt", "seed=3"]
    lines = notes.getvalue().splitlines()
    assert len(lines) == 2 and "train.render.freq=1" in lines[0] and "model.device=cuda:0" in lines[1]
    cfg = compose(REPO / "cfg/gym/finetune/hopper-v2", "ft_ppo_diffusion_mlp", ["wandb=null", *out[1:]])
    assert list(cfg.model.network.mlp_dims) == [256, 256] and cfg.base_policy_path == "/ckpt/state_10.pt"
    # keys both share need no translation, e.g. robomimic's env_meta file and DPPO's image-observation flag
    meta = ["robomimic_env_cfg_path=cfg/robomimic/env_meta/can.json", "env.use_image_obs=false", "wandb=null"]
    cfg = compose(REPO / "cfg/robomimic/finetune/can", "ft_ppo_diffusion_mlp", meta)
    assert cfg.robomimic_env_cfg_path.endswith("can.json") and cfg.env.use_image_obs is False


def test_dppo_keys_from_the_command_line(tmp_path):
    """The same through `script/run.py`: the composed config shows the fine-tuned network's new widths."""
    done = subprocess.run(
        [
            sys.executable,
            "script/run.py",
            "--config-name=ft_ppo_diffusion_mlp",
            "--config-dir=cfg/gym/finetune/hopper-v2",
            "model.actor.mlp_dims=[256,256]",
            "train.render.num=0",
            "env.save_video=false",
            "--cfg",
            "job",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "DPPO_LOG_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert "mlp_dims:\n    - 256\n    - 256\n" in done.stdout and "note: ignoring train.render.num=0" in done.stderr
