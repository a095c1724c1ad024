"""DiffusionModel, denoiser networks and eta modules: shapes, hand-computed math, routing, learning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Normal

from model.base import Sample
from model.common.mlp import MLP, ResidualMLP
from model.diffusion.diffusion import DiffusionModel
from model.diffusion.eta import EtaAction, EtaFixed, EtaState, EtaStateAction
from model.diffusion.mlp_diffusion import DiffusionMLP
from model.diffusion.schedule import cosine_beta_schedule, ddim_timesteps, ddpm_constants
from model.diffusion.unet import Unet1D

TA, DA, DO = 4, 3, 5


def make_net(seed: int = 0, **kw) -> DiffusionMLP:
    torch.manual_seed(seed)
    kwargs = dict(time_dim=8, mlp_dims=[32, 32, 32], residual_style=True, activation_type="Mish")
    kwargs.update(kw)
    return DiffusionMLP(DA, TA, DO, **kwargs)


def make_model(seed: int = 0, **kw) -> DiffusionModel:
    kwargs = dict(denoising_steps=10)
    kwargs.update(kw)
    return DiffusionModel(make_net(seed), TA, DO, DA, **kwargs)


def make_cond(b: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"state": torch.rand(b, 1, DO, generator=g) * 2 - 1}


def perturb(module: nn.Module, scale: float = 0.2, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------------------------------------------
# sampling shapes and chain layout


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(ft_denoising_steps=4),
        dict(ft_denoising_steps=10),
        dict(ft_denoising_steps=1),
        dict(use_ddim=True, ddim_steps=5, ft_denoising_steps=5),
        dict(use_ddim=True, ddim_steps=5, ft_denoising_steps=2, eta=EtaStateAction(DO, DA, mlp_dims=[8])),
    ],
    ids=["ddpm", "ddpm-ft4", "ddpm-ftK", "ddpm-ft1", "ddim-ftKd", "ddim-ft2-eta-sa"],
)
@pytest.mark.parametrize("deterministic", [False, True])
def test_sample_and_chain_shapes(kw: dict, deterministic: bool) -> None:
    model = make_model(final_action_clip_value=0.5, **kw)
    with torch.no_grad():
        out = model.sample(make_cond(6), deterministic=deterministic, return_chain=True)
        plain = model.sample(make_cond(6), deterministic=deterministic)
    assert isinstance(out, Sample)
    assert out.actions.shape == (6, TA, DA) and plain.chain is None
    assert out.chain is not None and out.chain.shape == (6, model.n_chain_steps + 1, TA, DA)
    assert torch.equal(out.chain[:, -1], out.actions)  # the last chain entry is the executed chunk
    assert out.actions.abs().max() <= 0.5  # final clip applied before the chain is stored


def test_chain_starts_with_initial_noise_when_all_steps_are_finetuned() -> None:
    model = make_model(ft_denoising_steps=10)
    torch.manual_seed(7)
    x_k = torch.randn(3, TA, DA)  # sampling draws the initial x_K first
    torch.manual_seed(7)
    with torch.no_grad():
        chain = model.sample(make_cond(3), return_chain=True).chain
    assert chain is not None
    torch.testing.assert_close(chain[:, 0], x_k)


def test_noise_free_chain_is_the_mean_path() -> None:
    """With the noise clamped to 0, every stored transition is exactly the reverse-step mean."""
    model = make_model(ft_denoising_steps=6, randn_clip_value=0.0, min_logprob_denoising_std=0.1)
    cond = make_cond(5)
    with torch.no_grad():
        chain = model.sample(cond, return_chain=True).chain
        lp = model.chain_log_prob(cond, chain)
    peak = -math.log(0.1) - 0.5 * math.log(2 * math.pi)  # x_next == mu -> log-density at the mode
    c = ddpm_constants(cosine_beta_schedule(10))
    std = c.posterior_std[torch.arange(5, -1, -1)].clamp(min=0.1)
    expected = (-std.log() - 0.5 * math.log(2 * math.pi)).view(1, 6, 1, 1).expand_as(lp)
    torch.testing.assert_close(lp, expected, atol=1e-4, rtol=0)
    assert lp[:, -1].max().item() == pytest.approx(peak, abs=1e-4)


def _z_per_step(model: DiffusionModel, cond: dict, chain: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardised residual |x_next - mu| / std of every transition, from the chain log-probs."""
    with torch.no_grad():
        lp = model.chain_log_prob(cond, chain)
    std = std.view(1, -1, 1, 1)
    sq = (-2 * (lp + std.log() + 0.5 * math.log(2 * math.pi))).clamp(min=0)
    return sq.sqrt()


