"""Diffusion RL baselines: the replay buffer, the shared helpers against hand computation, each update rule lowering
its own objective on a fixed batch, IDQL's candidate selection, and the replay loop's transition storage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import get_class
from torch import Tensor, nn

from agent.config import CFG_ROOT, compose
from agent.finetune.awr import AWR
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.dipo import DIPO
from agent.finetune.dql import DQL
from agent.finetune.idql import IDQL
from agent.finetune.qsm import QSM
from agent.finetune.replay import ReplayConfig
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.finetune.rwr import RWR, completed_episode_returns
from agent.logger import read_metrics
from agent.optim import polyak_update
from agent.schemas import load_block
from model.common.critic import CriticObs, CriticObsAct
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.mlp_diffusion import DiffusionMLP

DO, DA, TA, B = 3, 2, 2, 64
OPTIM = {"actor": (1e-3, 0.0, None), "critic": (1e-2, 0.0, None)}


def make_policy(seed: int = 0) -> DiffusionModel:
    torch.manual_seed(seed)
    net = DiffusionMLP(DA, TA, DO, time_dim=8, mlp_dims=(32, 32))
    return DiffusionModel(net, TA, DO, DA, denoising_steps=5, randn_clip_value=3.0)


def q_critic() -> CriticObsAct:
    return CriticObsAct(DO, [32, 32], DA, action_steps=TA)


def replay_config(**kw) -> ReplayConfig:
    base = dict(
        gamma=0.9, batch_size=B, n_updates=1, n_critic_warmup_itr=0, tau=0.005, max_grad_norm=None, act_steps=TA
    )
    return ReplayConfig(**{**base, **kw})


def fixed_batch(seed: int = 1) -> Transitions:
    g = torch.Generator().manual_seed(seed)
    obs = {"state": torch.rand(B, 1, DO, generator=g) * 2 - 1}
    actions = torch.tanh(torch.randn(B, TA, DA, generator=g))
    return Transitions(
        obs=obs,
        actions=actions,
        rewards=-(actions - 0.5).square().sum(dim=(1, 2)),
        next_obs={"state": torch.rand(B, 1, DO, generator=g) * 2 - 1},
        terminated=(torch.rand(B, generator=g) < 0.3).float(),
        indices=torch.arange(B),
    )


def buffer_of(batch: Transitions) -> ReplayBuffer:
    """A buffer holding exactly the batch (one step of B envs)."""
    buf = ReplayBuffer(B, B, {"state": ((1, DO), torch.float32)}, (TA, DA))
    buf.add(batch.obs, batch.actions, batch.rewards, batch.next_obs, batch.terminated.bool(), batch.terminated.bool())
    return buf


def seeded(fn) -> float:
    """Evaluate a stochastic objective with a fixed seed, so that before/after differ only by the parameters."""
    torch.manual_seed(1234)
    return float(fn().detach())


# ------------------------------------------------------------------------------------------------------------------
# buffer and helpers


def test_replay_buffer_ring_order_sampling_and_writeback():
    buf = ReplayBuffer(7, 2, {"state": ((1, 1), torch.float32)}, (1, 1))  # 3 slots of 2 envs
    assert buf.n_slots == 3 and buf.capacity == 6 and len(buf) == 0
    for step in range(5):  # steps 0..4, so 0 and 1 are overwritten
        s = torch.tensor([[[10.0 * step]], [[10.0 * step + 1]]])
        buf.add({"state": s}, s, s.view(2), {"state": s + 100}, torch.zeros(2, dtype=torch.bool), torch.tensor([1, 0]))
    assert len(buf) == 6 and buf.pos == 2
    order = buf.time_order()
    assert order.tolist() == [2, 0, 1]  # slot 2 holds step 2, then steps 3 and 4 in slots 0 and 1
    assert buf.obs["state"][order, 0].flatten().tolist() == [20.0, 30.0, 40.0]
    torch.manual_seed(0)
    idx = buf.sample_indices(4000)
    assert idx.min() == 0 and idx.max() == 5
    counts = torch.bincount(idx, minlength=6).float()
    assert (counts - 4000 / 6).abs().max() < 120  # uniform with replacement
    batch = buf.gather(torch.tensor([1, 4]))  # slot 0 env 1 (step 3), slot 2 env 0 (step 2)
    assert batch.obs["state"].flatten().tolist() == [31.0, 20.0]
    assert batch.next_obs["state"].flatten().tolist() == [131.0, 120.0]
    buf.set_actions(torch.tensor([1]), torch.full((1, 1, 1), -7.0))
    assert buf.actions[0, 1].item() == -7.0
    assert buf.episode_end[1].tolist() == [True, False]
    buf.mark_interrupted()  # envs reset after step 4 (slot 1): its successors are new episodes
    assert buf.episode_end[1].tolist() == [True, True]
    copy = ReplayBuffer(7, 2, {"state": ((1, 1), torch.float32)}, (1, 1))
    copy.load_state_dict(buf.state_dict())
    assert copy.pos == 2 and len(copy) == 6 and torch.equal(copy.actions, buf.actions)
    assert torch.equal(copy.time_order(), order)


def test_polyak_update_closed_form():
    target, source = nn.Linear(2, 1), nn.Linear(2, 1)
    t0, s0 = target.weight.detach().clone(), source.weight.detach().clone()
    polyak_update(target, source, 0.25)
    torch.testing.assert_close(target.weight, 0.75 * t0 + 0.25 * s0)


def test_per_sample_diffusion_loss_is_the_hand_computed_noise_error_and_averages_to_the_policy_loss():
    policy = make_policy()
    batch = fixed_batch()
    torch.manual_seed(5)
    per_sample = policy.loss_per_sample(batch.actions, batch.obs)
    # by hand: the same draws (t, then eps), x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps, mean (eps_theta - eps)^2
    torch.manual_seed(5)
    t = torch.randint(0, policy.denoising_steps, (B,))
    eps = torch.randn_like(batch.actions)
    abar = torch.cumprod(1.0 - policy.betas, dim=0)[t].view(B, 1, 1)
    x_t = abar.sqrt() * batch.actions + (1.0 - abar).sqrt() * eps
    expected = (policy.network(x_t, t, batch.obs) - eps).square().mean(dim=(1, 2))
    assert per_sample.shape == (B,)
    torch.testing.assert_close(per_sample, expected)
    torch.manual_seed(5)
    torch.testing.assert_close(policy.loss(batch.actions, batch.obs), expected.mean())


@pytest.mark.parametrize(
    ("algo", "steps"),
    [("dql", 320), ("qsm", 320), ("dipo", 1280), ("idql", 2560), ("awr", 1280)],
)
def test_gradient_steps_per_iteration_match_the_reference(algo: str, steps: int):
    """num_batch = int(S * E / batch * replay_ratio) with DPPO's hopper values."""
    cfg = compose(CFG_ROOT / "gym/finetune/hopper-v2", f"ft_{algo}_diffusion_mlp", ["wandb=null"])
    schema = get_class(cfg._target_).algorithm_class.train_schema
    assert load_block(schema, cfg.train, "train").gradient_steps(cfg.env.n_envs) == steps
    if algo == "awr":
        assert steps // cfg.train.critic_update_ratio == 320


