"""Gaussian and GMM policies: shapes, closed-form densities, std bounds, sampling rules and BC learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from model.base import Sample
from model.common.transformer import ObsToChunkTransformer
from model.gaussian import GaussianMLP, GaussianModel, GaussianTransformer
from model.gmm import GMMMLP, GMMModel, GMMTransformer

DA, TA, TO, DO, B = 2, 3, 2, 3, 5
COND_DIM = TO * DO
SMALL_TF = {"embed_dim": 16, "num_heads": 2, "num_layers": 2}


def make_cond(batch: int = B, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.randn(batch, TO, DO, generator=g)}


def normal_logpdf(x: float, mean: float, std: float) -> float:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


class ConstGaussianNet(nn.Module):
    """Observation-independent (mean, scale) of shape (Ta*Da,), for hand-computed checks."""

    def __init__(self, mean: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.mean = nn.Parameter(mean.clone())
        self.scale = nn.Parameter(scale.clone())

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        batch = cond["state"].shape[0]
        return self.mean.expand(batch, -1), self.scale.expand(batch, -1)


class ConstGMMNet(nn.Module):
    """Observation-independent (means (M, N), scales (M, N), logits (M,))."""

    def __init__(self, means: Tensor, scales: Tensor, logits: Tensor) -> None:
        super().__init__()
        self.means = nn.Parameter(means.clone())
        self.scales = nn.Parameter(scales.clone())
        self.logits = nn.Parameter(logits.clone())

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        batch = cond["state"].shape[0]
        return (
            self.means.expand(batch, -1, -1),
            self.scales.expand(batch, -1, -1),
            self.logits.expand(batch, -1),
        )


# ------------------------------------------------------------------------------------------------------
# Network shapes

GAUSSIAN_VARIANTS = {
    "mlp_learned": lambda: GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16, 16, 16)),
    "mlp_learned_residual": lambda: GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16,) * 4, residual_style=True),
    "mlp_fixed": lambda: GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), fixed_std=0.1),
    "mlp_fixed_residual_ln": lambda: GaussianMLP(
        DA, TA, COND_DIM, mlp_dims=(16, 16, 16), fixed_std=0.1, residual_style=True, use_layernorm=True
    ),
    "mlp_learn_fixed_dropout": lambda: GaussianMLP(
        DA,
        TA,
        COND_DIM,
        mlp_dims=(16, 16),
        fixed_std=0.1,
        learn_fixed_std=True,
        dropout=0.1,
        use_layernorm=True,
    ),
    "mlp_no_tanh": lambda: GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16,), tanh_output=False, fixed_std=0.3),
    "tf_learned": lambda: GaussianTransformer(DA, TA, COND_DIM, **SMALL_TF),
    "tf_fixed": lambda: GaussianTransformer(DA, TA, COND_DIM, fixed_std=0.1, **SMALL_TF),
    "tf_learn_fixed": lambda: GaussianTransformer(
        DA, TA, COND_DIM, fixed_std=0.1, learn_fixed_std=True, activation_type="relu", **SMALL_TF
    ),
}

GMM_VARIANTS = {
    "mlp_learned": lambda: GMMMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), num_modes=3),
    "mlp_fixed_residual": lambda: GMMMLP(
        DA, TA, COND_DIM, mlp_dims=(16, 16, 16), residual_style=True, fixed_std=0.1, num_modes=3
    ),
    "mlp_learn_fixed": lambda: GMMMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), fixed_std=0.1, learn_fixed_std=True),
    "tf_learned": lambda: GMMTransformer(DA, TA, COND_DIM, num_modes=3, **SMALL_TF),
    "tf_fixed": lambda: GMMTransformer(DA, TA, COND_DIM, num_modes=3, fixed_std=0.1, **SMALL_TF),
    "tf_learn_fixed": lambda: GMMTransformer(
        DA, TA, COND_DIM, num_modes=4, fixed_std=0.1, learn_fixed_std=True, **SMALL_TF
    ),
}


@pytest.mark.parametrize("name", list(GAUSSIAN_VARIANTS))
def test_gaussian_network_and_policy_shapes(name: str) -> None:
    torch.manual_seed(0)
    net = GAUSSIAN_VARIANTS[name]()
    cond = make_cond()
    mean, scale = net(cond)
    assert mean.shape == (B, TA * DA) and scale.shape == (B, TA * DA)
    assert torch.all(scale > 0)
    if name != "mlp_no_tanh":
        assert torch.all(mean.abs() <= 1)
    if "fixed" in name and "learn" not in name:
        torch.testing.assert_close(scale, torch.full_like(scale, 0.1))

    policy = GaussianModel(net, horizon_steps=TA, action_dim=DA)
    out = policy.sample(cond, return_chain=True)
    assert isinstance(out, Sample)
    assert out.actions.shape == (B, TA, DA) and out.chain.shape == (B, 2, TA, DA)
    assert policy.chain_log_prob(cond, out.chain).shape == (B, 1, TA, DA)
    assert policy.chain_log_prob(cond, out.chain, torch.zeros(B, dtype=torch.long)).shape == (B, TA, DA)
    assert policy.entropy(cond).shape == (B,)
    assert policy.loss(out.actions.detach(), cond).shape == ()
    assert policy.sample(cond).chain is None


@pytest.mark.parametrize("name", list(GMM_VARIANTS))
def test_gmm_network_and_policy_shapes(name: str) -> None:
    torch.manual_seed(0)
    net = GMM_VARIANTS[name]()
    m = net.num_modes
    cond = make_cond()
    means, scales, logits = net(cond)
    assert means.shape == (B, m, TA * DA) and scales.shape == (B, m, TA * DA) and logits.shape == (B, m)
    assert torch.all(means.abs() <= 1) and torch.all(scales > 0)

    policy = GMMModel(net, horizon_steps=TA, action_dim=DA)
    out = policy.sample(cond, return_chain=True)
    assert out.actions.shape == (B, TA, DA) and out.chain.shape == (B, 2, TA, DA)
    assert policy.chain_log_prob(cond, out.chain).shape == (B, 1, TA, DA)
    assert policy.chain_log_prob(cond, out.chain, torch.zeros(B, dtype=torch.long)).shape == (B, TA, DA)
    assert policy.entropy(cond).shape == (B,)
    assert policy.loss(out.actions.detach(), cond).shape == ()


def test_transformers_share_one_trunk_and_init() -> None:
    torch.manual_seed(0)
    g = GaussianTransformer(DA, TA, COND_DIM, embed_dim=64, num_heads=4, num_layers=2)
    m = GMMTransformer(DA, TA, COND_DIM, embed_dim=64, num_heads=4, num_layers=2)
    assert isinstance(g.trunk, ObsToChunkTransformer) and isinstance(m.trunk, ObsToChunkTransformer)
    w = torch.cat([mod.weight.flatten() for mod in g.modules() if isinstance(mod, nn.Linear)])
    assert abs(w.std().item() - 0.02) < 0.002
    assert all(mod.bias.abs().max() == 0 for mod in g.modules() if isinstance(mod, nn.Linear))
    # Learned queries make the decoded steps differ along the horizon.
    feat = g.trunk(make_cond()["state"].flatten(1))
    assert feat.shape == (B, TA, 64)
    assert (feat[:, 0] - feat[:, 1]).abs().max() > 1e-3


def test_invalid_std_arguments_raise() -> None:
    with pytest.raises(ValueError, match="learn_fixed_std"):
        GaussianMLP(DA, TA, COND_DIM, learn_fixed_std=True)
    with pytest.raises(ValueError, match="std_min"):
        GMMMLP(DA, TA, COND_DIM, std_min=0.5, std_max=0.1)
    with pytest.raises(ValueError, match="dropout"):
        GaussianMLP(DA, TA, COND_DIM, mlp_dims=(8, 8), fixed_std=0.1, residual_style=True, dropout=0.1)


# ------------------------------------------------------------------------------------------------------
# Densities against closed forms


def test_gaussian_log_prob_loss_entropy_closed_form() -> None:
    mean = torch.tensor([0.0, 0.5, -0.2, 0.1, 0.3, -0.7])
    scale = torch.tensor([0.5, 0.1, 1.0, 0.2, 0.3, 0.05])
    policy = GaussianModel(ConstGaussianNet(mean, scale), horizon_steps=TA, action_dim=DA, ent_coef=0.0)
    cond = make_cond(batch=2)
    actions = torch.tensor([[0.5, 0.4, 0.0, 0.1, -0.3, -0.6], [0.1, 0.6, 1.5, 0.0, 0.3, -0.75]])
    expected = torch.tensor(
        [[normal_logpdf(a, m, s) for a, m, s in zip(row, mean.tolist(), scale.tolist())] for row in actions.tolist()]
    ).view(2, TA, DA)
    chain = torch.stack((torch.zeros(2, TA, DA), actions.view(2, TA, DA)), dim=1)
    torch.testing.assert_close(policy.chain_log_prob(cond, chain)[:, 0], expected)
    torch.testing.assert_close(policy.chain_log_prob(cond, chain, torch.zeros(2, dtype=torch.long)), expected)
    # chain[:, 0] is a dummy: changing it changes nothing.
    chain2 = chain.clone()
    chain2[:, 0] = 7.0
    torch.testing.assert_close(policy.chain_log_prob(cond, chain2)[:, 0], expected)

    torch.testing.assert_close(policy.loss(actions.view(2, TA, DA), cond), -expected.mean())
    ent_per_dim = [0.5 + 0.5 * math.log(2 * math.pi) + math.log(s) for s in scale.tolist()]
    torch.testing.assert_close(policy.entropy(cond), torch.full((2,), sum(ent_per_dim) / 6))
    policy.ent_coef = 0.3
    torch.testing.assert_close(
        policy.loss(actions.view(2, TA, DA), cond), -expected.mean() - 0.3 * sum(ent_per_dim) / 6
    )


def test_gmm_log_prob_two_modes_hand_computed() -> None:
    # Ta = 1, Da = 2: a two-mode mixture over a 2-d chunk.
    means = torch.tensor([[0.5, -0.5], [-0.3, 0.2]])
    scales = torch.tensor([[0.2, 0.4], [0.5, 0.1]])
    logits = torch.tensor([0.3, -0.4])
    policy = GMMModel(ConstGMMNet(means, scales, logits), horizon_steps=1, action_dim=2)
    a = [0.4, -0.1]
    w = [math.exp(v) / (math.exp(0.3) + math.exp(-0.4)) for v in (0.3, -0.4)]
    comp = [sum(normal_logpdf(a[d], means[m, d].item(), scales[m, d].item()) for d in range(2)) for m in range(2)]
    expected = math.log(w[0] * math.exp(comp[0]) + w[1] * math.exp(comp[1]))

    cond = make_cond(batch=1)
    actions = torch.tensor(a).view(1, 1, 2)
    assert policy.log_prob(cond, actions).item() == pytest.approx(expected, rel=1e-5)
    assert policy.loss(actions, cond).item() == pytest.approx(-expected, rel=1e-5)
    # Same as torch's MixtureSameFamily(Categorical, Independent(Normal, 1)).
    dist = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits),
        torch.distributions.Independent(torch.distributions.Normal(means, scales), 1),
    )
    assert dist.log_prob(torch.tensor(a)).item() == pytest.approx(expected, rel=1e-5)

    chain = torch.stack((torch.zeros_like(actions), actions), dim=1)
    per_elem = policy.chain_log_prob(cond, chain)
    assert per_elem.shape == (1, 1, 1, 2)
    torch.testing.assert_close(per_elem, torch.full((1, 1, 1, 2), expected / 2))
    assert per_elem.sum().item() == pytest.approx(expected, rel=1e-5)

    ent = sum(
        w[m] * sum(0.5 + 0.5 * math.log(2 * math.pi) + math.log(scales[m, d].item()) for d in range(2)) / 2
        for m in range(2)
    )
    assert policy.entropy(cond).item() == pytest.approx(ent, rel=1e-5)


def test_single_mode_gmm_equals_gaussian_joint_density() -> None:
    torch.manual_seed(1)
    mean, scale = torch.rand(TA * DA) - 0.5, torch.rand(TA * DA) * 0.5 + 0.1
    gmm = GMMModel(ConstGMMNet(mean[None], scale[None], torch.zeros(1)), TA, DA)
    gauss = GaussianModel(ConstGaussianNet(mean, scale), TA, DA)
    cond = make_cond()
    sample = gauss.sample(cond, return_chain=True)
    joint = gauss.chain_log_prob(cond, sample.chain).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gmm.log_prob(cond, sample.actions), joint)


def test_chain_validation() -> None:
    policy = GaussianModel(GaussianMLP(DA, TA, COND_DIM, mlp_dims=(8,), fixed_std=0.1), TA, DA)
    cond = make_cond()
    chain = policy.sample(cond, return_chain=True).chain
    with pytest.raises(ValueError, match="step 0"):
        policy.chain_log_prob(cond, chain, torch.ones(B, dtype=torch.long))
    with pytest.raises(ValueError, match="chain"):
        policy.chain_log_prob(cond, torch.zeros(B, 3, TA, DA))
    assert policy.n_chain_steps == 1 and GMMModel.n_chain_steps == 1


# ------------------------------------------------------------------------------------------------------
# Std bounds


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), std_min=0.05, std_max=0.3),
        lambda: GaussianTransformer(DA, TA, COND_DIM, std_min=0.05, std_max=0.3, **SMALL_TF),
        lambda: GMMMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), std_min=0.05, std_max=0.3),
        lambda: GMMTransformer(DA, TA, COND_DIM, std_min=0.05, std_max=0.3, **SMALL_TF),
    ],
    ids=["gauss_mlp", "gauss_tf", "gmm_mlp", "gmm_tf"],
)
def test_learned_std_within_bounds(make) -> None:
    torch.manual_seed(0)
    net = make()
    # Blow up the raw log-variance outputs so that both bounds are hit.
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(30.0)
    cond = {"state": 10.0 * torch.randn(256, TO, DO)}
    scale = net(cond)[1]
    assert scale.min().item() >= 0.05 * (1 - 1e-5) and scale.max().item() <= 0.3 * (1 + 1e-5)
    assert scale.min().item() < 0.06 and scale.max().item() > 0.25  # the range is actually used


@pytest.mark.parametrize("cls", [GaussianMLP, GMMMLP])
def test_learned_fixed_std_clamped_and_trainable(cls) -> None:
    net = cls(DA, TA, COND_DIM, mlp_dims=(8, 8), fixed_std=0.1, learn_fixed_std=True, std_min=0.05, std_max=0.2)
    assert net.std.logvar is not None
    policy = GaussianModel(net, TA, DA) if cls is GaussianMLP else GMMModel(net, TA, DA)
    assert any(p is net.std.logvar for p in policy.trainable_parameters())
    torch.testing.assert_close(net(make_cond())[1], torch.full_like(net(make_cond())[1], 0.1))
    with torch.no_grad():
        net.std.logvar.fill_(5.0)
    torch.testing.assert_close(net(make_cond())[1], torch.full_like(net(make_cond())[1], 0.2))
    with torch.no_grad():
        net.std.logvar[..., 0] = -20.0
    scale = net(make_cond())[1]
    if cls is GaussianMLP:
        # Per-action-dim value tiled over the horizon in (t, d) order: dims 0 -> std_min, dims 1 -> std_max.
        assert torch.allclose(scale[:, 0::DA], torch.tensor(0.05)) and torch.allclose(
            scale[:, 1::DA], torch.tensor(0.2)
        )
    else:
        assert torch.allclose(scale[..., 0::DA], torch.tensor(0.05)) and torch.allclose(
            scale[..., 1::DA], torch.tensor(0.2)
        )


def test_std_bounds_not_overwritten_by_checkpoint() -> None:
    """docs/algorithms.md#d7-gaussian-std-bounds: loading a std_max=1 checkpoint into a std_max=0.2 net keeps 0.2."""
    torch.manual_seed(0)
    pre = GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), std_max=1.0)
    ft = GaussianMLP(DA, TA, COND_DIM, mlp_dims=(16, 16), std_max=0.2)
    assert not any("logvar_m" in k for k in pre.state_dict())
    ft.load_state_dict(pre.state_dict())
    with torch.no_grad():
        for p in ft.parameters():
            p.mul_(30.0)
    assert ft(make_cond(256))[1].max().item() <= 0.2 * (1 + 1e-5)


