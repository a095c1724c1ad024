"""Rectified-flow policy: flow-matching pretraining, Euler sampling, and a noisy chain that PPO can score.

Conventions (docs/algorithms.md#flow-policies):

* Noise at t = 0, data at t = 1: x_t = t a + (1 - t) z with z ~ N(0, I); the network predicts the velocity
  v(x_t, t, s) whose target is a - z.
* Sampling integrates K = ``denoising_steps`` Euler steps on the grid t_i = i / K (i = 0..K-1), x <- x + v / K,
  each step's result clamped to +-``denoised_clip_value``. (ReinFlow samples at linspace(0, 1, K), a different grid
  from the one its log-probabilities use; here both use i / K.)
* With K' = ``ft_denoising_steps`` > 0 the module holds ``network`` (the frozen pretrained velocity) and
  ``actor_ft`` (its trainable copy), which runs the last K' steps. Each of those steps is a Gaussian transition:
  x_{i+1} = m_i + sigma_i xi with m_i the clamped Euler step, sigma_i from the ``noise`` module (at least
  ``min_sampling_denoising_std``) and xi ~ N(0, I) clamped to +-``randn_clip_value``. The chain
  ``(B, K'+1, Ta, Da)`` is the input of the first fine-tuned step followed by the outputs of all of them, so
  ``chain[:, k] -> chain[:, k+1]`` is fine-tuned step k, as for the diffusion policy, and the same PPO serves both.
* Deterministic sampling (evaluation) adds no noise: it is the pretrained ODE sampler with the fine-tuned velocity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from model.base import ChainPolicy, Sample, check_chain_keys
from model.common.modules import denoise_fn, encode_cond

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_HALF_LOG_2PIE = 0.5 * math.log(2.0 * math.pi * math.e)
TIME_SAMPLING = ("uniform", "beta")


@dataclass
class FlowKeys:
    """The keys of a rectified-flow policy's `model` block (`cfg/common/policy/reflow_mlp*.yaml`): its schema, with
    the defaults and checks in one place (registered in Hydra's ConfigStore as `schema/policy_flow`).

    Attributes:
        horizon_steps: Ta.
        obs_dim: Do (kept for configs and checks).
        action_dim: Da.
        denoising_steps: K, the Euler steps of sampling (the diffusion name, so that configs read alike).
        time_sampling: how pretraining draws t: ``uniform`` on [0, 1), or ``beta``: t = 0.999 (1 - u) with
            u ~ Beta(1.5, 1), which favours the noisy end.
        time_scale: the network sees t * time_scale (100 spreads the sinusoidal embedding as diffusion's step
            indices do).
        denoised_clip_value: clamp each Euler step's result to +-this value (None: no clamp).
        final_action_clip_value: clamp the final sample to +-this value (None: no clamp).
        randn_clip_value: clamp the fine-tuned steps' noise xi to +-this value (None: no clamp).
        ft_denoising_steps: K', the last Euler steps that fine-tuning trains and makes stochastic (0: none).
        min_sampling_denoising_std: std floor of stochastic sampling.
        min_logprob_denoising_std: std floor of ``chain_log_prob``.
    """

    horizon_steps: int
    obs_dim: int
    action_dim: int
    denoising_steps: int = 4
    time_sampling: str = "uniform"
    time_scale: float = 100.0
    denoised_clip_value: float | None = 1.0
    final_action_clip_value: float | None = 1.0
    randn_clip_value: float | None = 3.0
    ft_denoising_steps: int = 0
    min_sampling_denoising_std: float = 0.0
    min_logprob_denoising_std: float = 0.0

    def __post_init__(self) -> None:
        check_chain_keys(self)
        if self.time_sampling not in TIME_SAMPLING:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {self.time_sampling!r}")


class FlowModel(ChainPolicy):
    """Rectified-flow (1-ReFlow) policy over action chunks ``(B, Ta, Da)`` conditioned on an observation dict.

    The other keys are the fields of `FlowKeys`, its schema (positionally after ``network``, or by name; ``noise`` by
    name only).

    Args:
        network: velocity net ``f(x (B, Ta, Da), time (B,), cond) -> (B, Ta, Da)``; the diffusion denoisers serve
            (DiffusionMLP, Unet1D, the pixel variants), with ``time = t * time_scale``.
        noise: the std of the fine-tuned steps (``model.flow.noise.FlowNoise`` with K' steps); required when
            K' > 0.
    """

    Keys: ClassVar[type[FlowKeys]] = FlowKeys
    """The schema of the keys (after ``network`` and ``noise``) the constructor takes, positionally or by name."""

    def __init__(self, network: nn.Module, *args: Any, noise: nn.Module | None = None, **keys: Any) -> None:
        super().__init__()
        k = self.keys = self.Keys(*args, **keys)
        if k.ft_denoising_steps > 0 and noise is None:
            raise ValueError("ft_denoising_steps > 0 needs a noise module (model.noise: model.flow.noise.FlowNoise)")
        self.horizon_steps = int(k.horizon_steps)
        self.obs_dim = int(k.obs_dim)
        self.action_dim = int(k.action_dim)
        self.denoising_steps = int(k.denoising_steps)
        self.time_sampling = k.time_sampling
        self.time_scale = float(k.time_scale)
        self.denoised_clip_value = k.denoised_clip_value
        self.final_action_clip_value = k.final_action_clip_value
        self.randn_clip_value = k.randn_clip_value
        self.ft_denoising_steps = int(k.ft_denoising_steps)
        self.min_sampling_denoising_std = float(k.min_sampling_denoising_std)
        self.min_logprob_denoising_std = float(k.min_logprob_denoising_std)

        self.hold_networks(network)
        self.noise = noise if self.ft_denoising_steps > 0 else None

    # --------------------------------------------------------------------------------------------------------
    # the protocol

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The trainable velocity and the noise module (trained with the actor's optimiser)."""
        params = list(self.trainable_network.parameters())
        if self.noise is not None:
            params += list(self.noise.parameters())
        return params

    def step_times(self, device: torch.device) -> Tensor:
        """``(K,)`` network time input of Euler step i: (i / K) * time_scale."""
        k = self.denoising_steps
        return torch.arange(k, device=device, dtype=torch.float32) * (self.time_scale / k)

    def interpolate(self, actions: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = t a + (1 - t) z for rows of t ``(B,)``; actions and noise ``(B, Ta, Da)``."""
        t = t.view(-1, 1, 1)
        return t * actions + (1.0 - t) * noise

    def sample_time(self, b: int, device: torch.device) -> Tensor:
        """``(B,)`` pretraining times t in [0, 1) (``time_sampling``)."""
        if self.time_sampling == "beta":
            u = torch.distributions.Beta(1.5, 1.0).sample((b,)).to(device)
            return 0.999 * (1.0 - u)
        return torch.rand(b, device=device)

    def loss_per_sample(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Flow-matching loss of each sample: mean over (Ta, Da) of (v(x_t, t, s) - (a - z))^2, t from
        ``sample_time``. Returns ``(B,)``."""
        b = actions.shape[0]
        z = torch.randn_like(actions)
        t = self.sample_time(b, actions.device)
        pred = self.trainable_network(self.interpolate(actions, z, t), t * self.time_scale, cond)
        return (pred - (actions - z)).square().mean(dim=(1, 2))

    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Behaviour-cloning loss: the flow-matching MSE over all B * Ta * Da elements (scalar)."""
        return self.loss_per_sample(actions, cond).mean()

    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Integrate K Euler steps from x ~ N(0, I); the last K' are noisy unless ``deterministic``.

        Args:
            cond: observation dict, ``state`` ``(B, To, Do)``.
            deterministic: no noise at any step (the ODE sampler).
            return_chain: also return the chain ``(B, K'+1, Ta, Da)``.
            use_base_policy: run the frozen ``network`` at every step (still with the fine-tuned steps' noise).

        Returns:
            Sample(actions ``(B, Ta, Da)``, chain ``(B, K'+1, Ta, Da)`` or None).
        """
        state = cond["state"]
        b, device = state.shape[0], state.device
        k, k_ft = self.denoising_steps, self.ft_denoising_steps
        x = torch.randn(b, self.horizon_steps, self.action_dim, device=device)
        times = self.step_times(device)
        first_ft = k - k_ft
        base_fn = denoise_fn(self.network, cond, times) if first_ft > 0 or use_base_policy else None
        ft_fn = denoise_fn(self.actor_ft, cond, times) if k_ft > 0 and self.actor_ft is not None else None
        chain = [x] if return_chain and first_ft == 0 else []
        for i in range(k):
            fine_tuned = i >= first_ft
            step_fn = base_fn if (use_base_policy or not fine_tuned) else ft_fn
            assert step_fn is not None
            x = self._euler(x, step_fn(x, i))
            if fine_tuned and not deterministic:
                x = x + self._sampling_std(state, i - first_ft) * self._clipped_randn(x)
            if i == k - 1 and self.final_action_clip_value is not None:
                x = x.clamp(-self.final_action_clip_value, self.final_action_clip_value)
            if return_chain and i >= first_ft - 1:
                chain.append(x)
        return Sample(actions=x, chain=torch.stack(chain, dim=1) if return_chain else None)

    def integrate(self, cond: dict[str, Tensor], x: Tensor) -> Tensor:
        """The deterministic sampler from a given start: K Euler steps of the trainable velocity (``actor_ft`` on
        the last K' steps, ``network`` before) from x ``(B, Ta, Da)``, clamped as ``sample``. Differentiable (no
        ``no_grad`` here)."""
        k, first_ft = self.denoising_steps, self.denoising_steps - self.ft_denoising_steps
        times = self.step_times(x.device)
        base_fn = denoise_fn(self.network, cond, times) if first_ft > 0 else None
        ft_fn = denoise_fn(self.actor_ft, cond, times) if self.actor_ft is not None else None
        for i in range(k):
            step_fn = ft_fn if i >= first_ft else base_fn
            assert step_fn is not None
            x = self._euler(x, step_fn(x, i))
        if self.final_action_clip_value is not None:
            x = x.clamp(-self.final_action_clip_value, self.final_action_clip_value)
        return x

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Element-wise log-density of the fine-tuned transitions under ``actor_ft`` and the noise module.

        ``log N(chain[:, k+1]; m_k(chain[:, k]), max(sigma_k, min_logprob_denoising_std))`` with m_k the clamped
        Euler step of fine-tuned step k.

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, K'+1, Ta, Da)``.
            step: optional ``(B,)`` long; row b scores only transition ``step[b]`` in [0, K').

        Returns:
            ``(B, K', Ta, Da)`` when ``step`` is None, else ``(B, Ta, Da)``.
        """
        k_ft = self.ft_denoising_steps
        b = chain.shape[0]
        if chain.dim() != 4 or chain.shape[1] != k_ft + 1:
            raise ValueError(f"chain must be (B, K'+1={k_ft + 1}, Ta, Da), got {tuple(chain.shape)}")
        if k_ft == 0:
            if step is not None:
                raise ValueError("chain_log_prob(step=...) needs ft_denoising_steps > 0 (there is nothing to score)")
            return chain.new_zeros(b, 0, *chain.shape[2:])
        net = self.trainable_network
        times = self.step_times(chain.device)[self.denoising_steps - k_ft :]  # (K',)
        state = cond["state"]
        if step is None:
            steps = torch.arange(k_ft, device=chain.device).repeat(b)  # row-major over (B, K')
            rows = {key: v.repeat_interleave(k_ft, dim=0) for key, v in encode_cond(net, cond).items()}
            x_prev = chain[:, :-1].reshape(b * k_ft, *chain.shape[2:])
            x_next = chain[:, 1:].reshape(b * k_ft, *chain.shape[2:])
            state_rows = state.repeat_interleave(k_ft, dim=0)
        else:
            steps = step
            rows = cond
            idx = torch.arange(b, device=chain.device)
            x_prev, x_next = chain[idx, step], chain[idx, step + 1]
            state_rows = state
        mean = self._euler(x_prev, net(x_prev, times[steps], rows))
        std = self._std(state_rows, steps).clamp(min=self.min_logprob_denoising_std)
        lp = -0.5 * ((x_next - mean) / std).square() - std.log() - _HALF_LOG_2PI
        return lp.view(b, k_ft, *chain.shape[2:]) if step is None else lp

    def entropy(self, cond: dict[str, Tensor]) -> Tensor | None:
        """Mean Gaussian entropy per element of the fine-tuned steps' noise, ``(B,)`` (None when K' = 0): the
        noise module's gradient toward exploration under PPO's entropy bonus."""
        if self.noise is None:
            return None
        state = cond["state"]
        b, k_ft = state.shape[0], self.ft_denoising_steps
        steps = torch.arange(k_ft, device=state.device).repeat(b)
        std = self._std(state.repeat_interleave(k_ft, dim=0), steps)  # (B K', 1, Da)
        return (_HALF_LOG_2PIE + std.log()).view(b, -1).mean(dim=1)

    # --------------------------------------------------------------------------------------------------------
    # internals

    def _euler(self, x: Tensor, velocity: Tensor) -> Tensor:
        """One Euler step x + v / K, clamped to +-denoised_clip_value."""
        x = x + velocity / self.denoising_steps
        clip = self.denoised_clip_value
        return x if clip is None else x.clamp(-clip, clip)

    def _std(self, state: Tensor, steps: Tensor) -> Tensor:
        """The noise module's std ``(B, 1, Da)`` for fine-tuned steps ``steps`` ``(B,)``."""
        assert self.noise is not None  # K' > 0
        return self.noise(state, steps)

    def _sampling_std(self, state: Tensor, k: int) -> Tensor:
        steps = torch.full((state.shape[0],), k, dtype=torch.long, device=state.device)
        return self._std(state, steps).clamp(min=self.min_sampling_denoising_std)

    def _clipped_randn(self, like: Tensor) -> Tensor:
        xi = torch.randn_like(like)
        clip = self.randn_clip_value
        return xi if clip is None else xi.clamp(-clip, clip)


__all__ = ["FlowModel", "TIME_SAMPLING"]
