"""The benchmarks' own inputs (script/bench/inputs.py): files the loaders and env wrappers accept as they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.base import load_normalization
from agent.dataset import StitchedSequenceDataset
from env.wrappers.normalization import Normalization
from script.bench.inputs import write_demos, write_normalization


def test_normalization_file_has_unit_ranges_and_the_dims(tmp_path: Path) -> None:
    path = write_normalization(tmp_path / "bench", obs_dim=11, action_dim=3)
    assert path == tmp_path / "bench" / "normalization.npz"
    stats = load_normalization(str(path))
    assert {k: v.shape for k, v in stats.items()} == {
        "obs_min": (11,),
        "obs_max": (11,),
        "action_min": (3,),
        "action_max": (3,),
    }
    np.testing.assert_array_equal(stats["obs_min"], -np.ones(11))
    np.testing.assert_array_equal(stats["action_max"], np.ones(3))
    # the env wrappers read it as a real affine map (not the exact-identity shortcut) that nearly keeps values:
    # x' = 2 (x + 1) / (2 + 1e-6) - 1
    norm = Normalization.from_npz(path)
    assert not norm.exact_identity
    obs = np.array([-1.0, 0.0, 0.5, 1.0, 0, 0, 0, 0, 0, 0, 0])
    expected = 2 * (obs + 1) / (2 + 1e-6) - 1
    np.testing.assert_allclose(norm.normalize_obs(obs), expected, rtol=0, atol=1e-12)
    assert np.abs(norm.normalize_obs(obs) - obs).max() == pytest.approx(1e-6, rel=1e-3)


def test_demos_load_as_a_dataset(tmp_path: Path) -> None:
    train, norm = write_demos(tmp_path, obs_dim=4, action_dim=2, n_traj=3, length=10, image_shape=(3, 8, 8))
    assert norm.is_file() and load_normalization(str(norm))["obs_max"].shape == (4,)
    with np.load(train) as f:
        assert f["states"].shape == (30, 4) and f["actions"].shape == (30, 2)
        assert f["images"].shape == (30, 3, 8, 8) and f["images"].dtype == np.uint8
        np.testing.assert_array_equal(f["traj_lengths"], [10, 10, 10])
        assert np.abs(f["states"]).max() <= 1.0 and np.abs(f["actions"]).max() <= 1.0
    data = StitchedSequenceDataset(str(train), horizon_steps=4, cond_steps=1, use_img=True, obs_dim=4, action_dim=2)
    assert len(data.train_indices) == 3 * (10 - 4 + 1)  # windows that fit inside each trajectory
    # the same seed gives the same data, another seed other data
    again, _ = write_demos(tmp_path / "again", 4, 2, 3, 10, image_shape=(3, 8, 8))
    other, _ = write_demos(tmp_path / "other", 4, 2, 3, 10, image_shape=(3, 8, 8), seed=1)
    with np.load(train) as a, np.load(again) as b, np.load(other) as c:
        np.testing.assert_array_equal(a["states"], b["states"])
        assert not np.allclose(a["states"], c["states"])
