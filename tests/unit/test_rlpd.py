"""RLPD: the ensemble target and loss by hand, the offline transitions a dataset yields, and learning on the bandit
task of `test_ppo_bandit` from scratch with half of each batch from an offline dataset (and not learning with the
actor held back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from agent.config import CFG_ROOT, compose
from agent.finetune.offline import OfflineTransitions
from agent.finetune.rlpd import RLPDAgent, pair_min_target
from agent.logger import read_metrics
from tests.unit.test_ppo_bandit import BANDIT, TARGET, TASK, TE, mean_reward, write_demos


def test_pair_min_target_by_hand():
    """Target heads [3, 5, 4] at (s', a'), pair (0, 1), r = 1, gamma = 0.99, alpha = 0.1, log pi = -2:
    y = 1 + 0.99 * 3 + 0.99 * 0.1 * 2 = 4.168; without the entropy term 3.97; terminal: 1."""
    q = torch.tensor([[3.0, 3.0], [5.0, 5.0], [4.0, 4.0]])
    rewards, terminated = torch.ones(2), torch.tensor([0.0, 1.0])
    y = pair_min_target(q, (0, 1), rewards, terminated, 0.99, entropy=torch.full((2,), 0.1 * 2.0))
    torch.testing.assert_close(y, torch.tensor([4.168, 1.0]))
    y = pair_min_target(q, (1, 0), rewards, terminated, 0.99, entropy=None)
    torch.testing.assert_close(y, torch.tensor([3.97, 1.0]))
    members, target = torch.tensor([[4.0], [4.0]]), torch.tensor([3.0])
    assert (members - target).square().mean().item() == pytest.approx(1.0)  # the mean over members, as RLPD's


def test_offline_transitions_keep_steps_with_a_known_successor(tmp_path: Path):
    """Trajectories of 3 and 2 steps, the second ending in a terminal state: steps 0, 1 of the first (its last step
    has no known s') and both steps of the second; observations and actions normalised as the env's."""
    states = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # s_t = (t, t)
    actions = np.linspace(-2, 2, 5, dtype=np.float32)[:, None]
    path = tmp_path / "train.npz"
    np.savez(
        path, states=states, actions=actions, rewards=np.arange(5.0), terminals=[0, 0, 0, 0, 1], traj_lengths=[3, 2]
    )
    norm = {"obs_min": np.zeros(2), "obs_max": np.full(2, 4.0), "action_min": [-2.0], "action_max": [2.0]}
    data = OfflineTransitions(path, norm, torch.device("cpu"), reward_scale=0.5)
    assert len(data) == 4
    torch.testing.assert_close(data.rewards, torch.tensor([0.0, 0.5, 1.5, 2.0]))  # steps 0, 1, 3, 4
    torch.testing.assert_close(data.obs[:, 0, 0], torch.tensor([-1.0, -0.5, 0.5, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.next_obs[:2, 0, 0], torch.tensor([-0.5, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.terminated, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(data.actions[:, 0, 0], torch.tensor([-1.0, -0.5, 0.5, 1.0]), atol=1e-5, rtol=0)


def rlpd_config(n_itr: int, extra: list[str] = ()):
    """The halfcheetah `rlpd_mlp` config turned into a small bandit run from scratch."""
    overrides = [
        *TASK,
        "horizon_steps=1",  # RLPD replays single-step transitions: two 1-step chunks per bandit episode
        "act_steps=1",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        "env.n_envs=8",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.n_explore_steps=64",
        "train.batch_size=64",
        "train.replay_ratio=64",  # 8 x 8 / 64 x 64 = 64 critic steps per iteration
        "train.critic_updates_per_actor=2",
        "train.buffer_size=4096",
        "train.val_freq=1000",
        "train.save_model_freq=1000",
        "train.init_temperature=0.1",
        "train.actor_lr=1e-3",
        "train.actor_lr_scheduler.min_lr=1e-3",
        "train.critic_lr=1e-3",
        "train.critic_lr_scheduler.min_lr=1e-3",
        "model.network.mlp_dims=[64,64]",
        "model.critic.mlp_dims=[64,64]",
        "model.critic.n_critics=4",
        *extra,
    ]
    return compose(CFG_ROOT / "gym/scratch/halfcheetah-v2", "rlpd_mlp", overrides)


@pytest.mark.parametrize("warmup, learns", [(0, True), (1000, False)])
def test_rlpd_learns_the_bandit_from_scratch_with_offline_data(warmup: int, learns: bool, tmp_dirs: Path):
    """Offline transitions: the demonstrations (at the origin) with their bandit rewards. RLPD reaches near a* within
    20 iterations (per-step reward: the demonstrations about -0.52, a* 0); with the actor held back (a critic warm-up
    longer than the run) the untrained policy stays near the origin (seed 0: -0.66)."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    folder = tmp_dirs / "data" / "gym" / BANDIT
    with np.load(folder / "train.npz") as f:
        demos = {k: f[k] for k in f.files}
    demos["rewards"] = -((demos["actions"] - TARGET) ** 2).sum(axis=1)
    np.savez(folder / "train.npz", **demos)
    agent = RLPDAgent(rlpd_config(20, [f"train.n_critic_warmup_itr={warmup}"]))
    agent.run()
    after = mean_reward(read_metrics(agent.logdir), first=False)
    if learns:
        assert after > -0.2, after
    else:
        assert after < -0.4, after
