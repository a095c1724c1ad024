"""Inputs the benchmarks make for themselves, so that they run on a fresh clone (no `data/` folder, no network).

Throughput does not depend on the values, so the files are synthetic: [-1, 1] normalization ranges (the real affine
maps run, not the exact-identity shortcut) and uniformly random demonstrations, written with the dataset scripts'
own writer (`script/dataset/common.py`), in the same format as a generated or converted dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from script.dataset.common import NormStats, write_dataset


def unit_stats(obs_dim: int, action_dim: int) -> NormStats:
    """Normalization statistics with ranges [-1, 1]: obs (Do,) and action (Da,) bounds, float32."""
    obs, act = np.ones(obs_dim, np.float32), np.ones(action_dim, np.float32)
    return NormStats(-obs, obs, -act, act)


def write_normalization(folder: str | Path, obs_dim: int, action_dim: int) -> Path:
    """Write `<folder>/normalization.npz` with [-1, 1] ranges (`unit_stats`) and return its path."""
    path = Path(folder) / "normalization.npz"
    unit_stats(obs_dim, action_dim).save(path)
    return path


def write_demos(
    folder: str | Path,
    obs_dim: int,
    action_dim: int,
    n_traj: int,
    length: int,
    image_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Random demonstrations: `<folder>/train.npz` (`n_traj` trajectories of `length` steps; states (N, Do) and
    actions (N, Da) uniform in [-1, 1], images (N, C, H, W) uniform uint8 when `image_shape` = (C, H, W) is given)
    and `<folder>/normalization.npz` ([-1, 1] ranges). Returns (train path, normalization path)."""
    rng = np.random.default_rng(seed)
    n = n_traj * length
    images = None if image_shape is None else rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
    write_dataset(
        folder,
        states=rng.uniform(-1, 1, (n, obs_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, action_dim)).astype(np.float32),
        traj_lengths=np.full(n_traj, length),
        images=images,
        stats=unit_stats(obs_dim, action_dim),
    )
    return Path(folder) / "train.npz", Path(folder) / "normalization.npz"