def test_completed_episode_returns_by_hand():
    # One env, S = 6: the first episode started before the rollout (steps 0-1), then one from 2 to 3 (terminated),
    # one at 4 (truncated, a single chunk), and one from 5 that does not finish.
    r = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]])
    firsts = torch.tensor([[0], [0], [1], [0], [1], [1]], dtype=torch.bool)
    term = torch.tensor([[0], [1], [0], [1], [0], [0]], dtype=torch.bool)
    trunc = torch.tensor([[0], [0], [0], [0], [1], [0]], dtype=torch.bool)
    returns, valid = completed_episode_returns(r, firsts, term, trunc, 0.5)
    assert valid.flatten().tolist() == [False, False, True, True, True, False]
    torch.testing.assert_close(returns[2:5].flatten(), torch.tensor([3 + 0.5 * 4, 4.0, 5.0]))


class LinearV(nn.Module):
    """V(s) = first state coordinate (for hand computation)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, cond: dict[str, Tensor]) -> Tensor:
        return cond["state"][:, -1, 0] + 0.0 * self.w


def test_awr_td_lambda_targets_by_hand():
    """Config gamma (not 0.99), V of the stored next obs, lambda cut at episode ends (docs/algorithms.md, D11)."""
    gamma, lam, alpha = 0.5, 0.8, 0.9
    buf = ReplayBuffer(3, 1, {"state": ((1, 1), torch.float32)}, (TA, 1))
    s = [1.0, 2.0, 3.0]
    s_next = [2.0, 10.0, 4.0]  # step 1's episode was truncated: s' is its final obs, not step 2's state
    r = [1.0, 1.0, 2.0]
    for i in range(3):
        end = i == 1
        buf.add(
            {"state": torch.tensor([[[s[i]]]])},
            torch.zeros(1, TA, 1),
            torch.tensor([r[i]]),
            {"state": torch.tensor([[[s_next[i]]]])},
            torch.tensor([False]),
            torch.tensor([end]),
        )
    algo = AWR(
        make_policy(), LinearV(), replay_config(gamma=gamma), 10.0, 100.0, 4, td_lambda=lam, td_alpha=alpha, optim=OPTIM
    )
    targets, values = algo.td_targets(buf)
    delta = [r[i] + gamma * s_next[i] - s[i] for i in range(3)]
    g2 = alpha * delta[2]
    g1 = alpha * delta[1]  # episode end: nothing flows back from step 2
    g0 = alpha * delta[0] + gamma * lam * g1
    torch.testing.assert_close(targets, torch.tensor([g0 + s[0], g1 + s[1], g2 + s[2]]))
    torch.testing.assert_close(values, torch.tensor(s))


# ------------------------------------------------------------------------------------------------------------------
# each update lowers its own objective on a fixed batch


def critic_steps_lower(algo, loss_fn, batch: Transitions, steps: int = 30) -> tuple[float, float]:
    """Run `steps` critic-only gradient steps (actor in warm-up) and return the seeded loss before and after."""
    algo.iteration = -1
    buf = buffer_of(batch)
    before = seeded(lambda: loss_fn(batch))
    for _ in range(steps):
        algo.gradient_step(batch, buf)
    return before, seeded(lambda: loss_fn(batch))


def actor_steps_lower(algo, loss_fn, batch: Transitions, steps: int = 30) -> tuple[float, float]:
    """`steps` actor steps on the algorithm's own actor loss (critics fixed); seeded loss before and after."""
    before = seeded(lambda: loss_fn(batch))
    for _ in range(steps):
        algo.step_actor(loss_fn(batch), algo.actor_params)
    return before, seeded(lambda: loss_fn(batch))