def test_stochastic_ddpm_noise_scale_and_clip() -> None:
    k = 5
    c = ddpm_constants(cosine_beta_schedule(k))
    std = c.posterior_std.flip(0).clamp(min=0.1)  # loop order t = K-1..0, floored at min_sampling_std
    cond = make_cond(2000)
    torch.manual_seed(0)
    model = make_model(denoising_steps=k, ft_denoising_steps=k, min_sampling_denoising_std=0.1)
    with torch.no_grad():
        chain = model.sample(cond, return_chain=True).chain
    z = _z_per_step(model, cond, chain, std)
    mean_sq = z.square().mean(dim=(0, 2, 3))
    # 24k standard-normal draws per step: E[z^2] = 1 with s.e. ~0.01.
    torch.testing.assert_close(mean_sq, torch.ones(k), atol=0.06, rtol=0)

    clipped = make_model(denoising_steps=k, ft_denoising_steps=k, randn_clip_value=0.5)
    with torch.no_grad():
        chain = clipped.sample(cond, return_chain=True).chain
    z = _z_per_step(clipped, cond, chain, std)
    assert z.max().item() <= 0.5 + 1e-3 and z.max().item() > 0.45


def test_deterministic_ddpm_rule() -> None:
    """Deterministic DDPM: std max(std_t, 1e-3) for t > 0 (kept reference rule), exactly no noise at t = 0."""
    k = 5
    c = ddpm_constants(cosine_beta_schedule(k))
    model = make_model(denoising_steps=k, ft_denoising_steps=k, min_logprob_denoising_std=1e-4)
    cond = make_cond(2000)
    with torch.no_grad():
        chain = model.sample(cond, deterministic=True, return_chain=True).chain
    std = c.posterior_std.flip(0).clamp(min=1e-4)
    z = _z_per_step(model, cond, chain, std)
    torch.testing.assert_close(z[:, :-1].square().mean(dim=(0, 2, 3)), torch.ones(k - 1), atol=0.06, rtol=0)
    assert z[:, -1].max().item() < 1e-2  # |x_0 - mu| < 1e-6: the last step is the mean


def test_deterministic_ddim_follows_eta0_update() -> None:
    """Deterministic DDIM: x_next = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps_hat, no noise at all."""
    k, kd, b = 20, 5, 4
    model = make_model(denoising_steps=k, use_ddim=True, ddim_steps=kd, ft_denoising_steps=kd)
    c = ddpm_constants(cosine_beta_schedule(k))
    taus = ddim_timesteps(k, kd).tolist()
    cond = make_cond(b)
    with torch.no_grad():
        chain = model.sample(cond, deterministic=True, return_chain=True).chain
        for i in range(kd):
            a = c.alphas_cumprod[taus[i]]
            a_prev = c.alphas_cumprod[taus[i + 1]] if i + 1 < kd else torch.tensor(1.0)
            x = chain[:, i]
            eps = model.actor_ft(x, torch.full((b,), taus[i], dtype=torch.long), cond)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            torch.testing.assert_close(chain[:, i + 1], a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)


# ----------------------------------------------------------------------------------------------------------
# DDIM with Kd = K and eta = 1 is DDPM


