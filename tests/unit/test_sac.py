"""SAC: the tanh-squashed Gaussian's log-density and the temperature loss against hand computation, and learning on
the bandit task of `test_ppo_bandit` from scratch (and not learning with the actor's update disabled)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from agent.config import CFG_ROOT, compose
from agent.finetune.sac import SACAgent, temperature_loss
from agent.logger import read_metrics
from model.gaussian.model import GaussianModel
from tests.unit.test_ppo_bandit import BANDIT, TASK, TE, mean_reward, write_demos


@pytest.mark.parametrize("u, expected", [(0.0, -0.918939 - math.log(1 + 1e-6)), (1.0, -0.551380)])
def test_squashed_log_density_by_hand(u: float, expected: float):
    """D = 1, mean 0, std 1: log pi(tanh u) = log N(u; 0, 1) - log(1 - tanh(u)^2 + 1e-6)."""
    model = GaussianModel(nn.Identity(), horizon_steps=1, action_dim=1, squash=True)
    x = torch.tensor([[[u]]])
    a, logp = model.action_log_prob(x, torch.zeros_like(x), torch.ones_like(x))
    assert a.item() == pytest.approx(math.tanh(u)) and logp.item() == pytest.approx(expected, abs=1e-6)


def test_temperature_loss_by_hand():
    """log alpha = log 2, log pi = [-3, -1], H = -2: loss = -log 2 * mean(-5, -3) = 4 log 2; d/d log alpha = 4 > 0,
    so alpha falls while the entropy (mean 2) is above the target."""
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-3.0, -1.0], requires_grad=True), -2.0)
    assert loss.item() == pytest.approx(4 * math.log(2))
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(4.0)


def sac_config(n_itr: int, extra: list[str] = ()):
    """The halfcheetah `sac_mlp` config turned into a small bandit run from scratch."""
    overrides = [
        *TASK,
        f"horizon_steps={TE}",
        f"act_steps={TE}",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        "env.n_envs=8",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.n_explore_steps=64",
        "train.batch_size=64",
        "train.replay_ratio=32",  # 8 x 8 / 64 x 32 = 32 gradient steps per iteration
        "train.buffer_size=4096",
        "train.val_freq=1000",
        "train.save_model_freq=1000",
        "model.network.mlp_dims=[64,64]",
        "model.critic.mlp_dims=[64,64]",
        *extra,
    ]
    return compose(CFG_ROOT / "gym/scratch/halfcheetah-v2", "sac_mlp", overrides)


@pytest.mark.parametrize("warmup, learns", [(0, True), (1000, False)])
def test_sac_learns_the_bandit_from_scratch_only_through_its_actor(warmup: int, learns: bool, tmp_dirs: Path):
    """From random actions (mean chunk reward about -2.5) to near a* within 20 iterations (seed 0: -0.12 over the
    last three; with the temperature at DPPO's initial 1 the entropy bonus outweighs this bandit's rewards for
    longer, so it starts at 0.1 here); with the actor's update held back (a critic warm-up longer than the run) the
    policy stays random."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")  # for its normalization.npz (identity)
    lr = ["train.actor_lr=1e-3", "train.actor_lr_scheduler.min_lr=1e-3", "train.init_temperature=0.1"]
    lr.append(f"train.n_critic_warmup_itr={warmup}")
    agent = SACAgent(sac_config(20, [*lr, f"normalization_path={tmp_dirs}/data/gym/{BANDIT}/normalization.npz"]))
    agent.run()
    rows = read_metrics(agent.logdir)
    after = mean_reward(rows, first=False)
    if learns:
        assert after > -0.35, after
    else:
        assert after < -1.0, after
