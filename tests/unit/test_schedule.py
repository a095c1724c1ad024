"""Schedule constants against values computed with DPPO's code (docs/algorithms.md#noise-schedule, #ddim)."""

from __future__ import annotations

import pytest
import torch

from model.common.modules import SinusoidalPosEmb, get_activation
from model.diffusion.schedule import (
    cosine_beta_schedule,
    ddim_constants,
    ddim_sigma,
    ddim_timesteps,
    ddpm_constants,
)

# DPPO's DDPM constants for K = 20: t, beta, alpha_bar, sqrt(1/ab), sqrt(1/ab - 1), c1, c2, posterior std.
APPENDIX_A = [
    (0, 0.00799272, 0.992007, 1.00402, 0.0897614, 0.999997, 0.0, 1e-10),
    (1, 0.020075, 0.972093, 1.01425, 0.169436, 0.716465, 0.283514, 0.0758258),
    (2, 0.0322539, 0.940739, 1.03102, 0.250987, 0.536619, 0.463265, 0.123244),
    (3, 0.0446809, 0.898706, 1.05485, 0.335725, 0.427831, 0.57182, 0.161679),
    (4, 0.0575202, 0.847012, 1.08656, 0.424995, 0.356429, 0.642781, 0.195152),
    (5, 0.0709572, 0.78691, 1.12729, 0.520377, 0.306464, 0.69201, 0.225707),
    (6, 0.0852104, 0.719858, 1.17863, 0.62383, 0.269821, 0.727518, 0.254588),
    (7, 0.100547, 0.647478, 1.24276, 0.737871, 0.241994, 0.753672, 0.28267),
    (8, 0.117304, 0.571527, 1.32276, 0.865852, 0.220293, 0.772979, 0.310661),
    (9, 0.135922, 0.493844, 1.423, 1.01239, 0.203013, 0.786893, 0.339207),
    (10, 0.156997, 0.416312, 1.54985, 1.18408, 0.189019, 0.796193, 0.368976),
    (11, 0.181359, 0.34081, 1.71295, 1.39075, 0.177516, 0.801156, 0.400733),
    (12, 0.210212, 0.269168, 1.92747, 1.64777, 0.167917, 0.801583, 0.435436),
    (13, 0.245372, 0.203121, 2.21882, 1.9807, 0.159751, 0.796695, 0.474378),
    (14, 0.289725, 0.144272, 2.63275, 2.43544, 0.152591, 0.784819, 0.519423),
    (15, 0.348137, 0.0940456, 3.26085, 3.10373, 0.14596, 0.762619, 0.573443),
    (16, 0.429434, 0.0536592, 4.31696, 4.19954, 0.139161, 0.723122, 0.641176),
    (17, 0.551024, 0.0240917, 6.44267, 6.36459, 0.130793, 0.649756, 0.730978),
    (18, 0.748476, 0.00605964, 12.8463, 12.8073, 0.116883, 0.492423, 0.857261),
    (19, 0.999, 6.05957e-06, 406.237, 406.236, 0.0777663, 0.0314311, 0.99647),
]
COLUMNS = [
    "betas",
    "alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_std",
]


@pytest.mark.parametrize("column", range(len(COLUMNS)), ids=COLUMNS)
def test_appendix_a_columns(column: int) -> None:
    consts = ddpm_constants(cosine_beta_schedule(20))
    got = getattr(consts, COLUMNS[column])
    assert got.dtype == torch.float32 and got.shape == (20,)
    expected = torch.tensor([row[column + 1] for row in APPENDIX_A], dtype=torch.float64)
    # The table has 6 significant digits; 1e-5 relative covers its rounding. c2_0 is exactly 0.
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-12)


