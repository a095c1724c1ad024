"""IBRL: the bootstrap target and the proposal choice against hand computation, and learning on the bandit task of
`test_ppo_bandit` from a BC policy of the demonstrations (and not learning with the actor held back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.config import CFG_ROOT, compose
from agent.finetune.ibrl import IBRLAgent, bootstrap_target, choose_proposals
from agent.logger import read_metrics
from tests.unit.test_ppo_bandit import BANDIT, GAUSSIAN_NET, TARGET, TASK, TE, mean_reward, pretrain, write_demos


def test_bootstrap_takes_the_better_proposal():
    """q'_BC = 2 > q'_RL = 1.5: y = r + gamma 2; terminal: y = r."""
    y = bootstrap_target(
        torch.tensor([2.0, 2.0]), torch.tensor([1.5, 1.5]), torch.ones(2), torch.tensor([0.0, 1.0]), 0.9
    )
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 2.0, 1.0]))


def test_soft_choice_follows_the_softmax_of_beta_q():
    """beta = 10, q = (2, 1.5): P(BC) = 1 / (1 + e^-5) = 0.993307; without beta, the arg-max."""
    torch.manual_seed(0)
    q_bc, q_rl = torch.full((200_000,), 2.0), torch.full((200_000,), 1.5)
    assert choose_proposals(q_bc, q_rl, 10.0).float().mean().item() == pytest.approx(0.993307, abs=1e-3)
    assert choose_proposals(torch.tensor([2.0, 1.0]), torch.tensor([1.5, 1.5]), None).tolist() == [True, False]


def ibrl_config(base: Path, n_itr: int, extra: list[str] = ()):
    """The halfcheetah `ibrl_mlp` config turned into a small bandit run from the BC policy `base`."""
    overrides = [
        *TASK,
        *GAUSSIAN_NET,
        f"base_policy_path={base}",
        "horizon_steps=1",  # the demonstrations are replayed as single-step transitions: two chunks per episode
        "act_steps=1",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        "env.n_envs=8",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.batch_size=64",
        "train.replay_ratio=64",  # 8 x 8 / 64 x 64 = 64 critic steps per iteration
        "train.critic_updates_per_actor=2",
        "train.buffer_size=4096",
        "train.val_freq=1000",
        "train.save_model_freq=1000",
        "train.actor_lr=1e-3",
        "train.actor_lr_scheduler.min_lr=1e-3",
        "train.critic_lr=1e-3",
        "train.critic_lr_scheduler.min_lr=1e-3",
        "model.critic.mlp_dims=[64,64]",
        *extra,
    ]
    return compose(CFG_ROOT / "gym/finetune/halfcheetah-v2", "ibrl_mlp", overrides)


@pytest.mark.parametrize("warmup, learns", [(0, True), (1000, False)])
def test_ibrl_moves_past_its_bc_policy(warmup: int, learns: bool, tmp_dirs: Path):
    """The BC policy sits at the demonstrations (per-step reward about -0.52); the RL actor, started from it and
    trained on the critic, moves toward a*, and its proposals win; held back, the rollouts stay at the BC level."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    folder = tmp_dirs / "data" / "gym" / BANDIT
    with np.load(folder / "train.npz") as f:
        demos = {k: f[k] for k in f.files}
    demos["rewards"] = -((demos["actions"] - TARGET) ** 2).sum(axis=1)
    np.savez(folder / "train.npz", **demos)
    base = pretrain("gaussian", extra=["horizon_steps=1"])
    agent = IBRLAgent(ibrl_config(base, 20, [f"train.n_critic_warmup_itr={warmup}"]))
    agent.run()
    rows = read_metrics(agent.logdir)
    first, after = mean_reward(rows, first=True), mean_reward(rows, first=False)
    assert first < -0.4, first
    if learns:
        assert after > -0.2, after
    else:
        assert after < -0.4, after
