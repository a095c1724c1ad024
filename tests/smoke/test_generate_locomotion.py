"""The locomotion generator: a tiny behaviour-policy run writes a dataset the pretraining dataset loads."""

import json

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("mujoco")


def test_generate_locomotion_tiny(tmp_path, monkeypatch, capsys):
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
    err = capsys.readouterr().err
    assert "behaviour PPO:" in err and "finetune:" not in err  # the progress bar names what it trains
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


def test_generate_locomotion_resume_continues_the_behaviour_run(tmp_path, monkeypatch):
    """A run that ends outside the band keeps its last checkpoint; `--resume --max-itr N` trains on from there."""
    from script.dataset.generate_locomotion import main

    monkeypatch.setenv("DPPO_LOG_DIR", str(tmp_path / "log"))
    common = ["--task", "hopper-medium-v2", "--band", "1e9", "2e9", "--transitions", "100", "--eval-every", "1"]
    common += ["--n-envs", "2", "--n-steps", "20", "--data-dir", str(tmp_path / "data")]
    first = main([*common, "--max-itr", "1"])
    assert first["behaviour_itr"] == 1  # never in the (impossible) band: trained to --max-itr
    second = main([*common, "--max-itr", "3", "--resume"])
    assert second["behaviour_itr"] == 3
    runs = sorted((tmp_path / "log/gym-behaviour/hopper-medium-v2").glob("behaviour*/metrics.jsonl"))
    steps = [[json.loads(line)["step"] for line in run.read_text().splitlines()] for run in runs]
    assert min(steps[1]) >= 1 and max(steps[1]) == 3  # the resumed run starts where the first one ended
