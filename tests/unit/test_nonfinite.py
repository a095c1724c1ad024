"""Divergence (issue 14.2): a NaN/inf loss or weight stops pretraining and fine-tuning with one line naming the step
and the last good checkpoint, nothing non-finite is saved, `train.nan_policy=skip_batch` skips such batches, and
base-policy discovery passes over a non-finite checkpoint."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

from agent.checkpoint import checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint
from agent.config import CFG_ROOT, compose
from agent.errors import ConfigError, DataError
from agent.finetune.loading import resolve_checkpoint
from agent.nonfinite import DivergedError, non_finite_losses, non_finite_parameters
from agent.pretrain import PretrainAgent
from tests.conftest import make_demo_npz

HOPPER = CFG_ROOT / "gym/pretrain/hopper-medium-v2"


def _pretrain_agent(tmp_dirs: Path, extra: list[str] = ()) -> PretrainAgent:
    make_demo_npz(tmp_dirs / "data/gym/hopper-medium-v2/train.npz", 11, 3, (30, 30))
    overrides = ["device=cpu", "wandb=null", "train.batch_size=16", "model.network.mlp_dims=[32,32,32]", *extra]
    return PretrainAgent(compose(HOPPER, "pre_diffusion_mlp", overrides))


def _all_finite(run: Path) -> bool:
    for _, path in list_checkpoints(run):
        ckpt = load_checkpoint(path)
        for part in ("model", "ema"):
            if not all(torch.isfinite(v).all() for v in ckpt[part].values() if v.is_floating_point()):
                return False
    return True


def test_loss_and_parameter_checks_by_hand():
    metrics = {"pg_loss": float("nan"), "v_loss": 1.0, "explained_variance": float("nan"), "loss_inf": math.inf}
    assert non_finite_losses(metrics) == ["pg_loss", "loss_inf"]  # not-a-loss NaN (explained variance) is fine
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert non_finite_parameters([("model", net)]) == []
    with torch.no_grad():
        net[0].bias[1] = math.inf
    net[1].running_var.fill_(float("nan"))
    assert non_finite_parameters([("model", net)]) == ["model.0.bias", "model.1.running_var"]


def test_pretraining_with_a_huge_learning_rate_stops_naming_the_epoch_and_last_good_checkpoint(tmp_dirs: Path):
    agent = _pretrain_agent(tmp_dirs, ["train.n_epochs=20", "train.save_model_freq=1", "train.learning_rate=1e6"])
    with pytest.raises(DivergedError) as err:
        agent.run()
    message = str(err.value)
    last = latest_checkpoint(agent.logdir)
    assert f"at epoch {agent.epoch} (batches " in message and "train.learning_rate=1000000.0" in message
    assert f"last good checkpoint: {last if last else 'none'}" in message and "\n" not in message
    assert agent.epoch < 20 and _all_finite(agent.logdir)


def test_skip_batch_policy_makes_no_step_from_a_nan_batch(tmp_dirs: Path):
    agent = _pretrain_agent(tmp_dirs, ["train.nan_policy=skip_batch"])
    agent.epoch = 1
    batch = agent.dataset.get_batch(torch.arange(16))
    before = [p.detach().clone() for p in agent.model.parameters()]
    real_loss = agent.model.loss
    agent.model.loss = lambda actions, cond: real_loss(actions, cond) * float("nan")
    assert agent.train_step(batch) is None and agent.n_batches == 1
    assert all(torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))
    agent.model.loss = real_loss
    assert torch.isfinite(agent.train_step(batch)) and agent.n_batches == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))


def test_skip_batch_policy_stops_when_every_batch_is_skipped(tmp_dirs: Path):
    agent = _pretrain_agent(tmp_dirs, ["train.nan_policy=skip_batch", "train.n_epochs=2"])
    agent.model.loss = lambda actions, cond: torch.tensor(float("inf"))
    with pytest.raises(DivergedError, match=r"non-finite loss at epoch 1 \(batches 0-"):
        agent.run()
    assert latest_checkpoint(agent.logdir) is None


def test_bad_nan_policy_is_a_config_error(tmp_dirs: Path):
    with pytest.raises(ConfigError, match="train.nan_policy must be one of stop, skip_batch, got 'ignore'"):
        _pretrain_agent(tmp_dirs, ["train.nan_policy=ignore"])


def test_finetuning_with_a_huge_critic_learning_rate_stops_before_saving(tmp_dirs: Path):
    from agent.finetune.ppo import PPOAgent
    from tests.unit.test_ppo_bandit import finetune_config, pretrain, write_demos

    write_demos(tmp_dirs / "data")
    base = pretrain("diffusion", epochs=1)
    extra = ["train.critic_lr=1e30", "train.critic_lr_scheduler.min_lr=1e30", "train.save_model_freq=1"]
    agent = PPOAgent(finetune_config("diffusion", base, 5, extra))
    with pytest.raises(DivergedError) as err:
        agent.run()
    message = str(err.value)
    assert f"at iteration {agent.itr};" in message and "train.critic_lr=1e+30" in message, message
    assert agent.itr < 5 and _all_finite(agent.logdir)
    for _, path in list_checkpoints(agent.logdir):
        critic = load_checkpoint(path)["algorithm"]["modules"]["critic"]
        assert all(torch.isfinite(v).all() for v in critic.values())


def test_base_policy_discovery_passes_over_a_non_finite_checkpoint(tmp_dirs: Path):
    """An experiment folder whose newest run diverged (its checkpoint written before such writes were refused)."""
    from agent.finetune.loading import load_policy_weights

    agent = _pretrain_agent(tmp_dirs, ["train.n_epochs=1"])
    agent.run()
    good = latest_checkpoint(agent.logdir)
    ckpt = load_checkpoint(good)
    ckpt["ema"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["ema"].items()}
    newer = checkpoint_path(agent.logdir.parent / "later_run", 3)
    newer.parent.mkdir(parents=True)
    torch.save(ckpt, newer)
    os.utime(newer, (time.time() + 10, time.time() + 10))
    assert resolve_checkpoint(agent.logdir.parent) == good
    assert resolve_checkpoint(newer) == newer  # named explicitly: returned, then refused when loaded
    with pytest.raises(DataError, match="holds non-finite weights .*use an earlier checkpoint"):
        load_policy_weights(agent.ema.model, load_checkpoint(newer), agent.cfg, newer)