def test_ddim_full_grid_eta1_equals_ddpm() -> None:
    k = 10
    ddpm = make_model(denoising_steps=k, ft_denoising_steps=k, randn_clip_value=0.0, min_sampling_denoising_std=0)
    ddim = make_model(
        denoising_steps=k,
        ft_denoising_steps=k,
        randn_clip_value=0.0,
        min_sampling_denoising_std=0,
        use_ddim=True,
        ddim_steps=k,
        eta=1.0,
    )
    # Same network timesteps and the same x0-hat coefficients step by step.
    assert torch.equal(ddpm.step_t, ddim.step_t)
    torch.testing.assert_close(ddim.step_x0_x, ddpm.step_x0_x, rtol=1e-6, atol=0)
    torch.testing.assert_close(ddim.step_x0_eps, ddpm.step_x0_eps, rtol=1e-5, atol=0)
    # eta = 1 on the full grid gives sigma_t = DDPM posterior std and mean sqrt(a_prev) x0 + sqrt(1 - a_prev -
    # sigma^2) eps_hat(x0) = c1 x0 + c2 x. With the noise zeroed both chains are the same mean path.
    cond = make_cond(8)
    torch.manual_seed(11)
    with torch.no_grad():
        chain_ddpm = ddpm.sample(cond, return_chain=True).chain
    torch.manual_seed(11)
    with torch.no_grad():
        chain_ddim = ddim.sample(cond, return_chain=True).chain
    assert chain_ddpm is not None and chain_ddim is not None
    assert chain_ddpm[:, 1:].std() > 0.1  # not trivially zero
    torch.testing.assert_close(chain_ddim, chain_ddpm, atol=2e-4, rtol=0)
    # The same identity makes the per-step log-densities of an arbitrary chain agree.
    chain = torch.randn(8, k + 1, TA, DA) * 0.7
    with torch.no_grad():
        torch.testing.assert_close(
            ddim.chain_log_prob(cond, chain), ddpm.chain_log_prob(cond, chain), atol=2e-3, rtol=1e-4
        )


# ----------------------------------------------------------------------------------------------------------
# chain log-probs against independent hand computations


