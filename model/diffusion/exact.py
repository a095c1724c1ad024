"""A diffusion policy with an exact likelihood: the probability-flow ODE of its VP SDE (docs/algorithms.md#exact-ppo).

The policy samples an action by integrating the probability-flow ODE from x(1) ~ N(0, I) down to t = eps with
Euler steps, and scores an action by the instantaneous change of variables along the same ODE from t = eps up to 1:

    log p(a | s) = log N(x(1); 0, I) + int_eps^1 div f(x(t), t) dt,   x(eps) = a,

with the divergence estimated by Hutchinson's v^T (df/dx) v for a Rademacher probe v. The drift of the VP SDE is
f(x, t) = -1/2 beta(t) (x + score), score = -eps_theta(x, k, s) / sqrt(1 - abar_k), k = min(floor(t K), K - 1), and
beta(t) = -K log(1 - beta_k) on [k/K, (k+1)/K), so that the signal level exp(-1/2 int_0^t beta) equals the discrete
sqrt(abar_k) at every grid point t = (k+1)/K (DPPO used beta_k itself, which traverses only about 1/K of the noise:
docs/algorithms.md#d30-exact-likelihood). The fine-tuned copy `actor_ft` is the network of the last K' noise
levels (k < K'), for the drift and its divergence alike.

For PPO this is a chain of length one: ``chain[:, 0]`` is the Rademacher probe drawn with the sample and
``chain[:, 1]`` the action, so the old and the new log-probabilities use the same probe (a ratio of exactly 1 before
any update); the log-density per action element is ``log p / (Ta Da)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.base import Sample
from model.diffusion.diffusion import DiffusionKeys, DiffusionModel

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def hutchinson_divergence(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """f(x) and the estimate v^T (df/dx) v of its divergence per row: differentiable (create_graph) when gradients
    are on, plain values under no_grad.

    Args:
        f: a map (B, ...) -> (B, ...) acting row-wise.
        x: (B, ...) the point; v: a probe of the same shape (Rademacher: the estimate is unbiased).

    Returns:
        f(x) (B, ...), divergence estimate (B,).
    """
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        if not (outer and x.requires_grad):
            x = x.detach().requires_grad_(True)
        fx = f(x)
        (vjp,) = torch.autograd.grad((fx * v).sum(), x, create_graph=outer)
    div = (vjp * v).flatten(1).sum(dim=1)
    return (fx, div) if outer else (fx.detach(), div.detach())


def ode_log_likelihood(
    drift: Callable[[Tensor, float], Tensor], x: Tensor, v: Tensor, t0: float, t1: float, step: float
) -> Tensor:
    """log N(x(t1); 0, I) + int_t0^t1 div f dt along Euler steps of dx/dt = f(x, t) from x(t0) = x. Returns (B,)."""
    n = max(1, math.ceil((t1 - t0) / step - 1e-9))
    h = (t1 - t0) / n
    x = x.detach()  # the data point; gradients flow through the drift's parameters
    delta = x.new_zeros(x.shape[0])
    for i in range(n):
        t = t0 + i * h

        def at_t(y: Tensor, t: float = t) -> Tensor:
            return drift(y, t)

        fx, div = hutchinson_divergence(at_t, x, v)
        x = x + h * fx
        delta = delta + h * div
    d = x[0].numel()
    return -0.5 * x.flatten(1).square().sum(dim=1) - d * _HALF_LOG_2PI + delta


@dataclass
class ExactDiffusionKeys(DiffusionKeys):
    """DiffusionKeys (DDPM only) plus the probability-flow ODE's grid (`schema/policy_exact_diffusion` holds these
    two keys, which `cfg/common/finetune_ppo_exact.yaml` adds to a diffusion policy's block).

    Attributes:
        ode_step: the Euler step on t in [ode_eps, 1] (0.05: 20 steps).
        ode_eps: the ODE's end near the data (t = 0 is singular).
    """

    ode_step: float = 0.05
    ode_eps: float = 1e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_ddim:
            raise ValueError("ExactDiffusion integrates the VP SDE's ODE: use_ddim must be false")
        if not self.predict_epsilon:
            raise ValueError("ExactDiffusion's score comes from the noise prediction: predict_epsilon must be true")
        if not 0 < self.ode_step <= 1 or not 0 < self.ode_eps < 1:
            raise ValueError(f"ode_step must be in (0, 1] and ode_eps in (0, 1), got {self.ode_step}, {self.ode_eps}")


class ExactDiffusion(DiffusionModel):
    """DiffusionModel sampled and scored through its probability-flow ODE (module docstring); its keys are
    `ExactDiffusionKeys` (DiffusionModel's, DDPM only, plus ode_step and ode_eps)."""

    Keys = ExactDiffusionKeys

    def __init__(self, network: nn.Module, *args: Any, **keys: Any) -> None:
        super().__init__(network, *args, **keys)
        assert isinstance(self.keys, ExactDiffusionKeys)
        self.ode_step = float(self.keys.ode_step)
        self.ode_eps = float(self.keys.ode_eps)

    @property
    def n_chain_steps(self) -> int:
        """One scored transition: the whole ODE map from the noise to the action."""
        return 1

    def vp_beta(self, k: int) -> float:
        """beta(t) of the continuous VP SDE at noise level k: -K log(1 - beta_k) (the discrete schedule's signal
        level on unit time)."""
        return -self.denoising_steps * math.log1p(-float(self.betas[k]))

    def drift(self, x: Tensor, t: float, cond: dict[str, Tensor], use_base_policy: bool = False) -> Tensor:
        """Probability-flow drift f(x, t) = -1/2 beta(t) (x - eps_theta / sqrt(1 - abar_k)), x (B, Ta, Da)."""
        k = min(int(t * self.denoising_steps), self.denoising_steps - 1)
        net: nn.Module = (
            self.network if use_base_policy or self.actor_ft is None or k >= self.ft_denoising_steps else self.actor_ft
        )
        eps = net(x, torch.full((x.shape[0],), k, dtype=torch.long, device=x.device), cond)
        score = -eps / math.sqrt(1.0 - float(self.alphas_cumprod[k]))
        return -0.5 * self.vp_beta(k) * (x + score)

    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Euler steps of the ODE from x(1) ~ N(0, I) (deterministic: x(1) = 0) down to t = ode_eps.

        Returns:
            Sample(actions (B, Ta, Da), chain (B, 2, Ta, Da) = [Rademacher probe, action] or None).
        """
        state = cond["state"]
        shape = (state.shape[0], self.horizon_steps, self.action_dim)
        x = state.new_zeros(shape) if deterministic else torch.randn(shape, device=state.device)
        n = max(1, math.ceil((1.0 - self.ode_eps) / self.ode_step - 1e-9))
        h = (1.0 - self.ode_eps) / n
        for i in range(n):
            t = 1.0 - i * h
            x = x - h * self.drift(x, t, cond, use_base_policy)
        if self.final_action_clip_value is not None:
            x = x.clamp(-self.final_action_clip_value, self.final_action_clip_value)
        chain = None
        if return_chain:
            probe = torch.randint(0, 2, shape, device=state.device).to(x.dtype) * 2 - 1
            chain = torch.stack((probe, x), dim=1)
        return Sample(actions=x, chain=chain)

    def log_prob(self, cond: dict[str, Tensor], actions: Tensor, probe: Tensor) -> Tensor:
        """log p(a | s) (B,) through the ODE from t = ode_eps to 1 with the Hutchinson `probe` (B, Ta, Da)."""
        return ode_log_likelihood(lambda x, t: self.drift(x, t, cond), actions, probe, self.ode_eps, 1.0, self.ode_step)

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """log p(a | s) / (Ta Da) for every element of the action, with the probe stored in the chain.

        Args:
            chain: ``(B, 2, Ta, Da)`` = [probe, action]; step: optional ``(B,)`` of zeros.

        Returns:
            ``(B, 1, Ta, Da)``, or ``(B, Ta, Da)`` with ``step``.
        """
        if chain.dim() != 4 or chain.shape[1] != 2:
            raise ValueError(f"chain must be (B, 2, Ta, Da) = [probe, action], got {tuple(chain.shape)}")
        if step is not None and bool((step != 0).any()):
            raise ValueError("the exact-likelihood policy has a single transition (step 0)")
        b, d = chain.shape[0], chain[0, 1].numel()
        per_element = (self.log_prob(cond, chain[:, 1], chain[:, 0]) / d).view(b, 1, 1).expand(b, *chain.shape[2:])
        return per_element if step is not None else per_element.unsqueeze(1)

    def entropy(self, cond: dict[str, Tensor]) -> Tensor | None:
        return None


__all__ = ["ExactDiffusion", "hutchinson_divergence", "ode_log_likelihood"]
