"""The one-step, noise-conditioned policy of flow Q-learning (FQL, agent/finetune/fql.py): a = mu(s, z)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.mlp import MLP


class OneStepActor(nn.Module):
    """mu(s, z): an MLP on [flattened state, flattened noise chunk] -> an action chunk (no output squashing).

    Args:
        cond_dim: flattened state size To * Do.
        horizon_steps: Ta.
        action_dim: Da.
        mlp_dims: hidden widths.
        activation_type: hidden activation.
    """

    def __init__(
        self,
        cond_dim: int,
        horizon_steps: int,
        action_dim: int,
        mlp_dims: Sequence[int] = (512, 512),
        activation_type: str = "GELU",
    ) -> None:
        super().__init__()
        self.horizon_steps = horizon_steps
        self.action_dim = action_dim
        flat = horizon_steps * action_dim
        self.mlp = MLP([cond_dim + flat, *mlp_dims, flat], activation_type=activation_type)

    def forward(self, cond: dict[str, Tensor], z: Tensor) -> Tensor:
        """``cond["state"]`` ``(B, To, Do)``, z ``(B, Ta, Da)`` -> actions ``(B, Ta, Da)``."""
        b = z.shape[0]
        h = torch.cat((cond["state"].reshape(b, -1), z.reshape(b, -1)), dim=1)
        return self.mlp(h).view(b, self.horizon_steps, self.action_dim)


__all__ = ["OneStepActor"]