def test_dql_update_lowers_its_objectives():
    algo = DQL(make_policy(), q_critic(), replay_config(n_critic_warmup_itr=0), 1.0, False, OPTIM)
    batch = fixed_batch()
    before, after = critic_steps_lower(algo, algo.critic_loss, batch)
    assert after < 0.5 * before, (before, after)
    assert not any(p.grad is not None for p in algo.actor_params), "the warm-up must not touch the actor"
    before, after = actor_steps_lower(algo, lambda b: algo.actor_loss(b)[0], batch)
    assert after < before - 0.05, (before, after)


def test_qsm_update_lowers_its_objectives():
    algo = QSM(make_policy(), q_critic(), replay_config(), 1.0, OPTIM)
    batch = fixed_batch()
    before, after = critic_steps_lower(algo, algo.critic_loss, batch)
    assert after < 0.5 * before, (before, after)
    before, after = actor_steps_lower(algo, algo.actor_loss, batch, steps=60)
    assert after < 0.8 * before, (before, after)


def test_dipo_improves_buffer_actions_and_lowers_its_objectives():
    policy = make_policy()
    algo = DIPO(policy, q_critic(), replay_config(), action_lr=0.05, action_gradient_steps=10, optim=OPTIM)
    batch = fixed_batch()
    before, after = critic_steps_lower(algo, algo.critic_loss, batch)
    assert after < 0.5 * before, (before, after)

    critic = algo.modules["critic"]
    with torch.no_grad():
        q_before = torch.minimum(*critic(batch.obs, batch.actions))
    improved = algo.improve_actions(batch.obs, batch.actions)
    with torch.no_grad():
        q_after = torch.minimum(*critic(batch.obs, improved))
    assert improved.abs().max() <= 1.0 and (q_after - q_before).mean() > 0.01, (q_before.mean(), q_after.mean())

    # A full step writes the improved actions back and moves both targets toward the trained networks.
    algo.iteration = 0
    buf = buffer_of(batch)
    stored = buf.actions.clone()
    target_before = [p.clone() for p in algo.modules["actor_target"].parameters()]
    algo.gradient_step(batch, buf)
    assert not torch.equal(buf.actions, stored)
    moved = [(p - q).abs().max() for p, q in zip(algo.modules["actor_target"].parameters(), target_before)]
    assert max(moved) > 0
    before, after = actor_steps_lower(algo, lambda b: algo.policy.loss(improved, b.obs), batch)
    assert after < before, (before, after)


