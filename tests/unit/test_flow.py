"""Flow policies against closed forms: the flow-matching loss and the Euler sampler on problems whose velocity field
is known, the noisy chain's log-probability, the learned noise bounds, and the shortcut self-consistency target."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from model.diffusion.mlp_diffusion import DiffusionMLP
from model.flow.flow import FlowModel
from model.flow.noise import FlowNoise
from model.flow.shortcut import ShortcutFlowModel

SCALE = 100.0  # FlowModel's default time_scale: the network sees t * SCALE


class Velocity(nn.Module):
    """A network stub computing a known velocity ``fn(x, t, d)`` from the scaled time input."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.unused = nn.Parameter(torch.zeros(1))  # a module with parameters, as policies expect

    def forward(self, x: Tensor, time: Tensor, cond: dict[str, Tensor]) -> Tensor:
        time = time / SCALE
        t, d = (time[:, 0], time[:, 1]) if time.dim() == 2 else (time, None)
        return self.fn(x, t.view(-1, 1, 1), None if d is None else d.view(-1, 1, 1))


def state(b: int, do: int = 2) -> dict[str, Tensor]:
    return {"state": torch.randn(b, 1, do)}


def flow(fn, k: int, **kw) -> FlowModel:
    kw = {"denoised_clip_value": None, "final_action_clip_value": None, **kw}
    return FlowModel(Velocity(fn), horizon_steps=1, obs_dim=2, action_dim=1, denoising_steps=k, **kw)


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_euler_on_the_grid_i_over_k_lands_a_point_mass_exactly(k: int):
    """For data at c the exact velocity is (c - x) / (1 - t); Euler with t_i = i / K reaches c in any K steps from
    any start (on linspace(0, 1, K) the last step would divide by 1 - 1 = 0)."""
    c = 0.3
    model = flow(lambda x, t, d: (c - x) / (1 - t), k)
    out = model.sample(state(64), deterministic=True).actions
    torch.testing.assert_close(out, torch.full_like(out, c), atol=1e-5, rtol=0)
    times = model.step_times(torch.device("cpu")) / SCALE
    torch.testing.assert_close(times, torch.arange(k) / k)


# Data a ~ N(MU, S^2), noise z ~ N(0, 1), x_t = t a + (1 - t) z: x_t ~ N(t MU, t^2 S^2 + (1 - t)^2) and the exact
# velocity E[a - z | x_t] = MU + cov / var * (x_t - t MU) with cov = Cov(a - z, x_t) = t S^2 - (1 - t).
MU, S = 0.5, 0.3


def gaussian_velocity(x: Tensor, t: Tensor, d=None) -> Tensor:
    var = t.square() * S**2 + (1 - t).square()
    return MU + (t * S**2 - (1 - t)) / var * (x - t * MU)


def test_flow_matching_loss_of_the_exact_velocity_is_its_conditional_variance():
    """E_t[Var(a - z | x_t)] = E_t[(S^2 + 1) - cov^2 / var], t ~ U[0, 1): the loss floor, against the integral."""
    torch.manual_seed(0)
    model = flow(gaussian_velocity, 4)
    n = 400_000
    actions = MU + S * torch.randn(n, 1, 1)
    loss = model.loss(actions, state(n)).item()
    t = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000
    var = t.square() * S**2 + (1 - t).square()
    expected = ((S**2 + 1) - (t * S**2 - (1 - t)).square() / var).mean().item()
    assert loss == pytest.approx(expected, rel=0.01)


def test_euler_with_the_exact_velocity_samples_the_data_distribution():
    torch.manual_seed(0)
    out = flow(gaussian_velocity, 200).sample(state(100_000), deterministic=True).actions
    assert out.mean().item() == pytest.approx(MU, abs=0.01)
    assert out.std().item() == pytest.approx(S, abs=0.01)


def noisy(fn, k: int, k_ft: int, std: float, **kw) -> FlowModel:
    noise = FlowNoise(cond_dim=2, action_dim=1, n_steps=k_ft, min_std=std, max_std=std)
    return flow(fn, k, ft_denoising_steps=k_ft, noise=noise, **kw)


