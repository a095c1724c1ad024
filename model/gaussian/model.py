"""Diagonal-Gaussian action-chunk policy: a chain of length one for PPO.

See docs/algorithms.md#gaussian-and-gmm-policies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from model.base import Policy, Sample, check_chunk_shape

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def check_single_step(chain: Tensor, step: Tensor | None, horizon_steps: int, action_dim: int) -> None:
    """Validate a length-one chain ``(B, 2, Ta, Da)`` and, if given, that every ``step`` is 0."""
    if chain.dim() != 4 or chain.shape[1] != 2 or chain.shape[2:] != (horizon_steps, action_dim):
        raise ValueError(f"expected a chain of shape (B, 2, {horizon_steps}, {action_dim}), got {tuple(chain.shape)}")
    if step is not None and bool((step != 0).any()):
        raise ValueError("a single-transition policy only has step 0")


@dataclass
class GaussianKeys:
    """The keys of a Gaussian policy's `model` block (`cfg/common/policy/gaussian_*.yaml`): its schema, with the
    defaults and checks in one place (registered in Hydra's ConfigStore as `schema/policy_gaussian`).

    Attributes:
        horizon_steps: ``Ta``.
        action_dim: ``Da``.
        randn_clip_value: samples are clamped to ``mean +- randn_clip_value * scale``.
        ent_coef: weight of the mean per-dim entropy subtracted from the behaviour-cloning loss.
        squash: the action is ``tanh(u)`` of the Gaussian sample u (SAC-style learners, `sample_log_prob`); the
            deterministic action is ``tanh(mean)``. Not for PPO, whose chain log-probabilities score u itself.
    """

    horizon_steps: int
    action_dim: int
    randn_clip_value: float = 10.0
    ent_coef: float = 0.0
    squash: bool = False

    def __post_init__(self) -> None:
        check_chunk_shape(self.horizon_steps, self.action_dim)


class GaussianModel(Policy):
    """Policy ``a ~ N(mean(s), diag(scale(s)^2))`` over action chunks.

    The other keys are the fields of `GaussianKeys`, its schema (positionally after ``network``, or by name).

    Args:
        network: a module with ``forward(cond) -> (mean (B, Ta * Da), scale (B, Ta * Da))``, e.g. a
            :class:`~model.gaussian.mlp.GaussianMLP` or a
            :class:`~model.gaussian.transformer.GaussianTransformer`.
    """

    n_chain_steps: int = 1
    Keys: ClassVar[type[GaussianKeys]] = GaussianKeys
    """The schema of the keys (after ``network``) the constructor takes, positionally or by name."""

    def __init__(self, network: nn.Module, *args: Any, **keys: Any) -> None:
        super().__init__()
        k = self.keys = self.Keys(*args, **keys)
        self.squash = k.squash
        self.network = network
        self.horizon_steps = k.horizon_steps
        self.action_dim = k.action_dim
        self.randn_clip_value = k.randn_clip_value
        self.ent_coef = k.ent_coef

    def mean_scale(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Return the network's mean and std reshaped to ``(B, Ta, Da)`` each."""
        mean, scale = self.network(cond)
        shape = (mean.shape[0], self.horizon_steps, self.action_dim)
        return mean.reshape(shape), scale.reshape(shape)

    @staticmethod
    def _log_density(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
        """Element-wise ``log N(x | mean, scale^2)``."""
        return -0.5 * ((x - mean) / scale) ** 2 - scale.log() - _HALF_LOG_2PI

    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Behaviour-cloning loss: mean per-dim negative log-likelihood minus ``ent_coef`` times the entropy.

        Args:
            actions: ``(B, Ta, Da)`` demonstrated action chunks (normalised).
            cond: observation dict with ``state`` ``(B, To, Do)``.

        Returns:
            Scalar loss.
        """
        mean, scale = self.mean_scale(cond)
        nll = -self._log_density(actions, mean, scale).mean()
        if self.ent_coef == 0:
            return nll
        entropy = (0.5 + _HALF_LOG_2PI + scale.log()).mean()
        return nll - self.ent_coef * entropy

    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Sample action chunks (reparameterised, so gradients reach the network).

        Args:
            cond: observation dict with batch size B.
            deterministic: return the mean.
            return_chain: also return the chain ``(B, 2, Ta, Da)``: a zero dummy start and the action.
            use_base_policy: must be False: this family keeps no frozen base policy.

        Returns:
            :class:`~model.base.Sample` with ``actions`` ``(B, Ta, Da)``.
        """
        self._no_base_policy(use_base_policy)
        mean, scale = self.mean_scale(cond)
        if deterministic:
            actions = mean
        else:
            # Clamping the unit noise is the same as clamping the sample to mean +- clip * scale.
            z = torch.randn_like(mean).clamp(-self.randn_clip_value, self.randn_clip_value)
            actions = mean + scale * z
        if self.squash:
            actions = torch.tanh(actions)
        chain = None
        if return_chain:
            chain = torch.stack((torch.zeros_like(actions), actions), dim=1)
        return Sample(actions=actions, chain=chain)

    def sample_log_prob(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """A reparameterised sample and its log-density, for SAC-style learners.

        u = mean + scale * z (z clamped to +-randn_clip_value); with ``squash`` the action is tanh(u) and
        log pi(a|s) = sum_i [log N(u_i; mean_i, scale_i) - log(1 - tanh(u_i)^2 + 1e-6)] (docs/algorithms.md#sac).

        Returns:
            actions ``(B, Ta, Da)``, log-density ``(B,)`` summed over the chunk.
        """
        mean, scale = self.mean_scale(cond)
        u = mean + scale * torch.randn_like(mean).clamp(-self.randn_clip_value, self.randn_clip_value)
        return self.action_log_prob(u, mean, scale)

    def action_log_prob(self, u: Tensor, mean: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """The action of a pre-squash sample u and its log-density summed over the chunk: (tanh(u) or u, (B,))."""
        logp = self._log_density(u, mean, scale)
        if not self.squash:
            return u, logp.flatten(1).sum(dim=1)
        a = torch.tanh(u)
        return a, (logp - torch.log(1.0 - a.square() + 1e-6)).flatten(1).sum(dim=1)

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Element-wise log-density of the action ``chain[:, 1]`` under the current parameters.

        The density is the untruncated Normal even though samples are clamped (a negligible difference at the
        usual clip of 3 or more standard deviations).

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, 2, Ta, Da)``; ``chain[:, 0]`` is ignored.
            step: optional ``(B,)`` long tensor of zeros.

        Returns:
            ``(B, 1, Ta, Da)`` if ``step`` is None, else ``(B, Ta, Da)``.
        """
        check_single_step(chain, step, self.horizon_steps, self.action_dim)
        if self.squash:
            raise ValueError("a squashed Gaussian (squash=true) is for SAC-style learners; PPO needs squash=false")
        mean, scale = self.mean_scale(cond)
        logp = self._log_density(chain[:, 1], mean, scale)
        return logp if step is not None else logp.unsqueeze(1)

    def entropy(self, cond: dict[str, Tensor]) -> Tensor:
        """Mean per-dimension entropy ``0.5 + 0.5 log(2 pi) + log scale``, shape ``(B,)``."""
        _, scale = self.mean_scale(cond)
        return (0.5 + _HALF_LOG_2PI + scale.log()).flatten(1).mean(dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The network's parameters (including a learned state-independent log-variance)."""
        return [p for p in self.network.parameters() if p.requires_grad]
