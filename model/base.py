"""Types shared by every policy family.

A policy (`Policy`) samples action chunks and, for PPO, a chain of intermediate samples whose transitions it can
score under its current (trainable) parameters. Gaussian and GMM policies are chains of length one, so a
single PPO implementation serves all families.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

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


class Policy(nn.Module, ABC):
    """Base of every policy family (diffusion, flow, Gaussian, GMM): what pretraining and fine-tuning use of a policy.

    Observations ``cond`` are dicts of tensors: ``cond["state"]`` is ``(B, To, Do)`` float32, optionally
    ``cond["rgb"]`` is ``(B, To_img, C, H, W)``. The optional capabilities are explicit members with defaults that
    mean "absent", so the algorithms never probe a policy by reflection:

    * ``ft_denoising_steps``: K', the denoising steps fine-tuning trains (diffusion); 0 for the other families.
    * ``has_base_policy``: ``sample(use_base_policy=True)`` runs the frozen pretrained policy (diffusion and flow
      keep it as ``network``, see `ChainPolicy`); without it, PPO's behaviour-cloning term keeps a frozen copy of
      its own.
    * ``eta_parameters()``: the parameters of a learned DDIM noise scale (empty unless one is learned).
    * ``entropy(cond)``: an entropy bonus term, or None where the family has none.
    """

    ft_denoising_steps: int = 0
    has_base_policy: ClassVar[bool] = False
    Keys: ClassVar[type]
    """The dataclass of the family's config keys (its schema, `agent.schemas.policy_schemas`); the constructor takes
    ``network``, then these keys positionally or by name."""

    @property
    @abstractmethod
    def n_chain_steps(self) -> int:
        """Number of scored transitions K' per sample (K' for fine-tuned diffusion, 1 for Gaussian/GMM)."""

    @abstractmethod
    def loss(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Scalar behaviour-cloning loss for demonstrated ``actions`` ``(B, Ta, Da)``."""

    @abstractmethod
    def sample(
        self,
        cond: dict[str, Tensor],
        deterministic: bool = False,
        return_chain: bool = False,
        use_base_policy: bool = False,
    ) -> Sample:
        """Sample action chunks ``(B, Ta, Da)`` (and the chain ``(B, K'+1, Ta, Da)`` if ``return_chain``).

        ``use_base_policy`` samples from the frozen pretrained policy; only where ``has_base_policy``.
        Not decorated with ``no_grad``: callers that do not need gradients wrap it themselves.
        """

    @abstractmethod
    def chain_log_prob(self, cond: dict[str, Tensor], chain: Tensor, step: Tensor | None = None) -> Tensor:
        """Element-wise log-density of the transitions ``chain[:, k] -> chain[:, k+1]``.

        Args:
            cond: observation dict with batch size B.
            chain: ``(B, K'+1, Ta, Da)``.
            step: optional ``(B,)`` long tensor; row b scores only transition ``step[b]``.

        Returns:
            ``(B, K', Ta, Da)`` when ``step`` is None, else ``(B, Ta, Da)``.
        """

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that fine-tuning updates."""

    def eta_parameters(self) -> list[nn.Parameter]:
        """Parameters of a learned DDIM noise scale (eta), a subset of ``trainable_parameters``; empty here."""
        return []

    def entropy(self, cond: dict[str, Tensor]) -> Tensor | None:
        """An entropy term for PPO's bonus, or None (the default: the family has none)."""
        return None

    def load_base_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load pretrained weights (a pretraining checkpoint's EMA state dict). Families with a frozen base network
        (``has_base_policy``) override this to load it and re-copy it into their trainable copy."""
        self.load_state_dict(state_dict, strict=strict)

    def _no_base_policy(self, use_base_policy: bool) -> None:
        """Refuse ``use_base_policy`` in a family without a frozen base policy."""
        if use_base_policy:
            raise ValueError(f"{type(self).__name__} keeps no frozen base policy (use_base_policy=True)")


class ChainPolicy(Policy):
    """A policy sampled through a chain of network steps (diffusion, flow): the pretrained ``network`` and, when
    fine-tuning trains its last K' = ``ft_denoising_steps`` steps, ``actor_ft``, a trainable copy that runs them
    while ``network`` stays frozen (the base policy of ``sample(use_base_policy=True)``)."""

    has_base_policy = True
    actor_ft: nn.Module | None

    def hold_networks(self, network: nn.Module) -> None:
        """Keep ``network`` and, with K' > 0, freeze it and make ``actor_ft`` its trainable copy (else None)."""
        self.network = network
        if self.ft_denoising_steps > 0:
            self.actor_ft = copy.deepcopy(network)
            freeze(self.network)
        else:
            self.actor_ft = None

    @property
    def n_chain_steps(self) -> int:
        """K', the number of scored transitions per chain."""
        return self.ft_denoising_steps

    @property
    def trainable_network(self) -> nn.Module:
        """The network fine-tuning trains: ``actor_ft`` when K' > 0, else ``network``."""
        return self.actor_ft if self.actor_ft is not None else self.network

    def load_base_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> None:
        """Load pretrained weights into the frozen base ``network`` and re-copy them into ``actor_ft`` (if any); other
        modules (eta, the flow's noise) keep their values.

        Args:
            state_dict: a whole policy's state dict (keys ``network.*``; other keys are ignored) or the network's own.
            strict: passed to ``network.load_state_dict``.
        """
        prefix = "network."
        if any(key.startswith(prefix) for key in state_dict):
            sd = {key[len(prefix) :]: v for key, v in state_dict.items() if key.startswith(prefix)}
        else:
            sd = dict(state_dict)
        self.network.load_state_dict(sd, strict=strict)
        if self.actor_ft is not None:
            self.actor_ft.load_state_dict(self.network.state_dict())


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module`` and return it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def check_chunk_shape(horizon_steps: int, action_dim: int) -> None:
    """The one-line error for an impossible action-chunk shape ``(Ta, Da)``."""
    if horizon_steps < 1 or action_dim < 1:
        raise ValueError(f"horizon_steps and action_dim must be >= 1, got {horizon_steps}, {action_dim}")


def check_chain_keys(keys: Any) -> None:
    """The checks every chain policy's keys share (DiffusionKeys, FlowKeys): the chunk shape, K = ``denoising_steps``
    >= 1, 0 <= K' = ``ft_denoising_steps`` <= K, and a noise clip and std floors that are not negative."""
    check_chunk_shape(keys.horizon_steps, keys.action_dim)
    k, k_ft = keys.denoising_steps, keys.ft_denoising_steps
    if k < 1:
        raise ValueError(f"denoising_steps must be >= 1, got {k}")
    if not 0 <= k_ft <= k:
        raise ValueError(f"ft_denoising_steps={k_ft} must be in [0, denoising_steps={k}]")
    if keys.randn_clip_value is not None and keys.randn_clip_value < 0:
        raise ValueError(f"randn_clip_value must be >= 0 or None, got {keys.randn_clip_value}")
    if keys.min_sampling_denoising_std < 0 or keys.min_logprob_denoising_std < 0:
        raise ValueError(
            "min_sampling_denoising_std and min_logprob_denoising_std must be >= 0, got "
            f"{keys.min_sampling_denoising_std}, {keys.min_logprob_denoising_std}"
        )


__all__ = ["ChainPolicy", "Policy", "Sample", "check_chain_keys", "check_chunk_shape", "freeze"]