def test_chain_log_prob_of_one_step_by_hand():
    """K = 1, D = 1, v = 0, sigma = 0.1, x_0 = 0.5, x_1 = 0.6: log N(0.6; 0.5, 0.1^2) = 0.883647."""
    model = noisy(lambda x, t, d: torch.zeros_like(x), 1, 1, 0.1)
    chain = torch.tensor([0.5, 0.6]).view(1, 2, 1, 1)
    lp = model.chain_log_prob(state(1), chain)
    assert lp.shape == (1, 1, 1, 1)
    assert lp.item() == pytest.approx(0.883647, abs=1e-6)


def test_chain_log_prob_is_the_gaussian_of_each_euler_step():
    """Every fine-tuned transition is N(x_k + v(x_k, t_k) / K, sigma^2), scored per element; `step` picks one."""
    torch.manual_seed(0)
    fn = lambda x, t, d: 1.5 - x * t  # noqa: E731
    model = noisy(fn, 4, 3, 0.2)
    b = 6
    cond = state(b)
    chain = model.sample(cond, return_chain=True).chain
    assert chain.shape == (b, 4, 1, 1)
    lp = model.chain_log_prob(cond, chain)
    for k in range(3):
        t = (1 + k) / 4  # fine-tuned steps are the last three of four: i = 1, 2, 3
        mean = chain[:, k] + fn(chain[:, k], torch.tensor(t), None) / 4
        ref = torch.distributions.Normal(mean, 0.2).log_prob(chain[:, k + 1])
        torch.testing.assert_close(lp[:, k], ref, atol=1e-5, rtol=1e-5)
    step = torch.tensor([0, 2, 1, 1, 0, 2])
    torch.testing.assert_close(model.chain_log_prob(cond, chain, step), lp[torch.arange(b), step])


def test_deterministic_sampling_integrates_without_noise_and_clamps():
    torch.manual_seed(0)
    model = noisy(lambda x, t, d: torch.full_like(x, 3.0), 2, 2, 0.5, denoised_clip_value=1.0)
    out = model.sample(state(8), deterministic=True, return_chain=True)
    # x0 ~ N(0, 1) (here all above -2): two steps of +1.5, each clamped to [-1, 1], end at the bound 1
    torch.testing.assert_close(out.actions, torch.ones_like(out.actions))
    assert out.chain.shape == (8, 3, 1, 1)


def test_noise_std_stays_within_its_bounds_and_starts_between_them():
    noise = FlowNoise(cond_dim=3, action_dim=2, n_steps=2, min_std=0.1, max_std=0.4, state_dependent=False)
    s = noise(torch.randn(5, 1, 3), torch.tensor([0, 1, 0, 1, 0]))
    assert s.shape == (5, 1, 2)
    torch.testing.assert_close(s, torch.full_like(s, math.sqrt(0.1 * 0.4)))  # tanh(0) = 0: the log-midpoint
    with torch.no_grad():
        noise.per_step.fill_(50.0)
    assert noise(torch.randn(1, 1, 3), torch.tensor([1])).max().item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="min_std <= max_std"):
        FlowNoise(cond_dim=3, action_dim=2, n_steps=1, min_std=0.5, max_std=0.1)


def test_entropy_is_the_gaussian_entropy_of_the_noise():
    model = noisy(lambda x, t, d: x, 3, 3, 0.25)
    h = model.entropy(state(4))
    torch.testing.assert_close(h, torch.full((4,), 0.5 * math.log(2 * math.pi * math.e * 0.25**2)))
    assert flow(lambda x, t, d: x, 3).entropy(state(4)) is None


def test_fine_tuning_trains_a_copy_and_the_noise():
    net = DiffusionMLP(action_dim=2, horizon_steps=3, cond_dim=4, time_dim=8, mlp_dims=[16, 16])
    noise = FlowNoise(cond_dim=4, action_dim=2, n_steps=2)
    model = FlowModel(net, 3, 4, 2, denoising_steps=4, ft_denoising_steps=2, noise=noise)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(not p.requires_grad for p in model.network.parameters())
    assert {id(p) for p in model.actor_ft.parameters()} | {id(p) for p in noise.parameters()} == trainable
    with pytest.raises(ValueError, match="needs a noise module"):
        FlowModel(net, 3, 4, 2, denoising_steps=4, ft_denoising_steps=2)


