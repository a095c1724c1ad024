"""Shared fixtures: CPU only, a private log/data folder per test, tiny generated datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(1)


def make_demo_npz(
    path: Path,
    obs_dim: int,
    action_dim: int,
    traj_lengths: list[int] | tuple[int, ...] = (30, 25, 40),
    image_shape: tuple[int, int, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write a small normalised demonstration file whose actions are a smooth function of the state.

    Also writes `normalization.npz` beside it (identity-like ranges [-1, 1]).
    """
    rng = np.random.default_rng(seed)
    n = int(sum(traj_lengths))
    states = rng.uniform(-1, 1, size=(n, obs_dim)).astype(np.float32)
    w = rng.normal(size=(obs_dim, action_dim)) / np.sqrt(obs_dim)
    actions = np.tanh(states @ w).astype(np.float32)
    data = {"states": states, "actions": actions, "traj_lengths": np.asarray(traj_lengths, dtype=np.int64)}
    if image_shape is not None:
        data["images"] = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    np.savez(
        path.parent / "normalization.npz",
        obs_min=-np.ones(obs_dim, np.float32),
        obs_max=np.ones(obs_dim, np.float32),
        action_min=-np.ones(action_dim, np.float32),
        action_max=np.ones(action_dim, np.float32),
    )
    return path


@pytest.fixture
def tmp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point DPPO_DATA_DIR and DPPO_LOG_DIR into the test's temporary folder."""
    monkeypatch.setenv("DPPO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DPPO_LOG_DIR", str(tmp_path / "log"))
    return tmp_path