def test_idql_update_lowers_its_objectives():
    algo = IDQL(
        make_policy(),
        q_critic(),
        CriticObs(DO, [32, 32]),
        replay_config(),
        n_candidates=4,
        eval_deterministic=True,
        use_expectile_exploration=True,
        expectile=0.8,
        critic_hyperparam=0.7,
        optim=OPTIM,
    )
    batch = fixed_batch()
    # V toward the expectile of a fixed target Q, then Q toward r + gamma V(s') with V fixed.
    algo.modules["critic_q_target"] = DistanceQ()
    before = seeded(lambda: algo.v_loss(batch))
    for _ in range(40):
        algo.step_optimizer("critic_v", algo.v_loss(batch))
    assert seeded(lambda: algo.v_loss(batch)) < 0.5 * before
    before = seeded(lambda: algo.q_loss(batch))
    for _ in range(40):
        algo.step_optimizer("critic_q", algo.q_loss(batch))
    assert seeded(lambda: algo.q_loss(batch)) < 0.5 * before
    # The expectile: with one state-independent target per row, V sits above the target mean (tau = 0.8 > 0.5).
    with torch.no_grad():
        assert algo.modules["critic_v"](batch.obs).mean() > DistanceQ()(batch.obs, batch.actions)[0].mean()
    before, after = actor_steps_lower(algo, lambda b: algo.policy.loss(b.actions, b.obs), batch)
    assert after < 0.9 * before, (before, after)


def test_awr_update_lowers_its_objectives():
    policy = make_policy()
    algo = AWR(policy, CriticObs(DO, [32, 32]), replay_config(n_updates=40), 10.0, 100.0, 4, 0.95, 0.95, OPTIM)
    batch = fixed_batch()
    buf = buffer_of(batch)
    targets, values = algo.td_targets(buf)
    critic_before = float((values - targets).square().mean())
    algo.iteration = 0
    algo._advantages = targets - values

    def weighted(b: Transitions) -> Tensor:
        adv = algo._advantages[b.indices]
        w = torch.exp(algo.beta * (adv - adv.mean()) / (adv.std() + 1e-6)).clamp(max=algo.max_weight)
        return (w * policy.loss_per_sample(b.actions, b.obs)).mean()

    before, after = actor_steps_lower(algo, weighted, batch, steps=60)
    assert after < 0.8 * before, (before, after)
    out = algo.update(buf)  # 10 critic steps toward fixed-batch targets, then 40 actor steps
    assert out["n_critic_updates"] == 10 and out["n_updates"] == 40
    with torch.no_grad():
        critic_after = float((algo.modules["critic"](batch.obs) - targets).square().mean())
    assert critic_after < critic_before, (critic_before, critic_after)