def test_ddpm_chain_log_prob_matches_hand_computation() -> None:
    k, kp, b = 10, 4, 7
    model = make_model(denoising_steps=k, ft_denoising_steps=kp, min_logprob_denoising_std=0.1)
    perturb(model.actor_ft)  # routing must use the fine-tuned copy
    c = ddpm_constants(cosine_beta_schedule(k))
    cond = make_cond(b)
    chain = torch.randn(b, kp + 1, TA, DA) * 0.8
    expected = []
    with torch.no_grad():
        for j in range(kp):
            t = kp - 1 - j
            x = chain[:, j]
            eps = model.actor_ft(x, torch.full((b,), t, dtype=torch.long), cond)
            x0 = (c.sqrt_recip_alphas_cumprod[t] * x - c.sqrt_recipm1_alphas_cumprod[t] * eps).clamp(-1, 1)
            mu = c.posterior_mean_coef1[t] * x0 + c.posterior_mean_coef2[t] * x
            std = torch.exp(0.5 * c.posterior_logvar_clipped[t]).clamp(min=0.1)
            expected.append(Normal(mu, std).log_prob(chain[:, j + 1]))
        expected_t = torch.stack(expected, dim=1)
        got = model.chain_log_prob(cond, chain)
        assert got.shape == (b, kp, TA, DA)
        torch.testing.assert_close(got, expected_t, atol=1e-5, rtol=1e-5)
        step = torch.tensor([0, 1, 2, 3, 3, 1, 0])
        got_step = model.chain_log_prob(cond, chain, step)
        assert got_step.shape == (b, TA, DA)
        torch.testing.assert_close(got_step, expected_t[torch.arange(b), step], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("eta_kind", ["fixed", "state_action", "float"])
def test_ddim_chain_log_prob_matches_hand_computation(eta_kind: str) -> None:
    k, kd, kp, b = 20, 5, 3, 6
    eta: nn.Module | float
    if eta_kind == "fixed":
        eta = EtaFixed(base_eta=0.7, min_eta=0.1, max_eta=1.0)
    elif eta_kind == "state_action":
        torch.manual_seed(5)
        eta = EtaStateAction(DO, DA, mlp_dims=[8], base_eta=0.6, min_eta=0.01, max_eta=2.0)
        perturb(eta, scale=1.0)  # make eta genuinely state- and dim-dependent
    else:
        eta = 0.4
    model = make_model(
        denoising_steps=k, use_ddim=True, ddim_steps=kd, ft_denoising_steps=kp, eta=eta, eps_clip_value=2.0
    )
    perturb(model.actor_ft)
    c = ddpm_constants(cosine_beta_schedule(k))
    taus = ddim_timesteps(k, kd).tolist()
    cond = make_cond(b)
    chain = torch.randn(b, kp + 1, TA, DA) * 0.8
    with torch.no_grad():
        eta_val = eta(cond).view(b, 1, -1) if isinstance(eta, nn.Module) else torch.tensor(eta)
        expected = []
        for j in range(kp):
            i = kd - kp + j
            a = c.alphas_cumprod[taus[i]]
            a_prev = c.alphas_cumprod[taus[i + 1]] if i + 1 < kd else torch.tensor(1.0)
            x = chain[:, j]
            eps = model.actor_ft(x, torch.full((b,), taus[i], dtype=torch.long), cond)
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            eps = ((x - a.sqrt() * x0) / (1 - a).sqrt()).clamp(-2.0, 2.0)
            sigma = (eta_val * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()).clamp(min=1e-10)
            mu = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
            expected.append(Normal(mu, sigma.clamp(min=0.1).expand_as(mu)).log_prob(chain[:, j + 1]))
        expected_t = torch.stack(expected, dim=1)
        torch.testing.assert_close(model.chain_log_prob(cond, chain), expected_t, atol=1e-4, rtol=1e-5)
        step = torch.tensor([2, 0, 1, 2, 0, 1])
        torch.testing.assert_close(
            model.chain_log_prob(cond, chain, step), expected_t[torch.arange(b), step], atol=1e-4, rtol=1e-5
        )


@pytest.mark.parametrize("use_ddim", [False, True])
def test_single_finetuned_step_gives_finite_log_probs(use_ddim: bool) -> None:
    kw = dict(use_ddim=True, ddim_steps=5) if use_ddim else {}
    model = make_model(ft_denoising_steps=1, **kw)
    cond = make_cond(4)
    with torch.no_grad():  # as in PPO: chains are stored data, only the log-prob is differentiated
        sample = model.sample(cond, return_chain=True)
    assert sample.chain is not None and sample.chain.shape == (4, 2, TA, DA)
    lp = model.chain_log_prob(cond, sample.chain)
    assert lp.shape == (4, 1, TA, DA) and torch.isfinite(lp).all()
    lp.sum().backward()
    grads = [p.grad for p in model.trainable_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads if g is not None)


# ----------------------------------------------------------------------------------------------------------
# routing between the frozen network and actor_ft


def _record_calls(model: DiffusionModel) -> list[tuple[str, list[int], int]]:
    """(net, timesteps of the rows, rows) per network pass: `forward` calls and the sampler's `forward_step`s."""
    calls: list[tuple[str, list[int], int]] = []
    for name in ("network", "actor_ft"):
        module = getattr(model, name)
        module.register_forward_hook(
            lambda mod, inp, out, name=name: calls.append((name, inp[1].tolist(), inp[0].shape[0]))
        )
        prepared: dict[str, torch.Tensor] = {}

        def prepare(cond, steps, orig=module.prepare_steps, prepared=prepared):
            prepared["steps"] = steps
            return orig(cond, steps)

        def step(x, i, context, orig=module.forward_step, prepared=prepared, name=name):
            calls.append((name, [int(prepared["steps"][i])] * x.shape[0], x.shape[0]))
            return orig(x, i, context)

        module.prepare_steps, module.forward_step = prepare, step
    return calls


@pytest.mark.parametrize("use_ddim", [False, True])
def test_each_step_runs_only_the_net_it_needs(use_ddim: bool) -> None:
    kw = dict(use_ddim=True, ddim_steps=5, ft_denoising_steps=2) if use_ddim else dict(ft_denoising_steps=3)
    model = make_model(**kw)
    calls = _record_calls(model)
    cond = make_cond(4)
    with torch.no_grad():
        chain = model.sample(cond, return_chain=True).chain
    if use_ddim:
        expected = [("network", [t] * 4, 4) for t in (8, 6, 4)] + [("actor_ft", [t] * 4, 4) for t in (2, 0)]
    else:
        expected = [("network", [t] * 4, 4) for t in range(9, 2, -1)]
        expected += [("actor_ft", [t] * 4, 4) for t in (2, 1, 0)]
    assert calls == expected
    calls.clear()
    with torch.no_grad():
        model.chain_log_prob(cond, chain)
    ft_times = [2, 0] if use_ddim else [2, 1, 0]  # transition k of every sample, sample-major
    assert calls == [("actor_ft", ft_times * 4, 4 * model.n_chain_steps)]  # one batched call for all K' steps
    calls.clear()
    with torch.no_grad():
        model.sample(cond, use_base_policy=True)
    assert {name for name, _, _ in calls} == {"network"}


def test_perturbing_actor_ft_changes_only_finetuned_steps() -> None:
    model = make_model(ft_denoising_steps=3, randn_clip_value=0.0)  # noise-free: the chain is a function of x_K
    cond = make_cond(5)

    def chain() -> torch.Tensor:
        torch.manual_seed(4)
        with torch.no_grad():
            out = model.sample(cond, return_chain=True).chain
        assert out is not None
        return out

    before = chain()
    perturb(model.actor_ft, scale=0.05)
    after = chain()
    assert torch.equal(before[:, 0], after[:, 0])  # x_{K'} comes from the frozen steps only
    for j in range(1, 4):
        assert (before[:, j] - after[:, j]).abs().max() > 1e-3
    perturb(model.network, scale=0.05)
    assert (chain()[:, 0] - after[:, 0]).abs().max() > 1e-3


def test_chain_log_prob_depends_only_on_trainable_parameters() -> None:
    model = make_model(ft_denoising_steps=3)
    cond = make_cond(5)
    chain = model.sample(cond, return_chain=True).chain.detach()
    lp = model.chain_log_prob(cond, chain)
    lp.mean().backward()
    assert all(p.grad is None for p in model.network.parameters())
    assert all(not p.requires_grad for p in model.network.parameters())
    assert sum(p.grad.abs().sum() for p in model.actor_ft.parameters()) > 0
    perturb(model.network)
    with torch.no_grad():
        torch.testing.assert_close(model.chain_log_prob(cond, chain), lp.detach())


def test_trainable_parameters_state_dict_and_base_loading() -> None:
    model = make_model(ft_denoising_steps=3, eta=EtaFixed(1.0, 0.1, 1.0))
    ft_ids = {id(p) for p in model.actor_ft.parameters()}
    assert {id(p) for p in model.trainable_parameters()} == ft_ids  # eta frozen: learn_eta False
    assert all(not p.requires_grad for p in model.eta.parameters())
    keys = model.state_dict().keys()
    assert all(k.split(".")[0] in {"network", "actor_ft", "eta"} for k in keys)
    assert "step_x0_x" in dict(model.named_buffers()) and "step_x0_x" not in keys  # non-persistent buffers

    other = make_net(seed=9)
    model.load_base_state_dict({f"network.{k}": v for k, v in other.state_dict().items()} | {"x.y": 0})
    for sd in (model.network.state_dict(), model.actor_ft.state_dict()):
        for k, v in other.state_dict().items():
            assert torch.equal(sd[k], v)
    perturb(model.actor_ft)
    model.load_base_state_dict(other.state_dict())  # a bare denoiser state dict also works, re-copying actor_ft
    assert all(torch.equal(a, b) for a, b in zip(model.actor_ft.parameters(), other.parameters()))
    assert all(p.requires_grad for p in model.actor_ft.parameters())

    pre = make_model(ft_denoising_steps=0)
    assert {id(p) for p in pre.trainable_parameters()} == {id(p) for p in pre.network.parameters()}
    assert pre.n_chain_steps == 0


# ----------------------------------------------------------------------------------------------------------
# eta modules


@pytest.mark.parametrize("eta_cls", [EtaFixed, EtaAction, EtaState, EtaStateAction])
def test_learned_eta_gets_gradients(eta_cls: type) -> None:
    if eta_cls is EtaFixed:
        eta = EtaFixed(base_eta=1.0, min_eta=0.1, max_eta=1.5)
    elif eta_cls is EtaAction:
        eta = EtaAction(DA, base_eta=0.5)
    elif eta_cls is EtaState:
        eta = EtaState(DO, mlp_dims=[8])
    else:
        eta = EtaStateAction(DO, DA, mlp_dims=[8])
    model = make_model(use_ddim=True, ddim_steps=5, ft_denoising_steps=5, eta=eta, learn_eta=True)
    eta_ids = {id(p) for p in eta.parameters()}
    assert eta_ids <= {id(p) for p in model.trainable_parameters()}
    cond = make_cond(6)
    chain = model.sample(cond, return_chain=True).chain.detach()
    model.chain_log_prob(cond, chain).sum().backward()
    grads = [p.grad for p in eta.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    ent = model.entropy(cond)
    assert ent is not None and ent.shape == (6,)


def test_eta_fixed_on_the_bound_is_finite() -> None:
    """base_eta == max_eta gives a finite, differentiable eta ~ max (docs/algorithms.md#d10-differentiable-eta)."""
    eta = EtaFixed(base_eta=1.0, min_eta=0.1, max_eta=1.0)
    assert math.isfinite(eta.eta_logit.item())
    value = eta(make_cond(3))
    assert value.shape == (3, 1)
    torch.testing.assert_close(value, torch.ones(3, 1), atol=1e-5, rtol=0)
    value.sum().backward()
    assert eta.eta_logit.grad is not None and torch.isfinite(eta.eta_logit.grad)
    mid = EtaFixed(base_eta=0.4, min_eta=0.1, max_eta=1.0)
    assert mid(make_cond(2))[0, 0].item() == pytest.approx(0.4, abs=1e-6)
    with pytest.raises(ValueError):
        EtaFixed(base_eta=2.0, min_eta=0.1, max_eta=1.0)


def test_eta_state_starts_near_base_and_checks_input() -> None:
    eta = EtaState(DO, mlp_dims=[16], base_eta=0.5)
    out = eta(make_cond(4))
    assert out.shape == (4, 1)
    torch.testing.assert_close(out, torch.full((4, 1), 0.5), atol=1e-2, rtol=0)
    esa = EtaStateAction(DO, DA, mlp_dims=[16])
    assert esa(make_cond(4)).shape == (4, DA)
    with pytest.raises(ValueError, match="input_dim"):
        EtaState(DO + 1, mlp_dims=[4])(make_cond(2))


# ----------------------------------------------------------------------------------------------------------
# constructor validation


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(ft_denoising_steps=11), "ft_denoising_steps"),
        (dict(use_ddim=True), "ddim_steps"),
        (dict(use_ddim=True, ddim_steps=11), "ddim_steps"),
        (dict(use_ddim=True, ddim_steps=4, ft_denoising_steps=5), "ft_denoising_steps"),
        (dict(use_ddim=True, ddim_steps=4, predict_epsilon=False), "predict_epsilon"),
        (dict(learn_eta=True, eta=EtaFixed()), "use_ddim"),
        (dict(use_ddim=True, ddim_steps=4, learn_eta=True), "eta module"),
        (dict(randn_clip_value=-1.0), "randn_clip_value"),
        (dict(min_sampling_denoising_std=-0.1), "min_sampling_denoising_std"),
        (dict(denoising_steps=0), "denoising_steps"),
    ],
)
def test_constructor_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_model(**kw)