def test_transformer_head_slices() -> None:
    """Means are the first M*Da head columns, log-variances the next M*Da (reference slice quirk fixed)."""
    torch.manual_seed(0)
    m = 3
    net = GMMTransformer(DA, TA, COND_DIM, num_modes=m, **SMALL_TF)
    with torch.no_grad():
        net.head.weight.zero_()
        mean_bias = torch.arange(m * DA, dtype=torch.float32) / 10 - 0.2  # column m*Da + d
        net.head.bias[: m * DA] = torch.atanh(mean_bias)
        net.head.bias[m * DA :] = math.log(0.3**2)
    means, scales, _ = net(make_cond())
    expected = mean_bias.view(m, DA).repeat(1, TA)  # (M, Ta*Da): value of (m, d) at every step
    torch.testing.assert_close(means, expected.expand(B, -1, -1))
    torch.testing.assert_close(scales, torch.full_like(scales, 0.3))
    # The reordering (B, Ta, M*Da) -> (B, M, Ta*Da) keeps each (t, m, d) entry.
    x = torch.tensor([[100.0 * t + 10 * mm + d for mm in range(m) for d in range(DA)] for t in range(TA)])
    y = net._per_mode(x[None])
    for t in range(TA):
        for mm in range(m):
            for d in range(DA):
                assert y[0, mm, t * DA + d] == 100 * t + 10 * mm + d

    g = GaussianTransformer(DA, TA, COND_DIM, **SMALL_TF)
    with torch.no_grad():
        g.head.weight.zero_()
        g.head.bias[:DA] = torch.atanh(torch.tensor([0.1, -0.4]))
        g.head.bias[DA:] = math.log(0.25**2)
    mean, scale = g(make_cond())
    torch.testing.assert_close(mean, torch.tensor([0.1, -0.4]).repeat(TA).expand(B, -1))
    torch.testing.assert_close(scale, torch.full_like(scale, 0.25))


