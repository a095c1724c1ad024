"""Gaussian-mixture action-chunk policy: a chain of length one for PPO.

See docs/algorithms.md#gaussian-and-gmm-policies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from model.base import Policy, Sample, check_chunk_shape
from model.gaussian.model import check_single_step

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class GMMKeys:
    """The keys of a Gaussian-mixture policy's `model` block (`cfg/common/policy/gmm_*.yaml`): its schema, with
    the defaults and checks in one place (registered in Hydra's ConfigStore as `schema/policy_gmm`).

    Attributes:
        horizon_steps: ``Ta``.
        action_dim: ``Da``.
        ent_coef: weight of the mean per-dim (mixture-weighted component) entropy subtracted from the BC loss.
    """

    horizon_steps: int
    action_dim: int
    ent_coef: float = 0.0

    def __post_init__(self) -> None:
        check_chunk_shape(self.horizon_steps, self.action_dim)


class GMMModel(Policy):
    """Policy ``p(a | s) = sum_m w_m(s) N(a | mu_m(s), diag(sigma_m(s)^2))`` over flattened action chunks.

    This is ``MixtureSameFamily(Categorical(logits), Independent(Normal(means, scales), 1))`` with the event
    being the whole chunk ``Ta * Da``, written out with ``logsumexp`` so sampling and scoring share one code
    path.

    The other keys are the fields of `GMMKeys`, its schema (positionally after ``network``, or by name).

    Args:
        network: a module with ``forward(cond) -> (means (B, M, Ta * Da), scales (B, M, Ta * Da),
            logits (B, M))``, e.g. a :class:`~model.gmm.mlp.GMMMLP` or a
            :class:`~model.gmm.transformer.GMMTransformer`.
    """

    n_chain_steps: int = 1
    Keys: ClassVar[type[GMMKeys]] = GMMKeys
    """The schema of the keys (after ``network``) the constructor takes, positionally or by name."""

    def __init__(self, network: nn.Module, *args: Any, **keys: Any) -> None:
        super().__init__()
        k = self.keys = self.Keys(*args, **keys)
        self.network = network
        self.horizon_steps = k.horizon_steps
        self.action_dim = k.action_dim
        self.ent_coef = k.ent_coef

    def log_prob(self, cond: dict[str, Tensor], actions: Tensor) -> Tensor:
        """Joint mixture log-density of whole chunks.

        Args:
            cond: observation dict with batch size B.
            actions: ``(B, Ta, Da)``.

        Returns:
            ``(B,)`` ``log p(a)`` summed over all ``Ta * Da`` dimensions.
        """
        means, scales, logits = self.network(cond)
        return self._mixture_log_prob(actions.flatten(1), means, scales, logits)

    @staticmethod
    def _mixture_log_prob(x: Tensor, means: Tensor, scales: Tensor, logits: Tensor) -> Tensor:
        """``x (B, N)``, ``means / scales (B, M, N)``, ``logits (B, M)`` -> ``(B,)``."""
        z = (x.unsqueeze(1) - means) / scales
        comp = (-0.5 * z**2 - scales.log() - _HALF_LOG_2PI).sum(dim=-1)  # (B, M)
        return torch.logsumexp(torch.log_softmax(logits, dim=-1) + comp, dim=-1)

    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Behaviour-cloning loss: the batch mean of the joint ``-log p(a)`` (minus ``ent_coef`` x entropy).

        Args:
            actions: ``(B, Ta, Da)`` demonstrated action chunks.
            cond: observation dict with ``state`` ``(B, To, Do)``.

        Returns:
            Scalar loss.
        """
        means, scales, logits = self.network(cond)
        nll = -self._mixture_log_prob(actions.flatten(1), means, scales, logits).mean()
        if self.ent_coef == 0:
            return nll
        return nll - self.ent_coef * self._entropy(scales, logits).mean()

    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Sample a mode, then a chunk from it (reparameterised given the mode).

        Args:
            cond: observation dict with batch size B.
            deterministic: return the mean of the most likely mode. DPPO still samples the mode here
                (docs/algorithms.md#d15-deterministic-gmm); taking the arg-max is a deliberate fix so evaluation is
                repeatable.
            return_chain: also return the chain ``(B, 2, Ta, Da)``: a zero dummy start and the action.
            use_base_policy: must be False: this family keeps no frozen base policy.

        Returns:
            :class:`~model.base.Sample` with ``actions`` ``(B, Ta, Da)``.
        """
        self._no_base_policy(use_base_policy)
        means, scales, logits = self.network(cond)
        if deterministic:
            mode = logits.argmax(dim=-1)
        else:
            mode = torch.distributions.Categorical(logits=logits).sample()
        index = mode.view(-1, 1, 1).expand(-1, 1, means.shape[-1])
        mean = means.gather(1, index).squeeze(1)  # (B, Ta * Da)
        if deterministic:
            flat = mean
        else:
            flat = mean + scales.gather(1, index).squeeze(1) * torch.randn_like(mean)
        actions = flat.reshape(-1, self.horizon_steps, self.action_dim)
        chain = torch.stack((torch.zeros_like(actions), actions), dim=1) if return_chain else None
        return Sample(actions=actions, chain=chain)

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Per-element share of the joint mixture log-density of ``chain[:, 1]``.

        The joint density is divided by ``Ta * Da`` and broadcast over the chunk, so that summing over the
        chunk recovers it and averaging gives the per-dim value that PPO compares with its clamp. DPPO
        clamps the joint value directly and saturates the clamp; this scaling is a deliberate fix
        (docs/algorithms.md#d8-gmm-log-probabilities).

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, 2, Ta, Da)``; ``chain[:, 0]`` is ignored.
            step: optional ``(B,)`` long tensor of zeros.

        Returns:
            ``(B, 1, Ta, Da)`` if ``step`` is None, else ``(B, Ta, Da)``.
        """
        check_single_step(chain, step, self.horizon_steps, self.action_dim)
        per_dim = self.log_prob(cond, chain[:, 1]) / (self.horizon_steps * self.action_dim)
        out = per_dim.view(-1, 1, 1).expand(-1, self.horizon_steps, self.action_dim)
        return out if step is not None else out.unsqueeze(1)

    @staticmethod
    def _entropy(scales: Tensor, logits: Tensor) -> Tensor:
        """Mixture-weighted per-dim component entropy ``sum_m w_m mean_d H(sigma_md)``, shape ``(B,)``."""
        comp = (0.5 + _HALF_LOG_2PI + scales.log()).mean(dim=-1)  # (B, M)
        return (torch.softmax(logits, dim=-1) * comp).sum(dim=-1)

    def entropy(self, cond: dict[str, Tensor]) -> Tensor:
        """Mixture-weighted mean per-dim component entropy (not the mixture's own entropy), shape ``(B,)``."""
        _, scales, logits = self.network(cond)
        return self._entropy(scales, logits)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The network's parameters (including a learned state-independent log-variance)."""
        return [p for p in self.network.parameters() if p.requires_grad]
