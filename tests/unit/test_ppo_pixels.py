"""PPO with pixel observations on a synthetic rollout buffer (no simulator): uint8 image storage, the stored images
shifted exactly once per iteration and seen unchanged by the values, old log-probs and updates, no in-network
augmentation inside PPO, and gradient accumulation (optimizer steps every g minibatches, the mean gradient)."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from agent.errors import ConfigError
from agent.finetune.base import Experiment
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.onpolicy import OnPolicyAgent
from agent.finetune.ppo import PPO, PPOConfig
from model.common.critic import CriticObs
from model.common.vision import VisionNetwork
from model.encoder.augment import RandomShift, random_shift
from model.encoder.vit import ViTEncoder
from model.gaussian.mlp import GaussianMLP
from model.gaussian.model import GaussianModel

DO, DA, TA, HW = 3, 2, 2, 16
S, E = 4, 3  # 12 env steps; a Gaussian chain has K' = 1, so 12 (env step, denoising step) rows


def encoder(augment: nn.Module | None) -> ViTEncoder:
    return ViTEncoder(
        image_size=HW,
        state_dim=DO,
        patch_size=4,
        patch_stride=4,
        second_conv=False,
        embed_dim=16,
        num_heads=2,
        spatial_emb=8,
        augment=augment,
    )


def make_policy(seed: int = 0, augment: nn.Module | None = None) -> GaussianModel:
    """Pixel Gaussian policy; `augment` is the encoder's in-network augmentation (pretraining keeps RandomShift)."""
    torch.manual_seed(seed)
    head = partial(GaussianMLP, action_dim=DA, horizon_steps=TA, mlp_dims=[16, 16], fixed_std=0.3)
    return GaussianModel(VisionNetwork(encoder(augment), head, cond_dim=DO), TA, DA)


def make_critic(seed: int = 1) -> VisionNetwork:
    torch.manual_seed(seed)
    return VisionNetwork(encoder(None), partial(CriticObs, mlp_dims=[16, 16]), cond_dim=DO)


def filled_buffer(policy: GaussianModel, seed: int = 0) -> RolloutBuffer:
    """A rollout of random uint8 images and states, chains sampled from `policy`, random advantages/returns."""
    g = torch.Generator().manual_seed(seed)
    spec = {"state": ((1, DO), torch.float32), "rgb": ((1, 3, HW, HW), torch.uint8)}
    buf = RolloutBuffer(S, E, spec, (2, TA, DA))
    policy.eval()
    for t in range(S):
        cond = {
            "state": torch.rand(E, 1, DO, generator=g) * 2 - 1,
            "rgb": torch.randint(0, 256, (E, 1, 3, HW, HW), generator=g, dtype=torch.uint8),
        }
        with torch.no_grad():
            chain = policy.sample(cond, deterministic=False, return_chain=True).chain
        zeros = torch.zeros(E, dtype=torch.bool)
        buf.add(t, cond, chain, torch.rand(E, generator=g), zeros, zeros, zeros)
    buf.advantages = torch.randn(S, E, generator=g)
    buf.returns = torch.randn(S, E, generator=g)
    buf.values = torch.randn(S, E, generator=g)
    return buf


def ppo(policy: nn.Module, critic: nn.Module, **kw: Any) -> PPO:
    defaults = {"update_epochs": 1, "target_kl": None, "n_critic_warmup_itr": 0, "reward_horizon": TA}
    return PPO(policy, critic, PPOConfig(**{**defaults, **kw}))


