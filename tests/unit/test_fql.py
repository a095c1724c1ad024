"""Flow Q-learning: the normalised Q term by hand, the critic target, acting, and learning on the bandit task of
`test_ppo_bandit` (a pretrained rectified flow, demonstrations at the origin, reward optimum at a* = (0.5, -0.5))."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agent.config import CFG_ROOT, compose
from agent.finetune.fql import FQLAgent, normalized_q_term
from agent.logger import read_metrics
from tests.unit.test_ppo_bandit import FLOW_NET, TASK, TE, mean_reward, pretrain, write_demos


def test_normalized_q_term_by_hand():
    """q = [-2, 4]: lambda = 1 / mean|q| = 1/3, term = -lambda mean q = -1/3; d term / d q_i = -lambda / B, with no
    gradient through lambda."""
    q = torch.tensor([-2.0, 4.0], requires_grad=True)
    term = normalized_q_term(q, normalize=True)
    assert term.item() == pytest.approx(-1 / 3)
    term.backward()
    torch.testing.assert_close(q.grad, torch.full((2,), -1 / 6))
    assert normalized_q_term(torch.tensor([-2.0, 4.0]), normalize=False).item() == pytest.approx(-1.0)


def fql_config(base: Path, n_itr: int, extra: list[str] = ()):
    """The hopper `ft_fql_reflow_mlp` config turned into a small bandit run from `base`."""
    overrides = [
        *TASK,
        *FLOW_NET,
        f"base_policy_path={base}",
        f"horizon_steps={TE}",
        f"act_steps={TE}",
        "env.n_envs=16",
        f"env.max_episode_steps={TE}",
        "env.reset_at_iteration=true",
        "env.best_reward_threshold_for_success=null",
        f"train.n_train_itr={n_itr}",
        "train.n_steps=8",
        "train.val_freq=1000",
        "train.save_model_freq=1000",
        "train.buffer_size=4096",
        "train.batch_size=128",
        "train.replay_ratio=8",
        "train.scale_reward_factor=1",
        "train.n_critic_warmup_itr=1",
        "train.actor_lr=1e-3",
        "train.actor_lr_scheduler.min_lr=1e-3",
        "train.critic_lr=1e-2",
        "train.critic_lr_scheduler.min_lr=1e-2",
        "model.critic.mlp_dims=[64,64]",
        "model.actor_onestep.mlp_dims=[64,64]",
        *extra,
    ]
    return compose(CFG_ROOT / "gym/finetune/hopper-v2", "ft_fql_reflow_mlp", overrides)


@pytest.mark.parametrize("alpha, moves", [(3.0, True), (1000.0, False)])
def test_fql_moves_toward_the_optimum_unless_the_distillation_holds_it(alpha: float, moves: bool, tmp_dirs: Path):
    """With the default distillation weight (3) the one-step actor follows the critic to a* (seed 0: mean chunk reward
    -1.15 -> -0.13, final evaluation -0.07); with a huge one it stays a copy of the behaviour flow (the
    demonstrations, about -1.15 throughout), so the rise comes from the Q term."""
    torch.manual_seed(0)
    write_demos(tmp_dirs / "data")
    base = pretrain("reflow")
    agent = FQLAgent(fql_config(base, 20, [f"train.alpha={alpha}"]))
    agent.run()
    rows = read_metrics(agent.logdir)
    after = mean_reward(rows, first=False)
    evals = [r["eval/episode_return"] for r in rows if "eval/episode_return" in r]
    if moves:
        assert after > -0.4 and evals[-1] > -0.4, (after, evals)
    else:
        assert after < -0.7, after
