"""DDIM eta modules (docs/algorithms.md#eta-modules): eta in [min_eta, max_eta] scales the DDIM noise sigma_i(eta).

Every module maps the observation dict to ``(B, 1)`` (one eta per sample) or ``(B, Da)`` (one per action dim).
The constructors accept the keys DPPO configs pass to every eta class (``input_dim``, ``mlp_dims``,
``action_dim``) so one config block can switch ``_target_`` between them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.mlp import MLP

# Keep atanh finite: a base eta on a bound would otherwise give an infinite logit
# (docs/algorithms.md#d10-differentiable-eta).
_ATANH_LIMIT = 1.0 - 1e-6


def _check_range(base_eta: float, min_eta: float, max_eta: float) -> None:
    if not min_eta < max_eta:
        raise ValueError(f"eta needs min_eta < max_eta, got min_eta={min_eta}, max_eta={max_eta}")
    if not min_eta <= base_eta <= max_eta:
        raise ValueError(f"base_eta={base_eta} must lie in [min_eta={min_eta}, max_eta={max_eta}]")


def _eta_logit(base_eta: float, min_eta: float, max_eta: float) -> float:
    """Logit l with ``min + (max - min) (tanh(l) + 1) / 2 = base`` (clamped to stay finite)."""
    u = 2.0 * (base_eta - min_eta) / (max_eta - min_eta) - 1.0
    return math.atanh(min(max(u, -_ATANH_LIMIT), _ATANH_LIMIT))


class EtaFixed(nn.Module):
    """One scalar eta = ``min + (max - min) (tanh(l) + 1) / 2`` shared by all samples.

    Deliberately differs from DPPO (docs/algorithms.md#d10-differentiable-eta): the output is differentiable in the
    logit (DPPO used ``.item()``), and
    ``base_eta == max_eta`` (the configs' choice) gives a finite logit, i.e. eta = max_eta up to ~1e-6
    relative, instead of ``atanh(1) = +inf``.

    Args:
        base_eta: initial eta.
        min_eta: lower bound.
        max_eta: upper bound.
        input_dim: unused (config compatibility).
        mlp_dims: unused (config compatibility).
        action_dim: unused (config compatibility).
    """

    def __init__(
        self,
        base_eta: float = 0.5,
        min_eta: float = 0.1,
        max_eta: float = 1.0,
        input_dim: int | None = None,
        mlp_dims: Sequence[int] | None = None,
        action_dim: int | None = None,
    ) -> None:
        super().__init__()
        _check_range(base_eta, min_eta, max_eta)
        self.min_eta = float(min_eta)
        self.max_eta = float(max_eta)
        self.eta_logit = nn.Parameter(torch.tensor(_eta_logit(base_eta, min_eta, max_eta)))

    def value(self) -> Tensor:
        """The scalar eta as a 0-d tensor (differentiable)."""
        return self.min_eta + (self.max_eta - self.min_eta) * 0.5 * (torch.tanh(self.eta_logit) + 1.0)

    def forward(self, cond: dict[str, Tensor]) -> Tensor:
        """Args: cond with ``state`` ``(B, To, Do)``. Returns ``(B, 1)``."""
        b = cond["state"].shape[0]
        return self.value().expand(b, 1)


class EtaAction(nn.Module):
    """One eta per action dimension, the same tanh map as EtaFixed applied to a logit vector.

    Args:
        action_dim: Da.
        base_eta: initial eta for every dim.
        min_eta: lower bound.
        max_eta: upper bound.
        input_dim: unused (config compatibility).
        mlp_dims: unused (config compatibility).
    """

    def __init__(
        self,
        action_dim: int,
        base_eta: float = 0.5,
        min_eta: float = 0.1,
        max_eta: float = 1.0,
        input_dim: int | None = None,
        mlp_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_range(base_eta, min_eta, max_eta)
        self.min_eta = float(min_eta)
        self.max_eta = float(max_eta)
        self.eta_logit = nn.Parameter(torch.full((action_dim,), _eta_logit(base_eta, min_eta, max_eta)))

    def forward(self, cond: dict[str, Tensor]) -> Tensor:
        """Args: cond with ``state`` ``(B, To, Do)``. Returns ``(B, Da)``."""
        b = cond["state"].shape[0]
        eta = self.min_eta + (self.max_eta - self.min_eta) * 0.5 * (torch.tanh(self.eta_logit) + 1.0)
        return eta.expand(b, -1)


class _EtaMLP(nn.Module):
    """eta = clamp(base + tanh(MLP(state)), min, max); Linear weights xavier_normal(gain 1e-2), zero bias."""

    def __init__(
        self,
        input_dim: int,
        out_dim: int,
        mlp_dims: Sequence[int],
        base_eta: float,
        min_eta: float,
        max_eta: float,
        activation_type: str,
    ) -> None:
        super().__init__()
        _check_range(base_eta, min_eta, max_eta)
        self.input_dim = int(input_dim)
        self.base_eta = float(base_eta)
        self.min_eta = float(min_eta)
        self.max_eta = float(max_eta)
        self.mlp = MLP([self.input_dim, *mlp_dims, out_dim], activation_type=activation_type)
        # Tiny initial weights: eta starts at ~base_eta for every state.
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight, gain=1e-2)
                nn.init.zeros_(m.bias)

    def forward(self, cond: dict[str, Tensor]) -> Tensor:
        """Args: cond with ``state`` ``(B, To, Do)``, To * Do == input_dim. Returns ``(B, out_dim)``."""
        state = cond["state"]
        state = state.reshape(state.shape[0], -1)
        if state.shape[1] != self.input_dim:
            raise ValueError(
                f"{type(self).__name__}: flattened state has {state.shape[1]} features but input_dim="
                f"{self.input_dim}; set input_dim to cond_steps * obs_dim"
            )
        return torch.clamp(self.base_eta + torch.tanh(self.mlp(state)), self.min_eta, self.max_eta)


class EtaState(_EtaMLP):
    """State-dependent scalar eta ``clamp(base + tanh(MLP(s)), min, max)``, ``(B, 1)``.

    Args:
        input_dim: flattened state size To * Do.
        mlp_dims: hidden widths.
        base_eta: eta at initialisation.
        min_eta: lower bound.
        max_eta: upper bound.
        activation_type: hidden activation (ReLU in the reference).
        action_dim: unused (config compatibility).
    """

    def __init__(
        self,
        input_dim: int,
        mlp_dims: Sequence[int] = (256, 256),
        base_eta: float = 0.5,
        min_eta: float = 0.1,
        max_eta: float = 1.0,
        activation_type: str = "ReLU",
        action_dim: int | None = None,
    ) -> None:
        super().__init__(input_dim, 1, mlp_dims, base_eta, min_eta, max_eta, activation_type)


class EtaStateAction(_EtaMLP):
    """State-dependent per-action-dim eta ``clamp(base + tanh(MLP(s)), min, max)``, ``(B, Da)``.

    Args:
        input_dim: flattened state size To * Do.
        action_dim: Da.
        mlp_dims: hidden widths.
        base_eta: eta at initialisation.
        min_eta: lower bound.
        max_eta: upper bound.
        activation_type: hidden activation (ReLU in the reference).
    """

    def __init__(
        self,
        input_dim: int,
        action_dim: int,
        mlp_dims: Sequence[int] = (256, 256),
        base_eta: float = 1.0,
        min_eta: float = 1e-3,
        max_eta: float = 2.0,
        activation_type: str = "ReLU",
    ) -> None:
        super().__init__(input_dim, action_dim, mlp_dims, base_eta, min_eta, max_eta, activation_type)
