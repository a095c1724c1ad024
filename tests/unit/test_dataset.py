"""Dataset windows, history padding and file checks against hand-built trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.dataset import StitchedSequenceDataset
from agent.errors import DataError


def _write(path, states, actions, lengths, images=None):
    data = {"states": states, "actions": actions, "traj_lengths": np.asarray(lengths)}
    if images is not None:
        data["images"] = images
    np.savez(path, **data)
    return path


@pytest.fixture
def ramp(tmp_path):
    """Two trajectories of lengths 4 and 3; state i = [i], action i = [100 + i]."""
    n = 7
    states = np.arange(n, dtype=np.float32)[:, None]
    actions = 100 + np.arange(n, dtype=np.float32)[:, None]
    images = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(8, 2).repeat(8, 3)
    return _write(tmp_path / "d.npz", states, actions, [4, 3], images=images[:, :1])


def test_windows_never_cross_trajectories(ramp):
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=2, cond_steps=1)
    # traj A (steps 0..3) gives starts 0,1,2; traj B (steps 4..6) gives 4,5
    assert len(ds) == 5
    batch = ds.get_batch(torch.arange(5))
    assert batch.actions[:, :, 0].tolist() == [[100, 101], [101, 102], [102, 103], [104, 105], [105, 106]]
    assert batch.cond["state"][:, :, 0].tolist() == [[0], [1], [2], [4], [5]]


def test_history_is_padded_with_first_state(ramp):
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=1, cond_steps=3)
    batch = ds.get_batch(torch.arange(len(ds)))
    hist = batch.cond["state"][:, :, 0].tolist()
    assert batch.cond["state"].shape == (7, 3, 1)
    # oldest first; frames before the trajectory start repeat its first state
    assert hist[0] == [0, 0, 0]
    assert hist[1] == [0, 0, 1]
    assert hist[3] == [1, 2, 3]
    assert hist[4] == [4, 4, 4]
    assert hist[6] == [4, 5, 6]


def test_image_history(ramp):
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=1, cond_steps=2, img_cond_steps=2, use_img=True)
    batch = ds.get_batch(torch.tensor([0, 1, 5]))
    rgb = batch.cond["rgb"]
    assert rgb.shape == (3, 2, 1, 8, 8) and rgb.dtype == torch.uint8
    assert rgb[:, :, 0, 0, 0].tolist() == [[0, 0], [0, 1], [4, 5]]


def test_max_episodes_and_short_trajectories(ramp):
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=4, cond_steps=1)
    assert len(ds) == 1  # only trajectory A is long enough
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=1, max_n_episodes=1)
    assert len(ds) == 4


def test_val_split_holds_out_whole_trajectories(tmp_path):
    lengths = [5] * 10
    n = sum(lengths)
    states = np.repeat(np.arange(10, dtype=np.float32), 5)[:, None]  # state = trajectory id
    path = _write(tmp_path / "v.npz", states, np.zeros((n, 1), np.float32), lengths)
    ds = StitchedSequenceDataset(str(path), horizon_steps=2, val_split=0.2, seed=3)
    train_ids = set(ds.get_batch(ds.train_indices).cond["state"][:, 0, 0].tolist())
    val_ids = set(ds.get_batch(ds.val_indices).cond["state"][:, 0, 0].tolist())
    assert len(val_ids) == 2 and not train_ids & val_ids and len(train_ids) == 8


def test_iterate_covers_every_window_once(ramp):
    ds = StitchedSequenceDataset(str(ramp), horizon_steps=1)
    seen = torch.cat([b.actions[:, 0, 0] for b in ds.iterate(3, generator=torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == [100, 101, 102, 103, 104, 105, 106]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("actions"), "lacks key"),
        (lambda d: d.update(traj_lengths=np.array([4, 4])), "sum to 8"),
        (lambda d: d["states"].__setitem__((2, 0), np.nan), "NaN"),
        (lambda d: d.update(actions=d["actions"][:5]), "5 actions"),
    ],
)
def test_malformed_files_are_clear_errors(tmp_path, mutate, message):
    d = {
        "states": np.zeros((7, 2), np.float32),
        "actions": np.zeros((7, 1), np.float32),
        "traj_lengths": np.array([4, 3]),
    }
    mutate(d)
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(DataError, match=message):
        StitchedSequenceDataset(str(tmp_path / "bad.npz"), horizon_steps=1)


def test_missing_file_and_dim_mismatch(tmp_path, ramp):
    with pytest.raises(DataError, match="not found.*README"):
        StitchedSequenceDataset(str(tmp_path / "nope.npz"), horizon_steps=1, hint="see README")
    with pytest.raises(DataError, match="obs_dim=5"):
        StitchedSequenceDataset(str(ramp), horizon_steps=1, obs_dim=5)


def test_actions_outside_the_normalised_range_warn_once_with_the_range(tmp_path, ramp, caplog):
    with caplog.at_level("WARNING", logger="agent.dataset"):
        StitchedSequenceDataset(str(ramp), horizon_steps=2)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "actions range over [100, 106], outside the normalised [-1, 1]" in warned[0]
    caplog.clear()
    inside = _write(tmp_path / "ok.npz", np.zeros((5, 1), np.float32), np.full((5, 1), -1.0, np.float32), [5])
    with caplog.at_level("WARNING", logger="agent.dataset"):
        StitchedSequenceDataset(str(inside), horizon_steps=2)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