def test_shortcut_target_is_two_half_steps_by_hand():
    """u1 = v(x, t, d/2), u2 = v(x + d/2 u1, t + d/2, d/2), target (u1 + u2) / 2, for v = x t + d."""
    fn = lambda x, t, d: x * t + d  # noqa: E731
    model = ShortcutFlowModel(Velocity(fn), horizon_steps=1, obs_dim=2, action_dim=1, denoising_steps=2)
    x, t, d = torch.tensor([[[0.4]]]), torch.tensor([0.25]), torch.tensor([0.5])
    u1 = 0.4 * 0.25 + 0.25
    u2 = (0.4 + 0.25 * u1) * 0.5 + 0.25
    target = model.self_consistency_target(model.network, x, t, d, state(1))
    assert target.item() == pytest.approx((u1 + u2) / 2)


def test_shortcut_on_a_straight_flow_keeps_the_velocity_and_one_step_lands():
    """Along a straight path (a point mass c) v = (c - x) / (1 - t) for every d: the bootstrap target equals it, and
    one Euler step of size 1 from the noise lands on c."""
    c = -0.4
    fn = lambda x, t, d: (c - x) / (1 - t)  # noqa: E731
    model = ShortcutFlowModel(
        Velocity(fn), horizon_steps=1, obs_dim=2, action_dim=1, denoising_steps=1, final_action_clip_value=None
    )
    x, t, d = torch.tensor([[[0.7]]]), torch.tensor([0.5]), torch.tensor([0.25])
    target = model.self_consistency_target(model.network, x, t, d, state(1))
    assert target.item() == pytest.approx((c - 0.7) / 0.5)
    out = model.sample(state(32), deterministic=True).actions
    torch.testing.assert_close(out, torch.full_like(out, c), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.step_times(torch.device("cpu")), torch.tensor([[0.0, 1.0]]) * SCALE)


def test_shortcut_needs_a_power_of_two_of_steps():
    with pytest.raises(ValueError, match="power of two"):
        ShortcutFlowModel(Velocity(lambda x, t, d: x), horizon_steps=1, obs_dim=2, action_dim=1, max_denoising_steps=96)


def test_a_unet_velocity_serves_the_flow_policy_and_its_chain():
    from model.diffusion.unet import Unet1D

    torch.manual_seed(0)
    net = Unet1D(action_dim=2, cond_dim=3, diffusion_step_embed_dim=8, dim=8, dim_mults=(1, 2), horizon_steps=4)
    noise = FlowNoise(cond_dim=3, action_dim=2, n_steps=2)
    model = FlowModel(net, 4, 3, 2, denoising_steps=2, ft_denoising_steps=2, noise=noise)
    cond = {"state": torch.randn(5, 1, 3)}
    assert torch.isfinite(model.loss(torch.rand(5, 4, 2) * 2 - 1, cond))
    sample = model.sample(cond, return_chain=True)
    assert sample.actions.shape == (5, 4, 2) and sample.chain.shape == (5, 3, 4, 2)
    lp = model.chain_log_prob(cond, sample.chain)
    assert lp.shape == (5, 2, 4, 2) and torch.isfinite(lp).all()


def test_a_misspelt_key_of_a_subclass_policy_is_caught_before_building():
    """ShortcutFlowModel passes **kwargs on to FlowModel: a typo of either class's argument is one line naming the
    configured class and the closest key."""
    from agent.config import CFG_ROOT, compose, instantiate
    from agent.errors import ConfigError

    folder = CFG_ROOT / "gym/pretrain/hopper-medium-v2"
    for typo, fix in (("self_consistency_frac", "self_consistency_fraction"), ("time_samplng", "time_sampling")):
        cfg = compose(folder, "pre_shortcut_mlp", [f"+model.{typo}=1", "wandb=null"])
        with pytest.raises(
            ConfigError, match=f"model.{typo} is not a parameter of ShortcutFlowModel; did you mean model.{fix}"
        ):
            instantiate(cfg.model, "model")