def count_steps(algo: PPO) -> dict[str, int]:
    """Wrap every optimizer's step with a counter."""
    counts = {name: 0 for name in algo.optimizers}
    for name, opt in algo.optimizers.items():
        original = opt.step

        def step(*args: Any, _name: str = name, _orig: Any = original, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _orig(*args, **kwargs)

        opt.step = step  # type: ignore[method-assign]
    return counts


# ---------------------------------------------------------------------------------------------------------------
# the buffer


def test_augment_images_shifts_each_stored_image_once_and_keeps_uint8():
    buf = filled_buffer(make_policy())
    before = buf.obs["rgb"].clone()
    buf.augment_images(2, generator=torch.Generator().manual_seed(3))
    after = buf.obs["rgb"]
    assert after.dtype == torch.uint8 and after.shape == (S, E, 1, 3, HW, HW)
    # The same offsets drawn by hand on a float copy give exactly the same images (an integer shift is exact).
    flat = before.view(-1, 3, HW, HW).float()
    expected = random_shift(flat, 2, generator=torch.Generator().manual_seed(3)).to(torch.uint8)
    torch.testing.assert_close(after.view(-1, 3, HW, HW), expected, rtol=0, atol=0)
    assert not torch.equal(after, before)
    # A shift of up to 2 px keeps the interior 12x12 of every image inside the original's 16x16 window: each
    # augmented image's centre pixel equals some original pixel within 2 px of the centre.
    c = HW // 2
    window = before.view(-1, 3, HW, HW)[:, :, c - 2 : c + 3, c - 2 : c + 3].reshape(-1, 3, 25)
    centre = after.view(-1, 3, HW, HW)[:, :, c, c]
    assert bool((window == centre[..., None]).all(dim=1).any(dim=1).all())


def test_augment_images_pad_zero_is_a_no_op_and_needs_images():
    buf = filled_buffer(make_policy())
    before = buf.obs["rgb"].clone()
    buf.augment_images(0)
    assert torch.equal(buf.obs["rgb"], before)
    with pytest.raises(KeyError, match="no 'depth'"):
        buf.augment_images(2, key="depth")


# ---------------------------------------------------------------------------------------------------------------
# the loop: one augmentation per iteration, values / old log-probs / updates on the same images


class _StubEpisodes:
    def summary(self) -> dict[str, float]:
        return {"n_episodes": 0}


def test_train_iteration_augments_once_and_everything_sees_the_augmented_images(monkeypatch):
    policy, critic = make_policy(augment=RandomShift(4)), make_critic()
    buf = filled_buffer(policy)
    raw = buf.obs["rgb"].clone()
    algo = ppo(policy, critic, batch_size=4, logprob_batch_size=5)
    seen: dict[str, list[Tensor]] = {"values": [], "log_prob": [], "loss": []}
    calls = {"augment": 0}

    original_augment = buf.augment_images

    def augment(pad: int, **kw: Any) -> None:
        calls["augment"] += 1
        assert pad == 4
        original_augment(pad, **kw)

    monkeypatch.setattr(buf, "augment_images", augment)
    original_values, original_chain_lp = algo.values, policy.chain_log_prob

    def values(cond: dict[str, Tensor]) -> Tensor:
        seen["values"].append(cond["rgb"].clone())
        return original_values(cond)

    def chain_log_prob(cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        seen["log_prob" if step is None else "loss"].append(cond["rgb"].clone())
        return original_chain_lp(cond, chain, step)

    monkeypatch.setattr(algo, "values", values)
    monkeypatch.setattr(policy, "chain_log_prob", chain_log_prob)

    agent = OnPolicyAgent.__new__(OnPolicyAgent)  # the loop's state without an env
    agent.cfg = OmegaConf.create({})
    agent.buffer, agent.algorithm, agent.policy = buf, algo, policy
    agent.episodes, agent.augment_pad, agent.batch_rows = _StubEpisodes(), 4, 5
    agent.gamma, agent.gae_lambda, agent.reward_scale_const, agent.reward_scaler = 0.99, 0.95, 1.0, None
    timing = {"rollout_s": 1.0, "env_s": 0.5, "rollout_env_steps": S * E}
    monkeypatch.setattr(agent, "collect", lambda: timing)
    metrics = agent.train_iteration()

    assert calls["augment"] == 1
    augmented = buf.obs["rgb"].view(S * E, 1, 3, HW, HW)
    assert not torch.equal(augmented, raw.view_as(augmented))
    torch.testing.assert_close(torch.cat(seen["values"]), augmented, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat(seen["log_prob"]), augmented, rtol=0, atol=0)
    assert len(seen["loss"]) == metrics["n_minibatches"] == 3  # 12 rows / 4
    flat_rows = {tuple(img.flatten().tolist()) for img in augmented}
    assert all(tuple(img.flatten().tolist()) in flat_rows for batch in seen["loss"] for img in batch)
    assert policy.training  # restored after the update


def test_ppo_runs_the_policy_without_in_network_augmentation():
    policy, critic = make_policy(augment=RandomShift(4)), make_critic()
    buf = filled_buffer(policy)
    policy.train()
    out = ppo(policy, critic, batch_size=S * E, logprob_batch_size=7).update(buf)
    assert out["n_minibatches"] == 1
    assert out["ratio"] == pytest.approx(1.0, abs=1e-6) and out["approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert policy.training


# ---------------------------------------------------------------------------------------------------------------
# gradient accumulation


@pytest.mark.parametrize(
    ("batch_size", "accumulate", "epochs", "per_epoch"),
    [(2, 1, 2, 6), (2, 3, 2, 2), (2, 4, 2, 2), (3, 15, 3, 1), (12, 2, 1, 1)],
)
def test_grad_accumulation_steps_every_g_minibatches(batch_size, accumulate, epochs, per_epoch):
    """12 rows / batch_size minibatches per epoch; a step every g of them, a partial group stepped at epoch end."""
    policy, critic = make_policy(), make_critic()
    buf = filled_buffer(policy)
    algo = ppo(policy, critic, batch_size=batch_size, grad_accumulate=accumulate, update_epochs=epochs)
    counts = count_steps(algo)
    out = algo.update(buf)
    n_mb = (S * E) // batch_size
    assert out["n_minibatches"] == epochs * n_mb
    assert counts == {"actor": epochs * per_epoch, "critic": epochs * per_epoch}
    assert out["n_optimizer_steps"] == epochs * per_epoch
    assert all(p.grad is None for p in [*policy.parameters(), *critic.parameters()])  # nothing left pending


def test_accumulated_gradient_is_the_mean_over_the_group():
    """4 minibatches of 3 rows accumulated = one minibatch of all 12 rows (advantage normalisation off: it uses
    minibatch statistics): the same gradient reaches the first optimizer step."""
    grads: dict[str, list[Tensor]] = {}
    for name, bs, g in (("accumulated", 3, 4), ("full", 12, 1)):
        policy, critic = make_policy(), make_critic()
        buf = filled_buffer(policy)
        algo = ppo(policy, critic, batch_size=bs, grad_accumulate=g, norm_adv=False)
        original = algo.optimizers["actor"].step

        def step(*args: Any, _name: str = name, _orig: Any = original, _algo: PPO = algo, **kwargs: Any) -> Any:
            if _name not in grads:
                params = [*_algo.actor_params, *_algo.critic.parameters()]
                grads[_name] = [p.grad.clone() for p in params if p.grad is not None]
            return _orig(*args, **kwargs)

        algo.optimizers["actor"].step = step  # type: ignore[method-assign]
        algo.update(buf)
    assert len(grads["accumulated"]) == len(grads["full"]) > 0
    for a, b in zip(grads["accumulated"], grads["full"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_kl_stop_is_checked_once_per_group():
    """With a tiny target_kl the update stops right after the first optimizer step, i.e. after g minibatches."""
    policy, critic = make_policy(), make_critic()
    buf = filled_buffer(policy)
    algo = ppo(policy, critic, batch_size=2, grad_accumulate=3, update_epochs=4, target_kl=1e-12, actor_lr=1e-2)
    counts = count_steps(algo)
    out = algo.update(buf)
    # The first group's KL is 0 (ratio 1 before any step), so the stop comes at the end of the second group.
    assert out["kl_stop"] == 1.0
    assert counts["actor"] == 2 and out["n_minibatches"] == 6


def test_grad_accumulate_must_be_positive():
    cfg = OmegaConf.create(
        {
            "act_steps": TA,
            "horizon_steps": TA,
            "env": {"name": "avoid_m1", "n_envs": E},
            "train": {"n_steps": S, "batch_size": 4, "grad_accumulate": 0},
            "model": {"critic": {"_target_": "x"}},
        }
    )
    with pytest.raises(ConfigError, match="grad_accumulate"):
        PPO.validate_config(Experiment.from_config(cfg, PPO))