# ------------------------------------------------------------------------------------------------------
# Sampling rules


def test_gaussian_sampling_clip_deterministic_and_grad() -> None:
    mean = torch.linspace(-0.5, 0.5, TA * DA)
    scale = torch.full((TA * DA,), 0.2)
    policy = GaussianModel(ConstGaussianNet(mean, scale), TA, DA, randn_clip_value=0.5)
    cond = make_cond(batch=4000)
    out = policy.sample(cond, return_chain=True)
    dev = (out.actions - mean.view(TA, DA)).abs()
    assert dev.max().item() <= 0.5 * 0.2 + 1e-6
    assert (dev > 0.099).float().mean().item() > 0.5  # clamping is active (P(|z| > 0.5) ~ 0.62)
    assert torch.all(out.chain[:, 0] == 0) and torch.equal(out.chain[:, 1], out.actions)

    det = policy.sample(cond, deterministic=True)
    torch.testing.assert_close(det.actions, mean.view(1, TA, DA).expand(4000, -1, -1))

    # Reparameterised: gradients reach the network through the samples (needed by DQL-style losses).
    policy.sample(make_cond(), deterministic=False).actions.sum().backward()
    assert policy.network.mean.grad is not None and policy.network.scale.grad.abs().sum() > 0


def test_gmm_deterministic_is_mean_of_most_likely_mode() -> None:
    means = torch.tensor([[0.5, -0.5], [-0.3, 0.2], [0.9, 0.9]])
    scales = torch.full((3, 2), 0.3)
    policy = GMMModel(ConstGMMNet(means, scales, torch.tensor([0.0, 2.0, 1.0])), horizon_steps=1, action_dim=2)
    for _ in range(3):
        det = policy.sample(make_cond(), deterministic=True).actions
        torch.testing.assert_close(det, means[1].view(1, 1, 2).expand(B, -1, -1))
    # Stochastic samples pick modes in proportion to the weights.
    policy = GMMModel(
        ConstGMMNet(means, torch.full((3, 2), 0.01), torch.tensor([0.0, 2.0, 1.0])),
        horizon_steps=1,
        action_dim=2,
    )
    torch.manual_seed(0)
    acts = policy.sample(make_cond(batch=6000)).actions[:, 0]
    nearest = torch.cdist(acts, means).argmin(dim=1)
    freq = torch.bincount(nearest, minlength=3).float() / 6000
    torch.testing.assert_close(freq, torch.softmax(torch.tensor([0.0, 2.0, 1.0]), 0), atol=0.02, rtol=0)