def test_chain_shape_is_checked() -> None:
    model = make_model(ft_denoising_steps=3)
    with pytest.raises(ValueError, match="K'"):
        model.chain_log_prob(make_cond(2), torch.zeros(2, 3, TA, DA))


# ----------------------------------------------------------------------------------------------------------
# pretraining loss


class OracleEps(nn.Module):
    """Knows the clean chunk a0 and inverts the forward process exactly."""

    def __init__(self, a0: torch.Tensor, k: int, predict_epsilon: bool = True) -> None:
        super().__init__()
        self.a0 = a0
        self.c = ddpm_constants(cosine_beta_schedule(k))
        self.predict_epsilon = predict_epsilon
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: dict) -> torch.Tensor:
        if not self.predict_epsilon:
            return self.a0.expand_as(x) + 0 * self.dummy
        sab = self.c.sqrt_alphas_cumprod[time].view(-1, 1, 1)
        s1m = self.c.sqrt_one_minus_alphas_cumprod[time].view(-1, 1, 1)
        return (x - sab * self.a0) / s1m + 0 * self.dummy


class ZeroNet(OracleEps):
    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: dict) -> torch.Tensor:
        return torch.zeros_like(x) + 0 * self.dummy


@pytest.mark.parametrize("predict_epsilon", [True, False])
def test_loss_is_epsilon_mse_of_the_forward_process(predict_epsilon: bool) -> None:
    torch.manual_seed(0)
    a0 = torch.rand(1, TA, DA) * 2 - 1
    actions = a0.expand(3000, TA, DA)
    cond = make_cond(3000)
    oracle = DiffusionModel(OracleEps(a0, 10, predict_epsilon), TA, DO, DA, 10, predict_epsilon=predict_epsilon)
    assert oracle.loss(actions, cond).item() < 1e-8
    zero = DiffusionModel(ZeroNet(a0, 10), TA, DO, DA, 10)
    assert zero.loss(actions, cond).item() == pytest.approx(1.0, abs=0.05)  # E[eps^2] = 1


