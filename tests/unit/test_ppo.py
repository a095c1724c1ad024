"""PPO over the denoising chain: clip schedule and discounts against the reference's numbers, old log-probs against
independent Normal densities, ratio 1 on the first minibatch, the loss against a per-row reference computation,
K' = 1, KL early stop, critic warm-up, DDIM with a learned eta, the BC term and state round trips."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.distributions import Normal

from agent.errors import ConfigError
from agent.finetune.base import Experiment
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.ppo import (
    PPO,
    PPOConfig,
    clip_coefficients,
    denoising_discounts,
    reduce_log_prob,
)
from model.common.critic import CriticObs
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.eta import EtaFixed
from model.diffusion.mlp_diffusion import DiffusionMLP
from model.diffusion.schedule import cosine_beta_schedule
from model.gaussian.mlp import GaussianMLP
from model.gaussian.model import GaussianModel
from model.gmm.mlp import GMMMLP
from model.gmm.model import GMMModel

DO, DA, TA, TE, K = 3, 2, 4, 3, 8
S, E = 5, 4


def make_diffusion(k_ft: int = 4, seed: int = 0, **kw) -> DiffusionModel:
    torch.manual_seed(seed)
    net = DiffusionMLP(DA, TA, DO, time_dim=8, mlp_dims=[32, 32, 32], residual_style=True)
    return DiffusionModel(net, TA, DO, DA, denoising_steps=K, ft_denoising_steps=k_ft, randn_clip_value=3, **kw)


def make_gaussian(seed: int = 0) -> GaussianModel:
    torch.manual_seed(seed)
    return GaussianModel(GaussianMLP(DA, TA, DO, mlp_dims=[32, 32], fixed_std=0.1, learn_fixed_std=True), TA, DA, 3)


def make_gmm(seed: int = 0) -> GMMModel:
    torch.manual_seed(seed)
    return GMMModel(GMMMLP(DA, TA, DO, mlp_dims=[32, 32], fixed_std=0.1, num_modes=3), TA, DA)


POLICIES = {"diffusion": make_diffusion, "gaussian": make_gaussian, "gmm": make_gmm}


def make_ppo(policy, **kw) -> PPO:
    defaults = dict(
        batch_size=16,
        update_epochs=2,
        logprob_batch_size=7,
        actor_lr=1e-3,
        critic_lr=1e-3,
        clip_ploss_coef=0.01,
        clip_ploss_coef_base=0.001,
        reward_horizon=TE,
    )
    defaults.update(kw)
    torch.manual_seed(1)
    return PPO(policy, CriticObs(DO, [16, 16]), PPOConfig(**defaults))


def filled_buffer(policy, seed: int = 2) -> RolloutBuffer:
    """A rollout of stochastic chains for random states, with random advantages/returns."""
    g = torch.Generator().manual_seed(seed)
    k = policy.n_chain_steps
    buf = RolloutBuffer(S, E, {"state": ((1, DO), torch.float32)}, (k + 1, TA, DA))
    buf.obs["state"].copy_(torch.rand(S, E, 1, DO, generator=g) * 2 - 1)
    with torch.no_grad():
        sample = policy.sample(buf.flat_obs(), deterministic=False, return_chain=True)
    buf.chains.copy_(sample.chain.view(S, E, k + 1, TA, DA))
    buf.advantages.copy_(torch.randn(S, E, generator=g))
    buf.values.copy_(torch.randn(S, E, generator=g))
    buf.returns.copy_(buf.values + buf.advantages)
    return buf


# ----------------------------------------------------------------------------------------------------------------
# schedules


def test_clip_coefficients_match_reference():
    got = clip_coefficients(10, 0.01, 0.001, 3.0)
    ref = [0.001, 0.001187, 0.001447, 0.00181, 0.002317, 0.003025, 0.004013, 0.005391, 0.007315, 0.01]
    torch.testing.assert_close(got, torch.tensor(ref), rtol=2e-3, atol=0.0)


def test_clip_coefficients_edge_cases():
    torch.testing.assert_close(clip_coefficients(10, 0.01, 0.01, 3.0), torch.full((10,), 0.01))
    # K' = 1: DPPO computes u = 0/0 = NaN (docs/algorithms.md#d1-single-step-clipping); the single step is the final
    # one and gets eps.
    assert clip_coefficients(1, 0.1, 0.001, 3.0).tolist() == pytest.approx([0.1])
    torch.testing.assert_close(clip_coefficients(3, 0.3, 0.1, 0.0), torch.tensor([0.1, 0.2, 0.3]))


def test_denoising_discounts_match_reference():
    ref = [0.9135, 0.9227, 0.9321, 0.9415, 0.9510, 0.9606, 0.9703, 0.9801, 0.99, 1.0]
    torch.testing.assert_close(denoising_discounts(10, 0.99), torch.tensor(ref), atol=1e-4, rtol=0)
    assert denoising_discounts(1, 0.5).tolist() == [1.0]


def test_reduce_log_prob_clamps_truncates_and_averages():
    lp = torch.tensor([[[3.0, -1.0], [-9.0, 0.0], [100.0, 100.0]]])  # (1, Ta=3, Da=2)
    assert reduce_log_prob(lp, 2).item() == pytest.approx((2.0 - 1.0 - 5.0 + 0.0) / 4)


# ----------------------------------------------------------------------------------------------------------------
# log-probs and the first minibatch


def independent_log_prob(policy: DiffusionModel, cond, x_prev, x_next, k: int) -> torch.Tensor:
    """log N(x_next; mu, sigma) of fine-tuned step k from the DDPM formulas, written out here.

    See docs/algorithms.md#ddpm-reverse-step.
    """
    betas = cosine_beta_schedule(K).double()
    abar = torch.cumprod(1 - betas, 0)
    t = policy.ft_denoising_steps - 1 - k
    abar_t, abar_prev = abar[t], (abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64))
    with torch.no_grad():
        eps = policy.actor_ft(x_prev, torch.full((x_prev.shape[0],), t), cond).double()
    x = x_prev.double()
    x0 = (x / abar_t.sqrt() - (1 / abar_t - 1).sqrt() * eps).clamp(-1, 1)
    mu = betas[t] * abar_prev.sqrt() / (1 - abar_t) * x0 + (1 - abar_prev) * (1 - betas[t]).sqrt() / (1 - abar_t) * x
    var = betas[t] * (1 - abar_prev) / (1 - abar_t)
    sigma = max(math.sqrt(float(var)), 0.1)
    return Normal(mu, sigma).log_prob(x_next.double()).float()


def test_old_log_probs_are_independent_normal_densities():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy)
    buf = filled_buffer(policy)
    old = ppo.old_log_probs(buf, batch_rows=7)  # batches that do not divide S * E
    assert old.shape == (S * E, 4) and torch.equal(buf.log_probs.view(S * E, 4), old)
    obs, chains = buf.flat_obs(), buf.chains.view(S * E, 5, TA, DA)
    for k in range(4):
        expected = independent_log_prob(policy, obs, chains[:, k], chains[:, k + 1], k)
        torch.testing.assert_close(old[:, k], reduce_log_prob(expected, TE), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_first_minibatch_ratio_is_one_and_nothing_clipped(kind):
    policy = POLICIES[kind]()
    ppo = make_ppo(policy)
    buf = filled_buffer(policy)
    old = ppo.old_log_probs(buf, 7)
    mb = next(ppo.minibatches(buf, old))
    assert mb.cond["state"].shape == (16, 1, DO) and mb.step.max() < policy.n_chain_steps
    with torch.no_grad():
        ratio = (ppo.policy_log_prob(mb) - mb.old_log_probs).exp()
        _, info = ppo.loss(mb)
    assert (ratio - 1).abs().max() < 1e-5
    assert info["clip_frac"].item() == 0.0 and abs(info["approx_kl"].item()) < 1e-9


def test_minibatch_rows_are_env_step_denoising_step_pairs():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy, batch_size=S * E * 4)
    buf = filled_buffer(policy)
    old = torch.arange(S * E * 4, dtype=torch.float32).view(S * E, 4)
    (mb,) = list(ppo.minibatches(buf, old))
    n = (mb.old_log_probs // 4).long()
    assert torch.equal(mb.step, (mb.old_log_probs % 4).long())  # every pair exactly once
    assert sorted(mb.old_log_probs.tolist()) == list(range(S * E * 4))
    torch.testing.assert_close(mb.advantages, buf.advantages.view(-1)[n])
    torch.testing.assert_close(mb.chains, buf.chains.view(S * E, 5, TA, DA)[n])
    # the remainder is dropped: N // batch_size minibatches of exactly batch_size rows
    sizes = [len(m.step) for m in make_ppo(policy, batch_size=30).minibatches(buf, old)]
    assert sizes == [30, 30]


def test_loss_matches_per_row_reference_computation():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy, clip_ploss_coef=0.05, clip_ploss_coef_base=0.01, gamma_denoising=0.9, vf_coef=0.7)
    buf = filled_buffer(policy)
    old = ppo.old_log_probs(buf, 7)
    with torch.no_grad():  # move the fine-tuned net so ratios differ from 1 and some rows are clipped
        for p in policy.actor_ft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mb = next(ppo.minibatches(buf, old))
    with torch.no_grad():
        total, info = ppo.loss(mb)
        new = ppo.policy_log_prob(mb)
        values = ppo.critic(mb.cond)
    adv = mb.advantages
    mean, std = adv.mean().item(), adv.std().item()  # unbiased std, as torch (and the reference)
    kp = 4
    pg, kl, clipped = 0.0, 0.0, 0
    for b in range(len(adv)):
        k = int(mb.step[b])
        a = (adv[b].item() - mean) / (std + 1e-8) * 0.9 ** (kp - k - 1)
        u = k / (kp - 1)
        eps = 0.01 + (0.05 - 0.01) * (math.exp(3 * u) - 1) / (math.exp(3) - 1)
        r = math.exp(new[b].item() - mb.old_log_probs[b].item())
        pg += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
        kl += (r - 1) - math.log(r)
        clipped += abs(r - 1) > eps
    n = len(adv)
    v_loss = 0.5 * ((values - mb.returns) ** 2).mean().item()
    assert info["pg_loss"].item() == pytest.approx(pg / n, rel=1e-4, abs=1e-7)
    assert info["approx_kl"].item() == pytest.approx(kl / n, rel=1e-3, abs=1e-8)
    assert info["clip_frac"].item() == pytest.approx(clipped / n)
    assert 0 < clipped < n
    assert total.item() == pytest.approx(pg / n + 0.7 * v_loss, rel=1e-4)


def test_clipped_value_loss():
    policy = make_gaussian()
    ppo = make_ppo(policy, clip_vloss_coef=0.1, vf_coef=1.0)
    buf = filled_buffer(policy)
    mb = next(ppo.minibatches(buf, ppo.old_log_probs(buf, 7)))
    with torch.no_grad():
        _, info = ppo.loss(mb, train_actor=False)
        v = ppo.critic(mb.cond)
    clipped = mb.old_values + (v - mb.old_values).clamp(-0.1, 0.1)
    expected = 0.5 * torch.maximum((v - mb.returns) ** 2, (clipped - mb.returns) ** 2).mean()
    assert info["v_loss"].item() == pytest.approx(expected.item(), rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# updates


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_single_finetuned_step_gives_finite_loss_and_trains():
    """K' = 1: DPPO's clip schedule is NaN (docs/algorithms.md, D1); here the update is finite and moves the net."""
    policy = make_diffusion(k_ft=1)
    ppo = make_ppo(policy)
    buf = filled_buffer(policy)
    before, frozen = params(policy.actor_ft), params(policy.network)
    out = ppo.update(buf)
    assert all(math.isfinite(out[k]) for k in ("pg_loss", "v_loss", "approx_kl"))
    assert changed(before, policy.actor_ft) and not changed(frozen, policy.network)


@pytest.mark.parametrize("kind", list(POLICIES))
def test_update_trains_actor_and_critic(kind):
    policy = POLICIES[kind]()
    ppo = make_ppo(policy, target_kl=None)
    buf = filled_buffer(policy)
    actor, critic = params(policy), params(ppo.critic)
    out = ppo.update(buf)
    n_pairs = S * E * policy.n_chain_steps
    assert out["n_minibatches"] == 2 * (n_pairs // 16) and out["kl_stop"] == 0.0
    assert changed(actor, policy) and changed(critic, ppo.critic)
    assert math.isfinite(out["explained_variance"])


def test_target_kl_stops_the_update():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy, target_kl=1e-12, actor_lr=1e-2)
    out = ppo.update(filled_buffer(policy))
    assert out["kl_stop"] == 1.0 and out["n_minibatches"] < 2 * (S * E * 4 // 16)


def test_critic_warmup_trains_only_the_critic_and_holds_the_actor_schedule():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(
        policy,
        n_critic_warmup_itr=1,
        actor_lr_scheduler={"first_cycle_steps": 10, "warmup_steps": 2, "min_lr": 1e-5},
    )
    buf = filled_buffer(policy)
    actor, critic = params(policy.actor_ft), params(ppo.critic)
    ppo.iteration = 0
    out = ppo.update(buf)
    ppo.end_iteration()
    assert not changed(actor, policy.actor_ft) and changed(critic, ppo.critic)
    assert "pg_loss" not in out and ppo.schedulers["actor"].n_steps == 0 and ppo.schedulers["critic"].n_steps == 1
    assert ppo.learning_rates()["actor_lr"] == pytest.approx(1e-5)  # iteration 0 runs at min_lr (K3)
    ppo.iteration = 1
    ppo.update(buf)
    ppo.end_iteration()
    assert changed(actor, policy.actor_ft) and ppo.schedulers["actor"].n_steps == 1


def test_ddim_finetuning_with_learned_eta():
    policy = make_diffusion(k_ft=4, use_ddim=True, ddim_steps=4, eta=EtaFixed(0.5, 0.1, 1.0), learn_eta=True)
    ppo = make_ppo(policy, ent_coef=0.01, eta_lr=1e-2)
    assert "eta" in ppo.optimizers and all(id(p) not in {id(q) for q in ppo.actor_params} for p in ppo.eta_params)
    buf = filled_buffer(policy)
    mb = next(ppo.minibatches(buf, ppo.old_log_probs(buf, 7)))
    with torch.no_grad():
        assert (ppo.policy_log_prob(mb) - mb.old_log_probs).abs().max() < 1e-5
    eta_before = policy.eta.eta_logit.detach().clone()
    out = ppo.update(buf)
    assert "entropy" in out and not torch.equal(eta_before, policy.eta.eta_logit)


@pytest.mark.parametrize("kind", ["diffusion", "gaussian"])
def test_bc_loss_uses_the_pretrained_policy(kind):
    policy = POLICIES[kind]()
    ppo = make_ppo(policy, use_bc_loss=True, bc_loss_coeff=0.5)
    assert ("bc_reference" in ppo.modules) == (kind == "gaussian")  # diffusion keeps its frozen base itself
    buf = filled_buffer(policy)
    cond = {"state": buf.obs["state"][0]}
    with torch.no_grad():
        at_start = ppo.bc_loss(cond).item()
    out = ppo.update(buf)
    assert math.isfinite(out["bc_loss"]) and math.isfinite(at_start)
    # the reference chains come from the frozen weights: the fine-tuned net moved, the reference did not
    ref = ppo.modules["bc_reference"] if kind == "gaussian" else policy.network
    assert not any(p.requires_grad for p in ref.parameters())


def test_state_round_trip_restores_optimizers_and_schedulers():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy)
    ppo.update(filled_buffer(policy))
    ppo.end_iteration()
    state = ppo.state_dict()
    other = make_ppo(make_diffusion(k_ft=4, seed=5))
    other.load_state_dict(state)
    for name in ("actor", "critic"):
        a, b = ppo.optimizers[name].state_dict(), other.optimizers[name].state_dict()
        for pid, st in a["state"].items():
            torch.testing.assert_close(st["exp_avg"], b["state"][pid]["exp_avg"])
        assert other.schedulers[name].n_steps == 1
    torch.testing.assert_close(dict(other.critic.state_dict()), dict(ppo.critic.state_dict()))


def validate(cfg):
    """PPO's checks as the fine-tuning loop runs them: build the blocks, then the cross-block checks."""
    PPO.validate_config(Experiment.from_config(cfg, PPO))