# ------------------------------------------------------------------------------------------------------
# Behaviour cloning


def _regression_data(n: int = 64) -> tuple[dict[str, Tensor], Tensor]:
    """Chunks (Ta=2, Da=2) that are a fixed smooth function of the state plus a per-step offset."""
    g = torch.Generator().manual_seed(0)
    state = torch.rand(n, 1, 3, generator=g) * 2 - 1
    w = torch.randn(3, 2, generator=g)
    base = 0.6 * torch.tanh(state.flatten(1) @ w)  # (n, Da)
    actions = base[:, None, :] + torch.tensor([-0.2, 0.2]).view(1, 2, 1)
    return {"state": state}, actions


def _fit(policy: nn.Module, cond: dict[str, Tensor], actions: Tensor, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    first = policy.loss(actions, cond).item()
    for _ in range(steps):
        loss = policy.loss(actions, cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, policy.loss(actions, cond).item()


@pytest.mark.parametrize(
    "make",
    [
        lambda: GaussianModel(GaussianMLP(2, 2, 3, mlp_dims=(64, 64)), 2, 2),
        lambda: GaussianModel(
            GaussianTransformer(2, 2, 3, embed_dim=32, num_heads=2, num_layers=1, fixed_std=0.1), 2, 2
        ),
        lambda: GMMModel(GMMMLP(2, 2, 3, mlp_dims=(64, 64), num_modes=3), 2, 2),
        lambda: GMMModel(
            GMMTransformer(2, 2, 3, embed_dim=32, num_heads=2, num_layers=1, num_modes=2, fixed_std=0.1), 2, 2
        ),
    ],
    ids=["gauss_mlp", "gauss_tf", "gmm_mlp", "gmm_tf"],
)
def test_bc_loss_falls_and_deterministic_hits_targets(make) -> None:
    torch.manual_seed(0)
    policy = make()
    cond, actions = _regression_data()
    first, last = _fit(policy, cond, actions, steps=150, lr=1e-2)
    assert last < first - 1.0, (first, last)
    with torch.no_grad():
        pred = policy.sample(cond, deterministic=True).actions
    mse = ((pred - actions) ** 2).mean().item()
    # Predicting the mean action would give the variance (~0.2); require > 95% of it explained.
    assert actions.var().item() > 0.15
    assert mse < 0.01, mse


def test_gmm_fits_bimodal_actions() -> None:
    torch.manual_seed(0)
    n = 512
    cond = {"state": torch.zeros(n, 1, 1)}
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    actions = (0.6 * sign + 0.05 * torch.randn(n)).view(n, 1, 1)
    policy = GMMModel(GMMMLP(1, 1, 1, mlp_dims=(32, 32), num_modes=3), horizon_steps=1, action_dim=1)
    _fit(policy, cond, actions, steps=200, lr=1e-2)
    with torch.no_grad():
        samples = policy.sample({"state": torch.zeros(4000, 1, 1)}).actions.flatten()
        det = policy.sample({"state": torch.zeros(1, 1, 1)}, deterministic=True).actions.item()
    upper = ((samples - 0.6).abs() < 0.15).float().mean().item()
    lower = ((samples + 0.6).abs() < 0.15).float().mean().item()
    assert 0.35 < upper < 0.65 and 0.35 < lower < 0.65, (upper, lower)
    assert (samples.abs() < 0.3).float().mean().item() < 0.02  # no mass between the modes
    assert abs(abs(det) - 0.6) < 0.05
