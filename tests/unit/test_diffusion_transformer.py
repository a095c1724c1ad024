"""Diffusion-Policy transformer denoiser: shapes, causal masking, conditioning, and a behaviour-cloning run."""

from __future__ import annotations

import functools

import pytest
import torch

from model.diffusion.diffusion import DiffusionModel
from model.diffusion.transformer import DiffusionTransformer
from model.diffusion.vision import VisionDenoiser
from model.encoder import ViTEncoder


def small(causal: bool = True, **kw) -> DiffusionTransformer:
    args = dict(action_dim=3, horizon_steps=6, cond_dim=10, n_obs_steps=2, n_layer=2, n_head=2, n_emb=32)
    args.update(kw)
    torch.manual_seed(0)
    return DiffusionTransformer(causal_attn=causal, **args).eval()


def inputs(b: int = 4) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 6, 3, generator=g)
    t = torch.randint(0, 20, (b,), generator=g)
    return x, t, {"state": torch.randn(b, 2, 5, generator=g)}


@pytest.mark.parametrize("n_cond_layers", [0, 1])
def test_output_shape(n_cond_layers):
    net = small(n_cond_layers=n_cond_layers)
    x, t, cond = inputs()
    out = net(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("j", [1, 3, 5])
def test_causal_mask_blocks_future_steps(j):
    net = small(causal=True)
    x, t, cond = inputs()
    x2 = x.clone()
    x2[:, j] += 1.0
    y, y2 = net(x, t, cond), net(x2, t, cond)
    torch.testing.assert_close(y[:, :j], y2[:, :j], rtol=0, atol=1e-6)  # the past cannot see step j
    assert (y[:, j] - y2[:, j]).abs().max() > 1e-3  # step j sees itself


def test_without_causal_mask_earlier_steps_see_the_future():
    net = small(causal=False)
    x, t, cond = inputs()
    x2 = x.clone()
    x2[:, 5] += 1.0
    assert (net(x, t, cond)[:, 0] - net(x2, t, cond)[:, 0]).abs().max() > 1e-4


def test_every_step_sees_time_and_every_observation_token():
    # GPT-style N(0, 0.02) init makes the condition's effect small at first, so any exact change counts.
    net = small(causal=True)
    x, t, cond = inputs()
    y = net(x, t, cond)
    assert ((net(x, t + 1, cond) - y).abs().amax(dim=-1) > 1e-7).all()
    for k in range(2):  # oldest and newest observation token: no memory mask, every action step sees both
        state = cond["state"].clone()
        state[:, k] += 1.0
        assert ((net(x, t, {"state": state}) - y).abs().amax(dim=-1) > 1e-7).all()


def test_bad_condition_sizes_fail():
    with pytest.raises(ValueError, match="n_obs_steps"):
        DiffusionTransformer(3, 6, cond_dim=10, n_obs_steps=3)
    with pytest.raises(ValueError, match="divisible"):
        DiffusionTransformer(3, 6, cond_dim=10, n_obs_steps=2, n_emb=30, n_head=4)
    x, t, _ = inputs()
    with pytest.raises(ValueError, match="cond_dim is 10"):
        small()(x, t, {"state": torch.zeros(4, 2, 4)})


def _tiny_state_policy() -> tuple[DiffusionModel, torch.Tensor, dict[str, torch.Tensor]]:
    """4 distinct demonstrations (To=2 observation tokens -> a (4, 2) chunk), each repeated 4 times."""
    torch.manual_seed(0)
    to, do, ta, da = 2, 3, 4, 2
    states = (torch.rand(4, to, do) * 2 - 1).repeat(4, 1, 1)
    actions = (torch.rand(4, ta, da) * 1.6 - 0.8).repeat(4, 1, 1)
    net = DiffusionTransformer(da, ta, to * do, n_obs_steps=to, n_layer=2, n_head=2, n_emb=32, p_drop_attn=0.0)
    return (
        DiffusionModel(net, horizon_steps=ta, obs_dim=do, action_dim=da, denoising_steps=10),
        actions,
        {"state": states},
    )


def _fixed_noise_loss(model: DiffusionModel, actions: torch.Tensor, cond: dict[str, torch.Tensor]) -> float:
    """BC loss averaged over 8 draws of (t, noise) from a fixed seed, so before/after values are comparable."""
    rng = torch.get_rng_state()
    torch.manual_seed(123)
    with torch.no_grad():
        value = sum(float(model.loss(actions, cond)) for _ in range(8)) / 8
    torch.set_rng_state(rng)
    return value


def _fit(model: DiffusionModel, actions: torch.Tensor, cond: dict[str, torch.Tensor], steps: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model.loss(actions, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_transformer_diffusion_bc_loss_falls_on_tiny_state_dataset():
    model, actions, cond = _tiny_state_policy()
    before = _fixed_noise_loss(model, actions, cond)
    _fit(model, actions, cond, steps=150)
    after = _fixed_noise_loss(model, actions, cond)
    assert after < 0.35 * before, (before, after)


@pytest.mark.slow
def test_transformer_diffusion_policy_reproduces_its_demonstrations():
    """Slower: with N(0, 0.02) init the transformer needs several hundred steps to use its observation tokens."""
    model, actions, cond = _tiny_state_policy()
    _fit(model, actions, cond, steps=800)
    model.eval()
    with torch.no_grad():
        sampled = model.sample(cond, deterministic=True).actions
    spread = (actions - actions.mean(0)).abs().mean()  # error of ignoring the observation
    assert (sampled - actions).abs().mean() < 0.3 * spread


def test_pixel_transformer_denoiser():
    torch.manual_seed(0)
    encoder = ViTEncoder(24, state_dim=4, embed_dim=32, num_heads=2, spatial_emb=16)
    factory = functools.partial(DiffusionTransformer, action_dim=2, horizon_steps=4, n_layer=1, n_head=2, n_emb=32)
    net = VisionDenoiser(encoder, factory, cond_dim=4)
    assert net.denoiser.cond_dim == 20 and net.denoiser.n_obs_steps == 1
    cond = {"rgb": torch.randint(0, 256, (3, 1, 3, 24, 24), dtype=torch.uint8), "state": torch.randn(3, 1, 4)}
    model = DiffusionModel(net, horizon_steps=4, obs_dim=4, action_dim=2, denoising_steps=5)
    loss = model.loss(torch.zeros(3, 4, 2), cond)
    loss.backward()
    assert encoder.trunk.patch_embed.proj[0].weight.grad.abs().sum() > 0
    assert model.sample(cond).actions.shape == (3, 4, 2)