# ----------------------------------------------------------------------------------------------------------
# networks


def test_residual_mlp_structure_and_math() -> None:
    torch.manual_seed(0)
    net = ResidualMLP([5, 8, 8, 8, 3], activation_type="Tanh")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 4  # in, block (2), out
    x = torch.randn(4, 5)
    h = linears[0](x)  # no activation after the input layer
    h = h + linears[2](torch.tanh(linears[1](torch.tanh(h))))
    torch.testing.assert_close(net(x), linears[3](h))
    with pytest.raises(ValueError, match="even"):
        ResidualMLP([5, 8, 8, 3])
    ln = ResidualMLP([5, 8, 8, 8, 3], use_layernorm=True, use_layernorm_final=True)
    assert sum(isinstance(m, nn.LayerNorm) for m in ln.modules()) == 3


def test_mlp_structure() -> None:
    net = MLP([4, 16, 16, 2], activation_type="ReLU", out_activation_type="Tanh", use_layernorm=True, dropout=0.1)
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds == ["Linear", "LayerNorm", "Dropout", "ReLU"] * 2 + ["Linear", "Tanh"]
    net.eval()
    assert net(torch.randn(3, 4)).abs().max() <= 1.0


@pytest.mark.parametrize("kw", [dict(), dict(cond_mlp_dims=[16, 6]), dict(residual_style=False, use_layernorm=True)])
def test_prepared_steps_equal_the_plain_forward(kw: dict) -> None:
    # the sampler's fast path (first-layer state and time terms computed once per chain) is the same function
    net = make_net(**kw)
    x, cond, steps = torch.randn(5, TA, DA), make_cond(5), torch.tensor([9, 4, 0])
    context = net.prepare_steps(cond, steps)
    for i, t in enumerate(steps.tolist()):
        want = net(x, torch.full((5,), t), cond)
        torch.testing.assert_close(net.forward_step(x, i, context), want, rtol=1e-5, atol=1e-6)


