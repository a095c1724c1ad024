"""Rollout buffer, GAE (termination vs truncation, hand-computed) and the running reward scaler.

See docs/algorithms.md#gae and #reward-scaling.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.finetune.buffer import RolloutBuffer, compute_gae
from agent.finetune.reward_scaling import RunningRewardScaler

GAMMA, LAM = 0.9, 0.8


def make_buffer(s: int = 4, e: int = 2, k: int = 3) -> RolloutBuffer:
    return RolloutBuffer(s, e, {"state": ((1, 3), torch.float32), "rgb": ((1, 3, 4, 4), torch.uint8)}, (k + 1, 2, 2))


def test_gae_matches_hand_computation_with_termination_and_truncation():
    """env 0 terminates at t=1, env 1 is truncated at t=2 (V(final_obs)=5); S=4 steps, last values given."""
    buf = make_buffer()
    r = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 1.0]]  # [env][t]
    v = [[0.5, 0.6, 0.7, 0.8], [1.5, 1.2, 1.1, 0.3]]
    buf.rewards.copy_(torch.tensor(r).T)
    buf.values.copy_(torch.tensor(v).T)
    buf.terminated[1, 0] = True
    buf.truncated[2, 1] = True
    buf.bootstrap_values[2, 1] = 5.0
    buf.last_values.copy_(torch.tensor([0.9, 2.0]))
    buf.compute_advantages(GAMMA, LAM)
    g, gl = GAMMA, GAMMA * LAM

    # env 0: t=3 bootstraps with the last value; t=1 is terminal (no bootstrap, no accumulation).
    a3 = 4.0 + g * 0.9 - 0.8
    a2 = (3.0 + g * 0.8 - 0.7) + gl * a3
    a1 = 2.0 - 0.6
    a0 = (1.0 + g * 0.6 - 0.5) + gl * a1
    # env 1: t=2 is truncated: bootstrap with V(final_obs) = 5.0 (not V of the next episode's state, 0.3), and the
    # accumulation does not reach back across the boundary from t=3.
    b3 = 1.0 + g * 2.0 - 0.3
    b2 = 2.0 + g * 5.0 - 1.1
    b1 = (-1.0 + g * 1.1 - 1.2) + gl * b2
    b0 = (0.5 + g * 1.2 - 1.5) + gl * b1
    expected = torch.tensor([[a0, a1, a2, a3], [b0, b1, b2, b3]]).T
    torch.testing.assert_close(buf.advantages, expected)
    torch.testing.assert_close(buf.returns, expected + torch.tensor(v).T)


def test_gae_reward_scale_and_explicit_rewards():
    buf = make_buffer(s=2, e=1)
    buf.rewards.fill_(1.0)
    buf.terminated[1, 0] = True
    scaled = torch.tensor([[2.0], [3.0]])
    buf.compute_advantages(0.5, 1.0, rewards=scaled, reward_scale=10.0)
    # values are zero: A1 = 30, A0 = 20 + 0.5 * 30
    torch.testing.assert_close(buf.advantages, torch.tensor([[35.0], [30.0]]))


def test_gae_lambda_zero_is_one_step_td_and_lambda_one_is_monte_carlo():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.2], [0.4], [0.1]])
    nxt = torch.tensor([[0.4], [0.1], [7.0]])
    term = torch.zeros(3, 1, dtype=torch.bool)
    trunc = torch.zeros(3, 1, dtype=torch.bool)
    adv0, _ = compute_gae(rewards, values, nxt, term, trunc, 0.9, 0.0)
    torch.testing.assert_close(adv0, rewards + 0.9 * nxt - values)
    _, ret1 = compute_gae(rewards, values, nxt, term, trunc, 0.9, 1.0)
    mc = torch.tensor([[1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 7], [2 + 0.9 * 3 + 0.81 * 7], [3 + 0.9 * 7]])
    torch.testing.assert_close(ret1, mc)


def test_buffer_add_and_flat_views():
    buf = make_buffer(s=3, e=2, k=2)
    for t in range(3):
        buf.bootstrap_values[t] = 9.0  # add() must clear a previous rollout's bootstrap values
        buf.add(
            t,
            {"state": torch.full((2, 1, 3), float(t)), "rgb": torch.full((2, 1, 3, 4, 4), t, dtype=torch.uint8)},
            torch.full((2, 3, 2, 2), float(t)),
            torch.tensor([t, -t], dtype=torch.float32),
            torch.tensor([False, t == 1]),
            torch.tensor([t == 2, False]),
            torch.tensor([t == 0, t == 2]),
        )
    assert buf.obs["rgb"].dtype == torch.uint8 and buf.chains.shape == (3, 2, 3, 2, 2)
    flat = buf.flat_obs()
    assert flat["state"].shape == (6, 1, 3)
    # step-major flattening: row = t * E + e
    assert flat["state"][5, 0, 0] == 2.0 and flat["state"][2, 0, 0] == 1.0
    assert buf.rewards[2].tolist() == [2.0, -2.0] and buf.terminated[1, 1] and buf.truncated[2, 0]
    assert buf.firsts[:, 0].tolist() == [True, False, False] and (buf.bootstrap_values == 0).all()
    buf.values.copy_(torch.arange(6.0).view(3, 2))
    buf.last_values.copy_(torch.tensor([10.0, 11.0]))
    buf.bootstrap_values[2, 0] = 7.0
    nxt = buf.next_values()
    assert nxt[:, 0].tolist() == [2.0, 4.0, 7.0] and nxt[:, 1].tolist() == [3.0, 5.0, 11.0]


def test_reward_scaler_matches_reference_worked_example():
    scaler = RunningRewardScaler(2)
    rewards = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]])
    firsts = np.array([[1, 0, 0], [1, 0, 1]])
    out = scaler(rewards, firsts)
    assert scaler.var == pytest.approx(4.946428, rel=1e-6)
    np.testing.assert_allclose(out, [[0.449629, 0.899258, 1.348886], [0.224814, 0.0, 1.798515]], rtol=1e-5)
    np.testing.assert_allclose(scaler.ret, [5.9601, 4.0])


def test_reward_scaler_carries_the_return_and_state_round_trips():
    a, b = RunningRewardScaler(2), RunningRewardScaler(2)
    r1, f1 = np.array([[1.0, 2.0], [3.0, 1.0]]), np.array([[1, 0], [1, 0]])
    a(r1, f1)
    b.load_state_dict(a.state_dict())
    r2, f2 = np.array([[1.0, 1.0], [2.0, 0.5]]), np.array([[0, 0], [1, 0]])
    np.testing.assert_allclose(a(r2, f2), b(r2, f2))
    # env 0 continued its episode: its running return includes the previous call's (1 + 0.99*2).
    g = 2.0 + 0.99 * 1.0
    g = 1.0 + 0.99 * g
    assert a.ret[0] == pytest.approx(1.0 + 0.99 * g)
    assert a.ret[1] == pytest.approx(0.5 + 0.99 * 2.0)
    with pytest.raises(ValueError, match="envs"):
        RunningRewardScaler(3).load_state_dict(a.state_dict())


def test_reward_scaler_clips_and_does_not_center():
    scaler = RunningRewardScaler(1, clip=2.0)
    out = scaler(np.array([[100.0, 100.0, 100.0, -1e6]]), np.array([[1, 0, 0, 0]]))
    assert out.max() <= 2.0 and out.min() == -2.0
    assert (out[0, :3] > 0).all()  # no mean subtraction: positive rewards stay positive