def ppo_cfg(**over):
    base = {
        "act_steps": 4,
        "horizon_steps": 4,
        "env": {"name": "avoid_m1", "n_envs": 4},
        "train": {"n_steps": 5, "batch_size": 100, "update_epochs": 5},
        "model": {"ft_denoising_steps": 5, "critic": {"_target_": "x"}},
    }
    cfg = OmegaConf.create(base)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@pytest.mark.parametrize(
    "over, message",
    [
        ({"train.batch_size": 0}, "train.batch_size must be an integer >= 1"),
        ({"model.ft_denoising_steps": 0}, "needs at least one fine-tuned denoising step"),
        ({"model.critic": None}, "PPO needs a critic"),
        ({"reward_horizon": 5}, "reward_horizon=5 must be in"),
        ({"train.target_kl": 0}, "train.target_kl must be > 0"),
        ({"train.use_bc_loss": True}, "bc_loss_coeff > 0"),
    ],
)
def test_validate_config(over, message):
    validate(ppo_cfg())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(ppo_cfg(**over))


def test_batch_larger_than_the_rollout_is_one_minibatch_of_every_row():
    # a Gaussian policy (chain of length one) with train.batch_size=64 on 2 envs x 8 steps: 16 rows, all used once
    validate(ppo_cfg(**{"train.batch_size": 10_000}))
    policy = make_gaussian()
    ppo = make_ppo(policy, batch_size=10_000)
    buf = filled_buffer(policy)
    mbs = list(ppo.minibatches(buf, ppo.old_log_probs(buf, 7)))
    assert ppo.n_minibatches(buf) == 1 and len(mbs) == 1
    assert len(mbs[0].step) == buf.n_rows and sorted(mbs[0].returns.tolist()) == sorted(buf.returns.view(-1).tolist())