def test_diffusion_mlp_input_order() -> None:
    net = make_net(cond_mlp_dims=[16, 6])
    first = net.mlp_mean.layers[0]
    assert first.in_features == TA * DA + 8 + 6
    x, t, cond = torch.randn(3, TA, DA), torch.tensor([0, 4, 9]), make_cond(3)
    h = torch.cat([x.flatten(1), net.time_embedding(t), net.cond_mlp(cond["state"].flatten(1))], dim=-1)
    torch.testing.assert_close(net(x, t, cond), net.mlp_mean(h).view(3, TA, DA))


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(cond_predict_scale=True, n_groups=4),
        dict(smaller_encoder=True),
        dict(cond_mlp_dims=[16, 8], cond_predict_scale=True),
        dict(dim_mults=(1,)),
    ],
)
def test_unet_shapes_and_conditioning(kw: dict) -> None:
    torch.manual_seed(0)
    kwargs = dict(diffusion_step_embed_dim=8, dim=8, dim_mults=(1, 2), kernel_size=3)
    kwargs.update(kw)
    net = Unet1D(DA, DO, **kwargs)
    x, t = torch.randn(2, TA, DA), torch.tensor([1, 7])
    cond = make_cond(2)
    out = net(x, t, cond)
    assert out.shape == (2, TA, DA)
    assert (net(x, t, make_cond(2, seed=5)) - out).abs().max() > 1e-6  # the state modulates the output
    assert (net(x, torch.tensor([3, 3]), cond) - out).abs().max() > 1e-6  # and so does the timestep


