"""The locomotion generator: a tiny behaviour-policy run writes a dataset the pretraining dataset loads."""

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")


def test_generate_locomotion_tiny(tmp_path, monkeypatch):
    from agent.dataset import StitchedSequenceDataset
    from script.dataset.generate_locomotion import main

    monkeypatch.setenv("DPPO_LOG_DIR", str(tmp_path / "log"))
    stats = main(
        [
            "--task",
            "hopper-medium-v2",
            "--band",
            "-1000000000",
            "1e9",
            "--transitions",
            "300",
            "--max-itr",
            "3",
            "--eval-every",
            "1",
            "--n-envs",
            "2",
            "--n-steps",
            "40",
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    assert stats["behaviour_itr"] == 0  # the first evaluation is inside an all-accepting band: no training
    assert stats["record_std"] == 0.1
    behaviour = tmp_path / "log/gym-behaviour/hopper-medium-v2/behaviour"
    assert [p.name for p in behaviour.rglob("state_*.pt")] == ["state_0.pt"]  # the policy that recorded the data
    assert stats["transitions"] >= 300
    out = tmp_path / "data/gym/hopper-medium-v2"
    with np.load(out / "train.npz") as f:
        assert f["states"].shape[1] == 11 and f["actions"].shape[1] == 3
        assert np.abs(f["states"]).max() <= 1.0 + 1e-5
        assert int(f["traj_lengths"].sum()) == stats["transitions"]
        # returns recorded per episode match the stored rewards
        ends = np.cumsum(f["traj_lengths"])
        per_ep = np.add.reduceat(f["rewards"], ends - f["traj_lengths"])
    np.testing.assert_allclose(per_ep, np.load(out / "episode_returns.npy"), rtol=1e-5)
    ds = StitchedSequenceDataset(str(out / "train.npz"), horizon_steps=4, obs_dim=11, action_dim=3)
    assert len(ds) > 0
