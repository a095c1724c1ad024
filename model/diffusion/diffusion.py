"""Diffusion policy: epsilon-prediction pretraining loss, DDPM/DDIM sampling with chains, chain log-probs.

Conventions (docs/algorithms.md#diffusion-policy):

* Loop index i = 0..N-1 with N = K (DDPM) or Kd (DDIM); DDPM step i denoises at timestep t = K-1-i, DDIM
  step i at tau_i. Step i maps the current sample to the next one; the last step produces the action chunk.
* With K' = ``ft_denoising_steps`` > 0 the module holds ``network`` (the frozen pre-trained denoiser) and
  ``actor_ft`` (its trainable copy). Loop steps i >= N - K' (DDPM: t < K') use ``actor_ft``, the others use
  ``network``; every step runs only the net it needs.
* The chain ``(B, K'+1, Ta, Da)`` holds the input of the first fine-tuned step followed by the outputs of all
  fine-tuned steps, so ``chain[:, k] -> chain[:, k+1]`` is fine-tuned step k and ``chain[:, -1]`` is the
  action. For DDPM this is ``[x_{K'}, ..., x_0]``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from model.base import ChainPolicy, Sample, check_chain_keys, freeze
from model.common.modules import denoise_fn, encode_cond
from model.diffusion.schedule import (
    DDIM_SIGMA_FLOOR,
    cosine_beta_schedule,
    ddim_constants,
    ddim_timesteps,
    ddpm_constants,
)

log = logging.getLogger(__name__)

DETERMINISTIC_DDPM_STD_FLOOR = 1e-3
"""Deterministic DDPM sampling keeps std max(std_t, 1e-3) at t > 0 (kept on purpose so evaluation numbers stay
comparable with DPPO's, docs/algorithms.md#k2-deterministic-ddpm-noise); only the final step (t = 0) is noise-free."""

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class _StepCoefs(NamedTuple):
    """Per-step coefficients; each entry broadcasts against the sample tensor it is applied to."""

    t: Tensor  # network timestep
    x0_x: Tensor  # x0_hat = x0_x * x - x0_eps * eps_hat
    x0_eps: Tensor
    mean_x0: Tensor  # DDPM: mu = mean_x0 * x0_hat + mean_x * x; DDIM: mean_x0 = sqrt(a_prev)
    mean_x: Tensor
    std: Tensor  # DDPM: posterior std (log-var clamped at 1e-20); DDIM: sigma_unit (eta = 1, no floor)
    eps_x: Tensor  # DDIM only: eps_hat = eps_x * x - eps_x0 * x0_hat (after clipping x0_hat)
    eps_x0: Tensor
    alpha_prev: Tensor  # DDIM only


@dataclass
class DiffusionKeys:
    """The keys of a diffusion policy's `model` block (`cfg/common/policy/diffusion_*.yaml`): its schema, with the
    defaults and checks in one place (registered in Hydra's ConfigStore as `schema/policy_diffusion`).

    Attributes:
        horizon_steps: Ta.
        obs_dim: Do (kept for configs and checks).
        action_dim: Da.
        denoising_steps: K, the DDPM schedule length.
        predict_epsilon: the network predicts the noise (else x0; DDIM requires epsilon prediction).
        denoised_clip_value: clamp x0_hat to +-this value (None: no clamp).
        randn_clip_value: clamp the per-step sampling noise z to +-this value (None: no clamp; 0 zeroes it).
        final_action_clip_value: clamp the final sample to +-this value (None: no clamp).
        eps_clip_value: DDIM only, clamp the (recomputed) eps_hat to +-this value.
        use_ddim: sample with DDIM (``ddim_steps`` required).
        ddim_steps: Kd, number of DDIM steps (1 <= Kd <= K).
        ft_denoising_steps: K', number of final denoising steps that fine-tuning trains (0: no fine-tuning
            copy; ``network`` itself is then the trainable denoiser).
        min_sampling_denoising_std: std floor of stochastic sampling (every step, frozen steps included).
        min_logprob_denoising_std: std floor of ``chain_log_prob``.
        learn_eta: train the eta module (DDIM only); otherwise its parameters are frozen.
    """

    horizon_steps: int
    obs_dim: int
    action_dim: int
    denoising_steps: int = 20
    predict_epsilon: bool = True
    denoised_clip_value: float | None = 1.0
    randn_clip_value: float | None = 10.0
    final_action_clip_value: float | None = None
    eps_clip_value: float | None = None
    use_ddim: bool = False
    ddim_steps: int | None = None
    ft_denoising_steps: int = 0
    min_sampling_denoising_std: float = 0.1
    min_logprob_denoising_std: float = 0.1
    learn_eta: bool = False

    def __post_init__(self) -> None:
        check_chain_keys(self)
        k, k_ft = self.denoising_steps, self.ft_denoising_steps
        if self.use_ddim:
            if self.ddim_steps is None:
                raise ValueError("use_ddim=True needs ddim_steps (the number of DDIM steps Kd)")
            if not 1 <= self.ddim_steps <= k:
                raise ValueError(f"ddim_steps={self.ddim_steps} must be in [1, denoising_steps={k}]")
            if k_ft > self.ddim_steps:
                raise ValueError(f"ft_denoising_steps={k_ft} must be <= ddim_steps={self.ddim_steps} under DDIM")
            if not self.predict_epsilon:
                raise ValueError("use_ddim=True requires predict_epsilon=True")
        if self.min_logprob_denoising_std == 0:
            log.warning("min_logprob_denoising_std=0: log-probs of the final denoising step are unbounded")
        if self.learn_eta and not self.use_ddim:
            raise ValueError("learn_eta=True requires use_ddim=True (eta only enters DDIM sampling)")


class DiffusionModel(ChainPolicy):
    """Diffusion policy over action chunks ``(B, Ta, Da)`` conditioned on an observation dict.

    The other keys are the fields of `DiffusionKeys`, its schema (positionally after ``network``, or by name; ``eta`` by
    name only).

    Args:
        network: denoiser ``f(x (B, Ta, Da), t (B,) long, cond) -> (B, Ta, Da)`` (DiffusionMLP, Unet1D, ...).
            If it has ``encode_cond(cond) -> cond`` (pixel denoisers), that runs once per ``sample`` /
            ``chain_log_prob`` call and its output is passed to every denoising step.
        eta: DDIM eta module (EtaFixed, EtaState, ...; ``cond -> (B, 1) | (B, Da)``) or a constant float.
            None means eta = 1 (DDIM then has DDPM's per-step noise, see tests). Ignored for DDPM.
    """

    # Non-persistent buffers registered by `_register_schedule` (DDPM constants, then the per-loop-step table).
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_logvar_clipped: Tensor
    posterior_std: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    step_t: Tensor
    step_x0_x: Tensor
    step_x0_eps: Tensor
    step_mean_x0: Tensor
    step_mean_x: Tensor
    step_std: Tensor
    step_eps_x: Tensor
    step_eps_x0: Tensor
    step_alpha_prev: Tensor
    step_det_std: Tensor

    Keys: ClassVar[type[DiffusionKeys]] = DiffusionKeys
    """The schema of the keys (after ``network`` and ``eta``) the constructor takes, positionally or by name."""

    def __init__(self, network: nn.Module, *args: Any, eta: nn.Module | float | None = None, **keys: Any) -> None:
        super().__init__()
        k = self.keys = self.Keys(*args, **keys)
        if k.learn_eta and (not isinstance(eta, nn.Module) or not any(True for _ in eta.parameters())):
            raise ValueError("learn_eta=True needs an eta module with parameters (e.g. EtaFixed)")
        if isinstance(eta, (int, float)) and not isinstance(eta, bool) and eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.horizon_steps = int(k.horizon_steps)
        self.obs_dim = int(k.obs_dim)
        self.action_dim = int(k.action_dim)
        self.denoising_steps = int(k.denoising_steps)
        self.predict_epsilon = k.predict_epsilon
        self.denoised_clip_value = k.denoised_clip_value
        self.randn_clip_value = k.randn_clip_value
        self.final_action_clip_value = k.final_action_clip_value
        self.eps_clip_value = k.eps_clip_value
        self.use_ddim = k.use_ddim
        self.ddim_steps = int(k.ddim_steps) if k.use_ddim and k.ddim_steps is not None else None
        self.ft_denoising_steps = int(k.ft_denoising_steps)
        self.min_sampling_denoising_std = float(k.min_sampling_denoising_std)
        self.min_logprob_denoising_std = float(k.min_logprob_denoising_std)
        self.learn_eta = k.learn_eta

        # Denoisers: `network` is the pre-trained one; with K' > 0 it is frozen and `actor_ft` is trained.
        self.hold_networks(network)

        # eta (DDIM noise scale): unused for DDPM, but accepted since DPPO's DDPM configs carry an eta block.
        self._eta_const: float | None = None
        if isinstance(eta, nn.Module):
            self.eta: nn.Module | None = eta
            if not self.learn_eta:
                freeze(eta)
        else:
            self.eta = None
            self._eta_const = 1.0 if eta is None else float(eta)

        self._register_schedule()

    # --------------------------------------------------------------------------------------------------------
    # construction helpers

    def _register_schedule(self) -> None:
        """Register the DDPM constants and the per-loop-step coefficient table as non-persistent buffers."""
        k = self.denoising_steps
        ddpm = ddpm_constants(cosine_beta_schedule(k))
        for name, value in ddpm._asdict().items():
            self.register_buffer(name, value, persistent=False)

        zeros_n = torch.zeros(self.n_steps)
        if self.use_ddim:
            assert self.ddim_steps is not None
            ddim = ddim_constants(ddpm.alphas_cumprod, ddim_timesteps(k, self.ddim_steps))
            a, a_prev = ddim.alpha, ddim.alpha_prev
            coefs = _StepCoefs(
                t=ddim.timesteps,
                x0_x=1.0 / a.sqrt(),
                x0_eps=(1.0 - a).sqrt() / a.sqrt(),
                mean_x0=a_prev.sqrt(),
                mean_x=zeros_n,
                std=ddim.sigma_unit,
                eps_x=1.0 / (1.0 - a).sqrt(),
                eps_x0=a.sqrt() / (1.0 - a).sqrt(),
                alpha_prev=a_prev,
            )
            # Deterministic DDIM is eta = 0: sigma = 0 and the eps coefficient is sqrt(1 - a_prev).
            det_std = zeros_n.clone()
            det_eps_mean = (1.0 - a_prev).sqrt()
        else:
            t = torch.arange(k - 1, -1, -1, dtype=torch.long)
            coefs = _StepCoefs(
                t=t,
                x0_x=ddpm.sqrt_recip_alphas_cumprod[t],
                x0_eps=ddpm.sqrt_recipm1_alphas_cumprod[t],
                mean_x0=ddpm.posterior_mean_coef1[t],
                mean_x=ddpm.posterior_mean_coef2[t],
                std=ddpm.posterior_std[t],
                eps_x=zeros_n,
                eps_x0=zeros_n,
                alpha_prev=ddpm.alphas_cumprod_prev[t],
            )
            det_std = torch.where(t == 0, 0.0, coefs.std.clamp(min=DETERMINISTIC_DDPM_STD_FLOOR))
            det_eps_mean = zeros_n
        for name, value in coefs._asdict().items():
            self.register_buffer(f"step_{name}", value.contiguous(), persistent=False)
        self.register_buffer("step_det_std", det_std, persistent=False)
        # Python-float copies for the sampling loop: every row shares one step, so scalars avoid tensor
        # indexing and broadcasting per step (computed once here, so no host syncs while sampling).
        self._floats = {name: value.tolist() for name, value in coefs._asdict().items() if name != "t"}
        self._det_eps_mean_floats: list[float] = det_eps_mean.tolist()

    # --------------------------------------------------------------------------------------------------------
    # public API

    @property
    def n_steps(self) -> int:
        """Number of denoising loop steps N (K for DDPM, Kd for DDIM)."""
        return self.ddim_steps if self.use_ddim and self.ddim_steps is not None else self.denoising_steps

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters fine-tuning updates: the trainable denoiser, plus the eta module if ``learn_eta``."""
        params = list(self.trainable_network.parameters())
        if self.learn_eta and self.eta is not None:
            params += list(self.eta.parameters())
        return params

    def eta_parameters(self) -> list[nn.Parameter]:
        """The learned eta module's parameters when ``learn_eta`` (DDIM), else none."""
        return list(self.eta.parameters()) if self.learn_eta and self.eta is not None else []

    def noised(self, actions: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward diffusion q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

        Args:
            actions: x_0, ``(B, Ta, Da)``.
            t: ``(B,)`` long timesteps in [0, K).
            noise: eps, ``(B, Ta, Da)``.
        """
        b = actions.shape[0]
        return (
            self.sqrt_alphas_cumprod[t].view(b, 1, 1) * actions
            + self.sqrt_one_minus_alphas_cumprod[t].view(b, 1, 1) * noise
        )

    def loss_per_sample(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """The behaviour-cloning loss of each sample, for reward- or advantage-weighted regression (RWR, AWR).

        A timestep t ~ U{0..K-1} and noise eps per sample; mean over (Ta, Da) of (eps_theta(x_t, t, s) - eps)^2 (or of
        the x_0 error without epsilon prediction). See docs/algorithms.md#denoising-loss.

        Args:
            actions: ``(B, Ta, Da)`` action chunks (x_0, normalised).
            cond: observation dict with batch size B.

        Returns:
            ``(B,)`` losses.
        """
        b = actions.shape[0]
        t = torch.randint(0, self.denoising_steps, (b,), device=actions.device)
        noise = torch.randn_like(actions)
        pred = self.trainable_network(self.noised(actions, t, noise), t, cond)
        return (pred - (noise if self.predict_epsilon else actions)).square().mean(dim=(1, 2))

    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Behaviour-cloning loss: MSE between the predicted and the true noise (or x0), the mean of
        ``loss_per_sample`` over the batch (docs/algorithms.md#denoising-loss).

        Trains ``trainable_network`` (``network`` when K' = 0, i.e. in pretraining).

        Args:
            actions: ``(B, Ta, Da)`` demonstrated action chunks (normalised).
            cond: observation dict, ``state`` ``(B, To, Do)``.

        Returns:
            Scalar loss (mean over all B * Ta * Da elements).
        """
        return self.loss_per_sample(actions, cond).mean()

    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Run the reverse process from x ~ N(0, I).

        Noise (docs/algorithms.md#sampling-noise): stochastic DDPM uses std = max(std_t, min_sampling_denoising_std) at
        every step; stochastic DDIM uses std = max(sigma_i(eta), min_sampling_denoising_std); deterministic DDPM uses 0
        at t = 0 and max(std_t, 1e-3) elsewhere (kept from DPPO, K2 there); deterministic DDIM uses eta = 0 and no
        noise. The per-step noise z is clamped to +-randn_clip_value. Not decorated with no_grad (DQL back-propagates
        through samples).

        Args:
            cond: observation dict, ``state`` ``(B, To, Do)``.
            deterministic: evaluation-mode noise (see above).
            return_chain: also return the chain ``(B, K'+1, Ta, Da)``.
            use_base_policy: run the frozen ``network`` at every step (e.g. for a BC regulariser).

        Returns:
            Sample(actions ``(B, Ta, Da)``, chain ``(B, K'+1, Ta, Da)`` or None).
        """
        state = cond["state"]
        b, device = state.shape[0], state.device
        n, n_ft = self.n_steps, self.ft_denoising_steps
        dtype = self.step_x0_x.dtype
        x = torch.randn(b, self.horizon_steps, self.action_dim, device=device, dtype=dtype)
        fl = self._floats
        ddim = self.use_ddim

        # All per-step noise, already scaled by its std, drawn in one go.
        eps_mean: Tensor | list[float] | None = None
        if ddim and not deterministic:
            eta = self._eta(cond).unsqueeze(0)  # (1, B, 1, De)
            sigma = (eta * self.step_std.view(n, 1, 1, 1)).clamp(min=DDIM_SIGMA_FLOOR)  # (N, B, 1, De)
            eps_mean = (1.0 - self.step_alpha_prev.view(n, 1, 1, 1) - sigma.square()).clamp(min=0.0).sqrt()
            std = sigma.clamp(min=self.min_sampling_denoising_std)
        elif ddim:
            eps_mean = self._det_eps_mean_floats
            std = None
        elif deterministic:
            std = self.step_det_std.view(n, 1, 1, 1)
        else:
            std = self.step_std.clamp(min=self.min_sampling_denoising_std).view(n, 1, 1, 1)
        noise: Tensor | None = None
        if std is not None:
            noise = torch.randn(n, b, self.horizon_steps, self.action_dim, device=device, dtype=dtype)
            if self.randn_clip_value is not None:
                noise = noise.clamp(-self.randn_clip_value, self.randn_clip_value)
            noise = noise * std

        chain: list[Tensor] = []
        if return_chain and n_ft == n:
            chain.append(x)
        clip = self.denoised_clip_value
        # Steps i >= first_ft run actor_ft, the others the frozen network: one network pass per step.
        first_ft = n if self.actor_ft is None or use_base_policy else n - n_ft
        base_fn = denoise_fn(self.network, cond, self.step_t) if first_ft > 0 else None
        ft_fn = denoise_fn(self.actor_ft, cond, self.step_t) if first_ft < n and self.actor_ft is not None else None
        for i in range(n):
            step_fn = ft_fn if i >= first_ft else base_fn
            assert step_fn is not None  # ft_fn exists when first_ft < n, base_fn when first_ft > 0
            out = step_fn(x, i)
            x0 = torch.add(x * fl["x0_x"][i], out, alpha=-fl["x0_eps"][i]) if self.predict_epsilon else out
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
            if ddim:
                assert eps_mean is not None
                eps = out
                if clip is not None:  # re-derive eps from the clipped x0 so the pair stays consistent
                    eps = torch.add(x * fl["eps_x"][i], x0, alpha=-fl["eps_x0"][i])
                if self.eps_clip_value is not None:
                    eps = eps.clamp(-self.eps_clip_value, self.eps_clip_value)
                x = x0 * fl["mean_x0"][i] + eps * eps_mean[i]
            else:
                x = torch.add(x0 * fl["mean_x0"][i], x, alpha=fl["mean_x"][i])
            if noise is not None:
                x = x + noise[i]
            if i == n - 1 and self.final_action_clip_value is not None:
                x = x.clamp(-self.final_action_clip_value, self.final_action_clip_value)
            if return_chain and i >= n - n_ft - 1:
                chain.append(x)
        return Sample(actions=x, chain=torch.stack(chain, dim=1) if return_chain else None)

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Element-wise log-density of fine-tuned transitions under ``trainable_network``.

        See docs/algorithms.md#chain-log-probabilities.

        ``log N(chain[:, k+1]; mu_k(chain[:, k]), max(std_k, min_logprob_denoising_std))``, where mu/std come
        from the stochastic reverse step k (DDIM: eta from the eta module). All K' transitions go through the
        network in a single batched call.

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, K'+1, Ta, Da)``.
            step: optional ``(B,)`` long; row b scores only transition ``step[b]`` in [0, K').

        Returns:
            ``(B, K', Ta, Da)`` when ``step`` is None, else ``(B, Ta, Da)``.
        """
        n_ft = self.ft_denoising_steps
        b = chain.shape[0]
        if chain.dim() != 4 or chain.shape[1] != n_ft + 1:
            raise ValueError(f"chain must be (B, K'+1={n_ft + 1}, Ta, Da), got {tuple(chain.shape)}")
        ft = self._ft_coefs()
        net = self.trainable_network
        if step is None:
            if n_ft == 0:
                return chain.new_zeros(b, 0, *chain.shape[2:])
            x_prev, x_next = chain[:, :-1], chain[:, 1:]  # (B, K', Ta, Da)
            # Encode before repeating over the K' transitions: an image encoder then runs on B rows, not B*K'.
            flat_cond = {
                key: v.unsqueeze(1).expand(b, n_ft, *v.shape[1:]).reshape(b * n_ft, *v.shape[1:])
                for key, v in encode_cond(net, cond).items()
            }
            out = net(x_prev.reshape(b * n_ft, *chain.shape[2:]), ft.t.repeat(b), flat_cond)
            out = out.view_as(x_prev)
            coefs = _StepCoefs(*(c.view(n_ft, 1, 1) for c in ft))  # broadcast over (B, K', Ta, Da)
            eta = self._eta(cond).unsqueeze(1) if self.use_ddim else None  # (B, 1, 1, De)
        else:
            if n_ft == 0:
                raise ValueError("chain_log_prob(step=...) needs ft_denoising_steps > 0 (there is nothing to score)")
            rows = torch.arange(b, device=chain.device)
            x_prev, x_next = chain[rows, step], chain[rows, step + 1]  # (B, Ta, Da)
            t = ft.t[step]
            out = net(x_prev, t, cond)
            coefs = _StepCoefs(t, *(c[step].view(b, 1, 1) for c in ft[1:]))
            eta = self._eta(cond) if self.use_ddim else None  # (B, 1, De)
        mean, std = self._mean_std(x_prev, out, coefs, eta)
        std = std.clamp(min=self.min_logprob_denoising_std)
        return -0.5 * ((x_next - mean) / std).square() - std.log() - _HALF_LOG_2PI

    def entropy(self, cond: dict[str, Tensor]) -> Tensor | None:
        """DPPO's stand-in for entropy under DDIM with a learned eta: mean eta per row ``(B,)``.

        Returns None otherwise (DPPO's value there is a constant with no gradient).
        """
        if not (self.use_ddim and self.learn_eta):
            return None
        return self._eta(cond).flatten(1).mean(dim=1)

    # --------------------------------------------------------------------------------------------------------
    # internals

    def _eta(self, cond: dict[str, Tensor]) -> Tensor:
        """eta as ``(B, 1, De)`` with De = 1 or Da."""
        state = cond["state"]
        if self.eta is not None:
            return self.eta(cond).unsqueeze(1)
        assert self._eta_const is not None
        return state.new_full((state.shape[0], 1, 1), self._eta_const)

    def _ft_coefs(self) -> _StepCoefs:
        """Coefficients of the K' fine-tuned loop steps, each ``(K',)``; row k is chain transition k."""
        start = self.n_steps - self.ft_denoising_steps
        return _StepCoefs(*(getattr(self, f"step_{name}")[start:] for name in _StepCoefs._fields))

    def _mean_std(self, x: Tensor, out: Tensor, c: _StepCoefs, eta: Tensor | None) -> tuple[Tensor, Tensor]:
        """Stochastic reverse-step mean and (unfloored) std; coefficient tensors broadcast against ``x``.

        Args:
            x: current sample ``(..., Ta, Da)``.
            out: network output for ``x``, same shape.
            c: step coefficients.
            eta: DDIM eta broadcastable to ``(..., 1, De)``; None for DDPM.

        Returns:
            mean like ``x``, std broadcastable to ``x``.
        """
        x0 = c.x0_x * x - c.x0_eps * out if self.predict_epsilon else out
        if self.denoised_clip_value is not None:
            x0 = x0.clamp(-self.denoised_clip_value, self.denoised_clip_value)
        if not self.use_ddim:
            return c.mean_x0 * x0 + c.mean_x * x, c.std
        assert eta is not None
        eps = out
        if self.denoised_clip_value is not None:
            eps = c.eps_x * x - c.eps_x0 * x0
        if self.eps_clip_value is not None:
            eps = eps.clamp(-self.eps_clip_value, self.eps_clip_value)
        sigma = (eta * c.std).clamp(min=DDIM_SIGMA_FLOOR)
        eps_coef = (1.0 - c.alpha_prev - sigma.square()).clamp(min=0.0).sqrt()
        return c.mean_x0 * x0 + eps_coef * eps, sigma
