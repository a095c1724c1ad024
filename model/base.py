"""Types shared by every policy family.

A policy samples action chunks and, for PPO, a chain of intermediate samples whose transitions it can
score under its current (trainable) parameters. Gaussian and GMM policies are chains of length one, so a
single PPO implementation serves all families.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor, nn


class Sample(NamedTuple):
    """Output of ``Policy.sample``.

    Attributes:
        actions: ``(B, Ta, Da)`` action chunk in normalised space; the env executes ``actions[:, :Te]``.
        chain: ``(B, K'+1, Ta, Da)`` intermediate samples when ``return_chain`` was set, else ``None``.
            ``chain[:, -1]`` equals ``actions``.
    """

    actions: Tensor
    chain: Tensor | None


@runtime_checkable
class Policy(Protocol):
    """What the pretraining and fine-tuning agents expect of a policy (all policies are ``nn.Module``s).

    Observations ``cond`` are dicts of tensors: ``cond["state"]`` is ``(B, To, Do)`` float32, optionally
    ``cond["rgb"]`` is ``(B, To_img, C, H, W)``.
    """

    n_chain_steps: int
    """Number of scored transitions K' per sample (K' for fine-tuned diffusion, 1 for Gaussian/GMM)."""

    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Scalar behaviour-cloning loss for demonstrated ``actions`` ``(B, Ta, Da)``."""
        ...

    def sample(self, cond: dict[str, Tensor], deterministic: bool = False, return_chain: bool = False) -> Sample:
        """Sample action chunks ``(B, Ta, Da)`` (and the chain ``(B, K'+1, Ta, Da)`` if ``return_chain``).

        Not decorated with ``no_grad``: callers that do not need gradients wrap it themselves.
        """
        ...

    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Element-wise log-density of the transitions ``chain[:, k] -> chain[:, k+1]``.

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, K'+1, Ta, Da)``.
            step: optional ``(B,)`` long tensor; row b scores only transition ``step[b]``.

        Returns:
            ``(B, K', Ta, Da)`` when ``step`` is None, else ``(B, Ta, Da)``.
        """
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that fine-tuning updates."""
        ...


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module`` and return it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


__all__ = ["Policy", "Sample", "freeze"]