def test_unet_down_dims_is_dim_times_mults() -> None:
    torch.manual_seed(0)
    a = Unet1D(DA, DO, diffusion_step_embed_dim=8, dim=8, dim_mults=(1, 2), kernel_size=3)
    torch.manual_seed(0)
    b = Unet1D(DA, DO, diffusion_step_embed_dim=8, down_dims=[8, 16], kernel_size=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_unet_horizon_divisibility() -> None:
    with pytest.raises(ValueError, match="divisible"):
        Unet1D(DA, DO, dim=8, dim_mults=(1, 2, 4), horizon_steps=6)
    net = Unet1D(DA, DO, dim=8, dim_mults=(1, 2, 4))
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(2, 6, DA), torch.tensor([0, 1]), make_cond(2))


# ----------------------------------------------------------------------------------------------------------
# behaviour cloning on a tiny synthetic task


def _target(state: torch.Tensor) -> torch.Tensor:
    """Demonstrated chunk (B, 2, 2) as a fixed function of the 2-D state (B, 1, 2)."""
    s = state[:, 0]
    a = torch.stack([0.6 * s[:, 0] + 0.3 * s[:, 1], 0.8 * torch.sin(2 * s[:, 1])], dim=-1)
    return torch.stack([a, -0.5 * a], dim=1)


def _train_bc(network: nn.Module, steps: int, batch: int, lr: float) -> tuple[list[float], float, float]:
    model = DiffusionModel(network, 2, 2, 2, denoising_steps=10)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        s = torch.rand(batch, 1, 2, generator=g) * 2 - 1
        loss = model.loss(_target(s), {"state": s})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    s = torch.rand(256, 1, 2, generator=g) * 2 - 1
    with torch.no_grad():
        actions = model.sample({"state": s}, deterministic=True).actions
    target = _target(s)
    baseline = (target - target.mean(dim=0)).abs().mean().item()  # error of predicting the mean chunk
    return losses, (actions - target).abs().mean().item(), baseline


def test_bc_learns_with_diffusion_mlp() -> None:
    torch.manual_seed(0)
    net = DiffusionMLP(2, 2, 2, time_dim=8, mlp_dims=[64, 64], activation_type="Mish")
    losses, mae, baseline = _train_bc(net, steps=300, batch=128, lr=3e-3)
    assert sum(losses[-30:]) / 30 < 0.2 * sum(losses[:10]) / 10
    assert mae < 0.12 and mae < 0.35 * baseline, (mae, baseline)


def test_bc_learns_with_unet() -> None:
    torch.manual_seed(0)
    net = Unet1D(2, 2, diffusion_step_embed_dim=8, dim=16, dim_mults=(1, 2), kernel_size=3, smaller_encoder=True)
    losses, mae, baseline = _train_bc(net, steps=200, batch=64, lr=1e-2)
    assert sum(losses[-30:]) / 30 < 0.2 * sum(losses[:10]) / 10
    assert mae < 0.12 and mae < 0.35 * baseline, (mae, baseline)


class CountingEncoderNet(nn.Module):
    """Denoiser with an ``encode_cond`` hook (like the pixel denoisers); counts encoder runs."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_net()
        self.encodes = 0

    def encode_cond(self, cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "encoded" in cond:
            return cond
        self.encodes += 1
        return {"encoded": cond["state"] * 1.0}

    def forward(self, x: torch.Tensor, time: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner(x, time, {"state": self.encode_cond(cond)["encoded"]})


def test_encode_cond_runs_once_per_call() -> None:
    model = DiffusionModel(CountingEncoderNet(), TA, DO, DA, denoising_steps=10, ft_denoising_steps=3)
    cond = make_cond(4)
    with torch.no_grad():
        chain = model.sample(cond, return_chain=True).chain
        assert (model.network.encodes, model.actor_ft.encodes) == (1, 1)  # not once per denoising step
        model.chain_log_prob(cond, chain)
    assert (model.network.encodes, model.actor_ft.encodes) == (1, 2)