def test_rwr_update_lowers_its_weighted_loss_and_favours_high_returns():
    """One-chunk episodes with reward -||a - a*||^2: the weighted loss drops, and the weights single out the
    samples nearest a*."""
    policy = make_policy()
    algo = RWR(policy, 0.9, 10.0, 100.0, 32, 30, 0, (1e-3, 0.0, None))
    buf = RolloutBuffer(4, 16, {"state": ((1, DO), torch.float32)}, (1, TA, DA))
    g = torch.Generator().manual_seed(0)
    buf.obs["state"].copy_(torch.rand(4, 16, 1, DO, generator=g))
    buf.chains.copy_(torch.tanh(torch.randn(4, 16, 1, TA, DA, generator=g)))
    buf.rewards.copy_(-(buf.chains[:, :, -1] - 0.5).square().sum(dim=(2, 3)))
    buf.terminated.fill_(True)
    buf.firsts.fill_(True)
    returns, valid = completed_episode_returns(buf.rewards, buf.firsts, buf.terminated, buf.truncated, 0.9)
    assert valid.all()
    torch.testing.assert_close(returns, buf.rewards)  # one-chunk episodes: the return is the reward
    r = returns.flatten()
    w = torch.exp(10 * (r - r.mean()) / (r.std(unbiased=False) + 1e-3)).clamp(max=100)
    assert w[r.argmax()] == w.max() and w[r.argmin()] < 1e-3
    actions = buf.chains[:, :, -1].reshape(64, TA, DA)
    obs = {"state": buf.obs["state"].reshape(64, 1, DO)}
    loss = lambda: (w * policy.loss_per_sample(actions, obs)).mean()  # noqa: E731
    before = seeded(loss)
    out = algo.update(buf)
    assert out["n_samples"] == 64 and math.isfinite(out["loss"])
    assert seeded(loss) < 0.8 * before


# ------------------------------------------------------------------------------------------------------------------
# IDQL's candidate selection


class ListPolicy(nn.Module):
    """Samples candidate i as the constant chunk values[i] for every state (rows are sample-major)."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values
        self.w = nn.Parameter(torch.zeros(()))
        self.deterministic_calls: list[bool] = []

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.w]

    def sample(self, cond, deterministic=False, return_chain=False):
        from model.base import Sample

        self.deterministic_calls.append(deterministic)
        n_rows = cond["state"].shape[0]
        b = n_rows // len(self.values)
        vals = torch.tensor(self.values).repeat_interleave(b)
        return Sample(vals.view(-1, 1, 1).expand(n_rows, TA, DA).clone(), None)


class DistanceQ(nn.Module):
    """Q(s, a) = -||a - 0.5||^2 (both heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # optimisers need a parameter

    def forward(self, cond, action):
        q = -(action - 0.5).square().flatten(1).sum(1)
        return q, q


class ConstV(nn.Module):
    def __init__(self, v: float) -> None:
        super().__init__()
        self.v = v
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, cond):
        return torch.full((cond["state"].shape[0],), self.v)


def test_idql_selects_the_best_candidate_or_samples_by_expectile_weights():
    policy = ListPolicy([0.5, -0.5, 0.0])  # Q: 0, -4, -1
    algo = IDQL(policy, DistanceQ(), ConstV(-2.0), replay_config(), 3, True, True, 0.8, 0.7, OPTIM)
    algo.modules["critic_q_target"] = DistanceQ()
    cond = {"state": torch.zeros(5000, 1, DO)}
    best = algo.act(cond, deterministic=True)
    assert torch.all(best == 0.5) and policy.deterministic_calls[-1] is True
    torch.manual_seed(0)
    explore = algo.act(cond, deterministic=False)[:, 0, 0]
    assert policy.deterministic_calls[-1] is False
    # Advantages vs V = -2: +2, -2, +1 -> weights 0.7, 0.3, 0.7 normalised by 1.7.
    freq = torch.stack([(explore == v).float().mean() for v in (0.5, -0.5, 0.0)])
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.3, 0.7]) / 1.7, atol=0.02, rtol=0)
    algo.use_expectile_exploration = False
    assert torch.all(algo.act(cond, deterministic=False) == 0.5)


