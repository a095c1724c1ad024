"""Transformer network of the diagonal-Gaussian policy (DPPO's Gaussian_Transformer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.common.critic import flatten_state
from model.common.transformer import ObsToChunkTransformer, init_transformer_weights
from model.gaussian.mlp import StateIndependentStd, check_std_args, logvar_bounds


class GaussianTransformer(nn.Module):
    """Observation token -> ``Ta`` decoded features -> per-step Gaussian mean (tanh) and std.

    Std modes as in :class:`model.gaussian.mlp.GaussianMLP`, except that the state-dependent log-variance is a
    second ``Da``-wide slice of the per-step head output, clamped to ``[log std_min^2, log std_max^2]`` as in
    DPPO.

    Args:
        action_dim: ``Da``.
        horizon_steps: ``Ta``.
        cond_dim: flattened observation size ``To * Do``.
        embed_dim: transformer width n.
        num_heads: attention heads.
        num_layers: decoder layers.
        activation_type: decoder feed-forward activation.
        dropout: decoder / embedding dropout.
        fixed_std: constant std, or the initial std with ``learn_fixed_std``; None for a state-dependent std.
        learn_fixed_std: learn a state-independent std per action dim.
        std_min: lower bound of any learned std.
        std_max: upper bound of any learned std.

    Shapes:
        ``forward(cond{"state": (B, To, Do)}) -> (mean (B, Ta * Da), scale (B, Ta * Da))``.
    """

    def __init__(
        self,
        action_dim: int,
        horizon_steps: int,
        cond_dim: int,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        activation_type: str = "gelu",
        dropout: float = 0.0,
        fixed_std: float | None = None,
        learn_fixed_std: bool = False,
        std_min: float = 0.01,
        std_max: float = 1.0,
    ) -> None:
        super().__init__()
        check_std_args(fixed_std, learn_fixed_std)
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.fixed_std = fixed_std
        self.logvar_min, self.logvar_max = logvar_bounds(std_min, std_max)
        self.trunk = ObsToChunkTransformer(
            cond_dim, horizon_steps, embed_dim, num_heads, num_layers, activation_type, dropout
        )
        self.head = nn.Linear(embed_dim, action_dim if fixed_std is not None else 2 * action_dim)
        init_transformer_weights(self.head)
        if fixed_std is not None:
            self.std = StateIndependentStd(
                (), action_dim, horizon_steps, fixed_std, learn_fixed_std, self.logvar_min, self.logvar_max
            )

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Args: cond with ``state`` ``(B, To, Do)``. Returns ``(mean, scale)``, each ``(B, Ta * Da)``."""
        out = self.head(self.trunk(flatten_state(cond, self.cond_dim)))  # (B, Ta, Da or 2 Da)
        mean = torch.tanh(out[..., : self.action_dim]).flatten(1)
        if self.fixed_std is None:
            logvar = out[..., self.action_dim :].clamp(self.logvar_min, self.logvar_max)
            scale = torch.exp(0.5 * logvar).flatten(1)
        else:
            scale = self.std(mean)
        return mean, scale
