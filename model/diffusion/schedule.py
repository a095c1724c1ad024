"""Noise schedules and the constants derived from them (docs/algorithms.md#noise-schedule, #ddim).

Timestep convention: index t in {0, ..., K-1}; the denoiser call at index t maps x_{t+1} -> x_t, x_K ~ N(0, I)
and x_0 is the action chunk.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

LOGVAR_CLAMP = 1e-20
"""Posterior variances are clamped at this value before the log (beta_tilde_0 = 0 -> std 1e-10)."""

DDIM_SIGMA_FLOOR = 1e-10
"""DDIM sigma floor of DPPO (keeps log(sigma^2) finite)."""


def cosine_beta_schedule(denoising_steps: int, s: float = 0.008) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal in the Diffuser variant, computed in float64, returned as float32.

    ``alpha_bar(i) = cos^2(((i / K) + s) / (1 + s) * pi / 2)`` normalised by ``alpha_bar(0)``, for i = 0..K
    (DPPO builds the grid as ``linspace(0, K + 1, K + 1) / (K + 1)``, which equals i / K);
    ``beta_t = clip(1 - alpha_bar(t + 1) / alpha_bar(t), 0, 0.999)``.

    Args:
        denoising_steps: K >= 1.
        s: small offset that keeps beta_0 away from zero.

    Returns:
        ``(K,)`` float32 betas.
    """
    if denoising_steps < 1:
        raise ValueError(f"denoising_steps must be >= 1, got {denoising_steps}")
    k = denoising_steps
    x = np.linspace(0, k + 1, k + 1, dtype=np.float64) / (k + 1)
    alphas_cumprod = np.cos((x + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return torch.from_numpy(np.clip(betas, 0, 0.999)).to(torch.float32)


class DDPMConstants(NamedTuple):
    """Per-timestep DDPM constants, all ``(K,)`` float32 tensors indexed by t (docs/algorithms.md#noise-schedule)."""

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor  # alpha_bar_{t-1}, with alpha_bar_{-1} = 1
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor  # sqrt(1 / alpha_bar_t), on x_t in x0-hat
    sqrt_recipm1_alphas_cumprod: Tensor  # sqrt(1 / alpha_bar_t - 1), on eps-hat in x0-hat
    posterior_variance: Tensor  # beta_tilde_t
    posterior_logvar_clipped: Tensor  # log(max(beta_tilde_t, 1e-20))
    posterior_std: Tensor  # exp(logvar_clipped / 2)
    posterior_mean_coef1: Tensor  # c1_t, on x0-hat
    posterior_mean_coef2: Tensor  # c2_t, on x_t


def ddpm_constants(betas: Tensor) -> DDPMConstants:
    """Derive the DDPM constants from float32 betas, in float32 like DPPO.

    Args:
        betas: ``(K,)`` float32.

    Returns:
        DDPMConstants with ``(K,)`` float32 tensors.
    """
    betas = betas.to(torch.float32)
    alphas = 1.0 - betas
    alphas_cumprod = torch.cumprod(alphas, dim=0)
    alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float32), alphas_cumprod[:-1]])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    logvar = torch.log(torch.clamp(posterior_variance, min=LOGVAR_CLAMP))
    return DDPMConstants(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=torch.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=torch.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_logvar_clipped=logvar,
        posterior_std=torch.exp(0.5 * logvar),
        posterior_mean_coef1=betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


class DDIMConstants(NamedTuple):
    """Per-DDIM-step constants, ``(Kd,)`` tensors indexed by the DDIM loop index i (largest timestep first).

    ``sigma_unit`` is sigma for eta = 1 (without the 1e-10 floor); sigma(eta) = max(eta * sigma_unit, 1e-10).
    """

    timesteps: Tensor  # (Kd,) long, tau_i
    alpha: Tensor  # a_i = alpha_bar_{tau_i}
    alpha_prev: Tensor  # a_prev_i = alpha_bar_{tau_{i+1}}, 1.0 for the final step
    sigma_unit: Tensor  # sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))


def ddim_timesteps(denoising_steps: int, ddim_steps: int) -> Tensor:
    """DDIM timesteps, "uniform"/leading discretisation: ``[(Kd-1) r, ..., r, 0]`` with r = K // Kd.

    Args:
        denoising_steps: K.
        ddim_steps: Kd, 1 <= Kd <= K.

    Returns:
        ``(Kd,)`` long tensor, descending (the first DDIM step uses the largest timestep).
    """
    if not 1 <= ddim_steps <= denoising_steps:
        raise ValueError(f"ddim_steps must be in [1, denoising_steps={denoising_steps}], got {ddim_steps}")
    ratio = denoising_steps // ddim_steps
    return torch.arange(ddim_steps - 1, -1, -1, dtype=torch.long) * ratio


def ddim_constants(alphas_cumprod: Tensor, timesteps: Tensor) -> DDIMConstants:
    """DDIM a, a_prev and the eta = 1 sigma for the given descending timesteps.

    Args:
        alphas_cumprod: ``(K,)`` float32 alpha_bar of the DDPM schedule.
        timesteps: ``(Kd,)`` long, descending (from ``ddim_timesteps``).

    Returns:
        DDIMConstants with ``(Kd,)`` tensors.
    """
    alpha = alphas_cumprod[timesteps]
    alpha_prev = torch.cat([alpha[1:], torch.ones(1, dtype=alpha.dtype)])
    sigma_unit = torch.sqrt((1.0 - alpha_prev) / (1.0 - alpha) * (1.0 - alpha / alpha_prev))
    return DDIMConstants(timesteps=timesteps.clone(), alpha=alpha, alpha_prev=alpha_prev, sigma_unit=sigma_unit)


def ddim_sigma(ddim: DDIMConstants, eta: float | Tensor) -> Tensor:
    """sigma_i(eta) = max(eta * sigma_unit_i, 1e-10) (docs/algorithms.md#ddim).

    Args:
        ddim: DDIM constants.
        eta: a float, or a tensor that broadcasts against ``(Kd,)``.
    """
    return torch.clamp(eta * ddim.sigma_unit, min=DDIM_SIGMA_FLOOR)
