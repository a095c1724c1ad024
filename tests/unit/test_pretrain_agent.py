"""The pretraining agent's EMA cadence against hand computation, and an exact checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from agent.checkpoint import latest_checkpoint
from agent.config import CFG_ROOT, compose
from agent.pretrain import PretrainAgent
from tests.conftest import make_demo_npz

HOPPER = CFG_ROOT / "gym/pretrain/hopper-medium-v2"


def _agent(tmp_dirs: Path, extra: list[str] = ()) -> PretrainAgent:
    make_demo_npz(tmp_dirs / "data/gym/hopper-medium-v2/train.npz", 11, 3, (30, 30))
    overrides = ["device=cpu", "wandb=null", "train.batch_size=16", "model.network.mlp_dims=[32,32,32]", *extra]
    return PretrainAgent(compose(HOPPER, "pre_diffusion_mlp", overrides))


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_ema_steps_on_global_batches_0_3_6_with_the_decay(tmp_dirs: Path):
    d = 0.9
    agent = _agent(tmp_dirs, ["train.update_ema_freq=3", "train.epoch_start_ema=0", f"ema.decay={d}"])
    agent.epoch = 1
    batch = agent.dataset.get_batch(torch.arange(16))
    expected = _params(agent.ema.model)
    for n in range(7):
        agent.train_step(batch)
        if n % 3 == 0:  # DPPO tests the counter before incrementing it: batches 0, 3, 6
            expected = [d * e + (1 - d) * p for e, p in zip(expected, _params(agent.model))]
        for e, p in zip(expected, agent.ema.model.parameters()):
            torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
    assert agent.n_batches == 7


def test_ema_copies_the_weights_before_epoch_start_ema(tmp_dirs: Path):
    agent = _agent(tmp_dirs, ["train.update_ema_freq=1", "train.epoch_start_ema=5"])
    agent.epoch = 2
    agent.train_step(agent.dataset.get_batch(torch.arange(16)))
    for e, p in zip(agent.ema.model.parameters(), agent.model.parameters()):
        assert torch.equal(e, p)


def test_checkpoint_round_trip_restores_model_ema_optimizer_exactly(tmp_dirs: Path):
    agent = _agent(tmp_dirs, ["train.n_epochs=2", "train.epoch_start_ema=0", "train.update_ema_freq=1"])
    agent.run()
    ckpt = latest_checkpoint(agent.logdir)
    assert ckpt.name == "state_2.pt"
    # EMA and raw weights differ after two epochs of updates, so a swapped restore would be caught
    assert any(not torch.equal(a, b) for a, b in zip(agent.ema.model.parameters(), agent.model.parameters()))

    fresh = _agent(tmp_dirs, ["train.n_epochs=2", f"resume={ckpt}"])
    assert fresh.epoch == 2 and fresh.n_batches == agent.n_batches
    for name, src, dst in [("model", agent.model, fresh.model), ("ema", agent.ema.model, fresh.ema.model)]:
        a, b = src.state_dict(), dst.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k} differs after the round trip"
    s0, s1 = agent.optimizer.state_dict()["state"], fresh.optimizer.state_dict()["state"]
    assert s0.keys() == s1.keys()
    for k in s0:
        assert torch.equal(s0[k]["exp_avg"], s1[k]["exp_avg"])
    assert fresh.scheduler.get_last_lr() == agent.scheduler.get_last_lr()


def test_batch_larger_than_the_dataset_warns(tmp_dirs: Path):
    """60 steps with horizon 4 give 54 windows: a batch of 1000 is one smaller batch per epoch, said once."""
    log = (_agent(tmp_dirs, ["train.batch_size=1000"]).logdir / "run.log").read_text()
    assert log.count("larger than the dataset") == 1
    assert (
        "train.batch_size=1000 is larger than the dataset's 54 training windows: every epoch is one smaller batch; "
        "lower train.batch_size" in log
    )
    assert "larger than the dataset" not in (_agent(tmp_dirs, ["train.batch_size=54"]).logdir / "run.log").read_text()
