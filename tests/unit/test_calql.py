"""Cal-QL: the calibrated conservative penalty and the max-backup target by hand, Monte-Carlo returns of the buffer
and of the dataset, and the two stages on the bandit task of `test_ppo_bandit`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from agent.config import CFG_ROOT, compose
from agent.finetune.calql import CalQLAgent, CalQLOfflineAgent, conservative_penalty, max_backup_target
from agent.finetune.offline import OfflineTransitions
from agent.finetune.replay_buffer import ReplayBuffer
from agent.logger import read_metrics
from tests.unit.test_ppo_bandit import BANDIT, TARGET, TASK, TE, write_demos


@pytest.mark.parametrize("mc_return, expected", [(-1.0, 5 * math.log(6)), (1.0, 5 * math.log(4 + 2 * math.e))])
def test_conservative_penalty_by_hand(mc_return: float, expected: float):
    """B = 1, D = 1, one head, lambda = 5, two uniform actions, Q = 0 everywhere, log-probs 0: with R = -1 (the floor
    inactive) log(2 e^{ln 2} + 2 e^0) = ln 6, C = 8.958797; with R = 1, ln(4 + 2e), C = 11.222959."""
    zero = torch.zeros(1)
    c = conservative_penalty(zero, torch.zeros(2, 1), zero, zero, zero, zero, torch.tensor([mc_return]), 1, 5.0)
    assert c.item() == pytest.approx(expected, abs=1e-5)


def test_max_backup_target_by_hand():
    """Min-twin values [1, 7, 3] of three next-action samples, r = 0, gamma = 0.5: y = 3.5; terminal: 0."""
    y = max_backup_target(
        torch.tensor([[1.0, 1.0], [7.0, 7.0], [3.0, 3.0]]), torch.zeros(2), torch.tensor([0.0, 1.0]), 0.5
    )
    torch.testing.assert_close(y, torch.tensor([3.5, 0.0]))


def test_returns_to_go_of_the_buffer_stop_at_episode_ends():
    buf = ReplayBuffer(8, 1, {"state": ((1, 1), torch.float32)}, (1, 1))
    s, a = {"state": torch.zeros(1, 1, 1)}, torch.zeros(1, 1, 1)
    for r, end in ((1.0, False), (2.0, True), (4.0, False), (8.0, False)):
        buf.add(s, a, torch.tensor([r]), s, torch.tensor([end]), torch.tensor([end]))
    g = buf.returns_to_go(0.5)[:4]
    torch.testing.assert_close(
        g, torch.tensor([1 + 0.5 * 2, 2.0, 4 + 0.5 * 8, 8.0])
    )  # the running episode: no bootstrap


def test_offline_returns_to_go_per_trajectory(tmp_path: Path):
    path = tmp_path / "train.npz"
    states, actions = np.zeros((5, 1), np.float32), np.zeros((5, 1), np.float32)
    np.savez(path, states=states, actions=actions, rewards=[1.0, 1.0, 1.0, 2.0, 2.0], traj_lengths=[3, 2])
    norm = {"obs_min": [-1.0], "obs_max": [1.0], "action_min": [-1.0], "action_max": [1.0]}
    data = OfflineTransitions(path, norm, torch.device("cpu"), reward_scale=1.0, gamma=0.5)
    # kept: steps 0, 1 of the first trajectory and step 0 of the second (last steps without a terminal are dropped)
    torch.testing.assert_close(data.mc_returns, torch.tensor([1.75, 1.5, 3.0]))


def calql_overrides(n_itr: int, extra: list[str] = ()) -> list[str]:
    return [
        *TASK,
        "horizon_steps=1",  # Cal-QL replays single-step transitions: two chunks per bandit episode
        "act_steps=1",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        "env.n_envs=8",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.batch_size=64",
        "train.replay_ratio=64",
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
        *extra,
    ]


@pytest.mark.parametrize("warmup, learns", [(0, True), (1000, False)])
def test_calql_offline_then_online_on_the_bandit(warmup: int, learns: bool, tmp_dirs: Path):
    """The offline stage on the demonstrations (at the origin, with their bandit rewards, scaled by 20 so that the
    conservative penalty does not dominate rewards this small) already beats them: evaluation return -1.17 -> -0.84
    (seed 0; the demonstrations about -1.05, a* 0); with its actor held back it stays. The online stage then starts
    from that run, critics and temperature included, and runs."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    folder = tmp_dirs / "data" / "gym" / BANDIT
    with np.load(folder / "train.npz") as f:
        demos = {k: f[k] for k in f.files}
    demos["rewards"] = -((demos["actions"] - TARGET) ** 2).sum(axis=1)
    np.savez(folder / "train.npz", **demos)
    extra = ["train.scale_reward_factor=20", f"train.n_critic_warmup_itr={warmup}"]
    offline = CalQLOfflineAgent(
        compose(CFG_ROOT / "gym/pretrain/halfcheetah-medium-v2", "calql_mlp_offline", calql_overrides(5, extra))
    )
    offline.run()
    rows = read_metrics(offline.logdir)
    evals = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
    assert all(r.get("train/env_steps", 0) == 0 for r in rows)  # offline: no env steps
    if learns:
        assert evals[-1] > -0.95, evals
    else:
        assert evals[-1] < -1.05, evals
        return
    online_cfg = compose(
        CFG_ROOT / "gym/finetune/halfcheetah-v2",
        "calql_mlp_online",
        calql_overrides(2, ["train.scale_reward_factor=20", f"base_policy_path={offline.logdir}"]),
    )
    agent = CalQLAgent(online_cfg)
    saved = offline.algorithm.modules["critic"].state_dict()
    for key, value in agent.algorithm.modules["critic"].state_dict().items():
        torch.testing.assert_close(value, saved[key])  # the warm start
    agent.run()
    assert [r["step"] for r in read_metrics(agent.logdir) if "train/reward_mean" in r] == [1, 2]
