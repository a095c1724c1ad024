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