def test_critic_on_distinct_states_gives_the_per_row_loss_and_gradients():
    policy = make_diffusion(k_ft=4)
    ppo = make_ppo(policy, clip_vloss_coef=0.2)
    buf = filled_buffer(policy)
    mb = next(ppo.minibatches(buf, ppo.old_log_probs(buf, 7)))
    assert mb.critic_index is not None and len(mb.critic_cond["state"]) < len(mb.step)
    grads, losses = [], []
    for batch in (mb, mb._replace(critic_cond=None, critic_index=None)):
        ppo.critic.zero_grad()
        loss, _ = ppo.loss(batch, train_actor=False)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in ppo.critic.parameters()])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def make_ddim_eta() -> DiffusionModel:
    return make_diffusion(k_ft=4, use_ddim=True, ddim_steps=4, eta=EtaFixed(0.5, 0.1, 1.0), learn_eta=True)


@pytest.mark.parametrize("kind", [*POLICIES, "ddim_eta"])
def test_backward_in_row_chunks_gives_the_one_pass_gradients_and_diagnostics(kind):
    policy = make_ddim_eta() if kind == "ddim_eta" else POLICIES[kind]()
    ppo = make_ppo(
        policy, ent_coef=0.01, clip_advantage_lower_quantile=0.1, clip_advantage_upper_quantile=0.9, batch_size=20
    )
    buf = filled_buffer(policy)
    old = ppo.old_log_probs(buf, 7)
    with torch.no_grad():  # ratios away from 1, so the clipping and the KL are exercised
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    mb = next(ppo.minibatches(buf, old))
    params_ = [*ppo.actor_params, *ppo.eta_params, *ppo.critic.parameters()]
    results = []
    for chunk in (None, 3):  # one pass (the whole minibatch), then chunks of 3 rows (the last one shorter)
        ppo.cfg.update_chunk_rows = chunk
        for p in params_:
            p.grad = None
        if chunk is None:
            loss, info = ppo.loss(mb)
            (0.5 * loss).backward()
        else:
            assert ppo.chunk_rows(torch.device("cpu")) == 3 and len(mb.step) % 3 != 0
            info = ppo.backward(mb, scale=0.5)
        results.append((info, [p.grad.clone() for p in params_]))
    (info_one, grads_one), (info_chunked, grads_chunked) = results
    assert info_one.keys() == info_chunked.keys() and {"pg_loss", "approx_kl", "clip_frac"} <= info_one.keys()
    for key in info_one:
        torch.testing.assert_close(info_chunked[key], info_one[key], rtol=1e-5, atol=1e-7)
    assert info_one["clip_frac"] > 0 and ("entropy" in info_one) == (kind != "diffusion")
    for a, b in zip(grads_chunked, grads_one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_update_chunk_rows_default_and_validation():
    policy = make_gaussian()
    assert make_ppo(policy).chunk_rows(torch.device("cpu")) == 2048
    assert make_ppo(policy).chunk_rows(torch.device("cuda")) is None  # the whole minibatch on a GPU
    assert make_ppo(policy, update_chunk_rows=100).chunk_rows(torch.device("cuda")) == 100
    with pytest.raises(ConfigError, match="train.update_chunk_rows must be an integer >= 1"):
        validate(ppo_cfg(**{"train.update_chunk_rows": 0}))
