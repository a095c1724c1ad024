"""Checkpoint writes: atomic under a failing write, and a Ctrl-C during a write finishes it before interrupting."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from agent import checkpoint
from agent.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def python_sigint_handler():
    """Python's own SIGINT handler (a test run in the background may have SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_failing_write_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path: Path, monkeypatch):
    path = save_checkpoint(tmp_path / "state_1.pt", {"model": {"w": torch.zeros(3)}})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_1.pt"]


def test_ctrl_c_during_a_write_completes_the_checkpoint_then_interrupts(
    tmp_path: Path, monkeypatch, python_sigint_handler
):
    real_save = torch.save

    def save_interrupted(obj, f):  # the user presses Ctrl-C while the file is being written
        os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "state_2.pt", {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(tmp_path / "state_2.pt")["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_2.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_without_ctrl_c_nothing_is_raised_and_the_handler_is_restored(tmp_path: Path, python_sigint_handler):
    save_checkpoint(tmp_path / "state_3.pt", {"model": {}})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _load_weights_only(path: Path) -> dict:
    """`torch.load` with only its own allow-list (no numpy globals): what every checkpoint written now must pass."""
    return torch.load(path, map_location="cpu", weights_only=True)


def test_plain_payload_turns_numpy_paths_and_configs_into_loadable_values(tmp_path: Path):
    import numpy as np
    from omegaconf import OmegaConf

    state = torch.nn.Linear(2, 3).state_dict()
    payload = {
        "model": state,
        "normalization": {"obs_min": np.array([-1.0, 2.5], dtype=np.float32)},
        "scalar": np.float64(0.25),
        "flag": np.bool_(True),
        "where": tmp_path / "x",
        "config": OmegaConf.create({"a": [1, {"b": 2}]}),
        "rng": ("MT19937", (1, 2), None),
    }
    save_checkpoint(tmp_path / "state_1.pt", payload)
    raw = _load_weights_only(tmp_path / "state_1.pt")
    assert raw["scalar"] == 0.25 and type(raw["scalar"]) is float and raw["flag"] is True
    assert raw["where"] == str(tmp_path / "x") and raw["config"] == {"a": [1, {"b": 2}]}
    assert raw["rng"] == ("MT19937", (1, 2), None)
    assert raw["normalization"]["obs_min"].dtype == torch.float32
    assert list(raw["model"]._metadata) == list(state._metadata)  # state-dict versions survive
    loaded = load_checkpoint(tmp_path / "state_1.pt")
    assert isinstance(loaded["normalization"]["obs_min"], np.ndarray)
    np.testing.assert_array_equal(loaded["normalization"]["obs_min"], [-1.0, 2.5])


def test_a_checkpoint_with_numpy_arrays_written_before_still_loads(tmp_path: Path):
    import numpy as np

    payload = {"model": {}, "normalization": {"obs_min": np.zeros(2)}, "rng": {"numpy": np.random.get_state()}}
    torch.save(payload, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["rng"]["numpy"][0] == "MT19937" and loaded["normalization"]["obs_min"].shape == (2,)


def test_a_checkpoint_that_needs_unpickling_is_refused_unless_allowed(tmp_path: Path):
    import datetime

    from agent.errors import DataError

    torch.save({"model": {}, "when": datetime.date(2026, 1, 1)}, tmp_path / "state_1.pt")
    with pytest.raises(DataError, match=r"needs arbitrary unpickling .*datetime.*allow_pickle=true"):
        load_checkpoint(tmp_path / "state_1.pt")
    assert load_checkpoint(tmp_path / "state_1.pt", allow_pickle=True)["when"] == datetime.date(2026, 1, 1)


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path):
    import random

    import numpy as np

    from agent.utils import rng_state, set_rng_state

    save_checkpoint(tmp_path / "state_1.pt", {"model": {}, "rng": rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(_load_weights_only(tmp_path / "state_1.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_non_finite_weights_are_never_written(tmp_path: Path):
    from agent.checkpoint import NonFiniteCheckpointError, non_finite_weights

    critic = {"w": torch.tensor([1.0, float("inf")])}
    payload = {"model": {"a": torch.ones(2)}, "algorithm": {"modules": {"critic": critic}, "optimizers": {}}}
    assert non_finite_weights(payload) == ["algorithm.modules.critic.w"]
    with pytest.raises(NonFiniteCheckpointError, match="algorithm.modules.critic.w"):
        save_checkpoint(tmp_path / "state_1.pt", payload)
    assert not list(tmp_path.iterdir())
    nan_step = {"model": {"a": torch.ones(2)}, "algorithm": {"optimizers": {"x": {"v": torch.tensor(float("nan"))}}}}
    assert non_finite_weights(nan_step) == []  # optimiser state is not a weight


def test_every_checkpoint_the_agents_write_loads_weights_only(tmp_dirs: Path):
    """Pretraining (normalization, RNG, optimizer, scheduler, generator), on-policy fine-tuning with a running
    reward scaler, and a replay loop with its buffer saved: all load with `torch.load(weights_only=True)`."""
    from agent.checkpoint import latest_checkpoint
    from agent.finetune.ppo import PPOAgent
    from tests.unit.test_baselines_bandit import agent_class, baseline_config
    from tests.unit.test_ppo_bandit import finetune_config, pretrain, write_demos

    write_demos(tmp_dirs / "data")
    base = pretrain("diffusion", epochs=1, extra=["normalization_path=${data_dir}/gym/bandit-v0/normalization.npz"])
    raw = _load_weights_only(latest_checkpoint(base))
    assert set(raw["normalization"]) == {"obs_min", "obs_max", "action_min", "action_max"}
    ppo = PPOAgent(finetune_config("diffusion", base, 1, ["train.reward_scale_running=true"]))
    ppo.run()
    assert _load_weights_only(latest_checkpoint(ppo.logdir))["reward_scaler"]["count"] > 1
    dql = agent_class("dql")(baseline_config("dql", base, 1, ["train.save_replay_buffer=true"]))
    dql.run()
    assert _load_weights_only(latest_checkpoint(dql.logdir))["replay_buffer"]["n_filled"] > 0