# ------------------------------------------------------------------------------------------------------------------
# the replay loop's transitions


def test_replay_loop_stores_final_obs_as_next_state_and_keeps_the_live_obs(tmp_dirs: Path):
    """Episodes of 10 env steps cut at 4 (two chunks) on the bandit, whose state is constant within an episode:
    every stored s' equals its s (the final obs where the episode was truncated), and the step after a truncation
    starts from the new episode's state (DPPO wrote final_obs into the live obs instead: docs/algorithms.md, D12)."""
    from agent.finetune.dql import DQLAgent
    from tests.unit.test_baselines_bandit import baseline_config, pretrained_base

    base = pretrained_base(tmp_dirs, epochs=1)
    cfg = baseline_config(
        "dql", base, 1, ["env.max_episode_steps=4", "+env.env_kwargs.episode_steps=10", "train.scale_reward_factor=0.5"]
    )
    agent = DQLAgent(cfg)
    agent.collect()
    buf = agent.buffer
    n = buf.n_filled
    assert n == 8 and len(buf) == 8 * 16
    torch.testing.assert_close(buf.next_obs["state"][:n], buf.obs["state"][:n])
    end = buf.episode_end[:n]
    assert end[1::2].all() and not end[0::2].any() and not buf.terminated[:n].any()
    # after a truncation the next chunk is from a fresh episode: a different (random) state
    assert (buf.obs["state"][2:n:2] - buf.obs["state"][1 : n - 1 : 2]).abs().amax(dim=(2, 3)).min() > 0
    # rewards stored scaled; episode statistics from the raw ones
    stats = agent.episodes.summary()
    assert stats["n_episodes"] == 16 * 4 and stats["episode_length"] == 4
    per_episode = buf.rewards[:n].view(4, 2, 16).sum(1) / 0.5
    assert np.isclose(float(per_episode.mean()), stats["episode_return"], rtol=1e-5)
    agent.env.close()


def test_replay_resume_restores_buffer_optimisers_and_iteration(tmp_dirs: Path):
    """With train.save_replay_buffer the checkpoint carries the buffer; resuming continues at the saved iteration with
    the same critics, optimiser state and transitions."""
    from agent.checkpoint import checkpoint_path, load_checkpoint
    from agent.finetune.dql import DQLAgent
    from tests.unit.test_baselines_bandit import baseline_config, pretrained_base

    base = pretrained_base(tmp_dirs, epochs=1)
    extra = ["train.save_model_freq=1", "train.save_replay_buffer=true"]
    first = DQLAgent(baseline_config("dql", base, 2, extra))
    first.run()
    ckpt_path = checkpoint_path(first.logdir, 1)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt["itr"] == 1 and ckpt["replay_buffer"]["n_filled"] == 8

    agent = DQLAgent(baseline_config("dql", base, 3, [*extra, f"resume={ckpt_path}"]))
    assert agent.itr == 1 and len(agent.buffer) == 8 * 16
    torch.testing.assert_close(agent.buffer.actions[:8].cpu(), ckpt["replay_buffer"]["actions"])
    for name, module in agent.algorithm.modules.items():
        torch.testing.assert_close(module.state_dict(), ckpt["algorithm"]["modules"][name])
    for name, opt in agent.algorithm.optimizers.items():
        for pid, state in opt.state_dict()["state"].items():
            torch.testing.assert_close(state["exp_avg"], ckpt["algorithm"]["optimizers"][name]["state"][pid]["exp_avg"])
    agent.run()
    rows = [r for r in read_metrics(agent.logdir) if "train/reward_mean" in r]
    assert [r["step"] for r in rows] == [2, 3]
    assert rows[0]["train/buffer_transitions"] == 16 * 16  # the restored 8 steps plus this iteration's 8