def test_derived_constants_are_consistent() -> None:
    c = ddpm_constants(cosine_beta_schedule(20))
    assert c.betas[-1].item() == pytest.approx(0.999)  # the last beta is always clipped
    torch.testing.assert_close(c.alphas_cumprod_prev[1:], c.alphas_cumprod[:-1])
    assert c.alphas_cumprod_prev[0].item() == 1.0
    assert c.posterior_variance[0].item() == 0.0
    assert c.posterior_logvar_clipped[0].item() == pytest.approx(-46.0517, abs=1e-3)  # log(1e-20)
    torch.testing.assert_close(c.sqrt_alphas_cumprod**2, c.alphas_cumprod)
    torch.testing.assert_close(c.sqrt_one_minus_alphas_cumprod**2, 1 - c.alphas_cumprod)


def test_cosine_schedule_rejects_bad_length() -> None:
    with pytest.raises(ValueError, match="denoising_steps"):
        cosine_beta_schedule(0)


def test_ddim_reference_values() -> None:
    c = ddpm_constants(cosine_beta_schedule(100))
    ts = ddim_timesteps(100, 5)
    assert ts.tolist() == [80, 60, 40, 20, 0]
    d = ddim_constants(c.alphas_cumprod, ts)
    torch.testing.assert_close(
        d.alpha, torch.tensor([0.085146, 0.326115, 0.632516, 0.889103, 0.999369]), rtol=2e-5, atol=0
    )
    torch.testing.assert_close(
        d.alpha_prev, torch.tensor([0.326115, 0.632516, 0.889103, 0.999369, 1.0]), rtol=2e-5, atol=0
    )
    sigma = ddim_sigma(d, 1.0)
    # Reference gives 4 significant digits; the last sigma is 0 floored to 1e-10.
    torch.testing.assert_close(sigma[:4], torch.tensor([0.7378, 0.5140, 0.2951, 0.02506]), rtol=1e-4, atol=0)
    assert sigma[4].item() == pytest.approx(1e-10)
    torch.testing.assert_close(ddim_sigma(d, 0.5)[:4], 0.5 * sigma[:4])


def test_ddim_timesteps_validation_and_full_grid() -> None:
    assert ddim_timesteps(20, 20).tolist() == list(range(19, -1, -1))
    assert ddim_timesteps(10, 3).tolist() == [6, 3, 0]
    with pytest.raises(ValueError, match="ddim_steps"):
        ddim_timesteps(10, 11)


def test_ddim_eta1_full_grid_sigma_is_ddpm_posterior_std() -> None:
    # With Kd = K and eta = 1, DDIM's sigma^2 is the DDPM posterior variance beta_tilde_t.
    c = ddpm_constants(cosine_beta_schedule(20))
    d = ddim_constants(c.alphas_cumprod, ddim_timesteps(20, 20))
    torch.testing.assert_close(d.sigma_unit[:-1] ** 2, c.posterior_variance.flip(0)[:-1], rtol=1e-4, atol=1e-7)


def test_sinusoidal_embedding_check_values() -> None:
    expected = torch.tensor(
        [-0.95892, 0.97379, 0.35213, 0.09639, 0.02589, 0.00695, 0.00186, 0.00050]
        + [0.28366, 0.22744, 0.93595, 0.99534, 0.99966, 0.99998, 1.0, 1.0]
    )
    emb = SinusoidalPosEmb(16)(torch.tensor([5, 0]))
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(emb[1], torch.cat([torch.zeros(8), torch.ones(8)]))  # t = 0: sin 0, cos 1


def test_sinusoidal_embedding_rejects_odd_dim() -> None:
    with pytest.raises(ValueError):
        SinusoidalPosEmb(7)


def test_get_activation() -> None:
    assert isinstance(get_activation("Mish"), torch.nn.Mish)
    assert isinstance(get_activation("relu"), torch.nn.ReLU)
    x = torch.linspace(-2, 2, 9)
    torch.testing.assert_close(get_activation("Softplus")(x), torch.nn.functional.softplus(x))
    with pytest.raises(ValueError, match="known: ReLU"):
        get_activation("Swishy")
