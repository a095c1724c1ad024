"""Transformer network of the Gaussian-mixture policy (DPPO's GMM_Transformer)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.common.critic import flatten_state
from model.common.transformer import ObsToChunkTransformer, init_transformer_weights
from model.gaussian.mlp import StateIndependentStd, check_std_args, logvar_bounds


class GMMTransformer(nn.Module):
    """Observation token -> ``Ta`` decoded features -> per-step means (and log-variances) of ``M`` modes.

    Each decoded step ``(B, Ta, n)`` goes through one Linear head giving ``M * Da`` means (tanh) and, for a
    state-dependent std, another ``M * Da`` log-variances (clamped to ``[log std_min^2, log std_max^2]``);
    both are reordered ``(B, Ta, M, Da) -> (B, M, Ta * Da)``. The mixture logits come from
    ``Linear(Ta * n, M)`` on all the decoded features. DPPO slices the log-variances as
    ``[M * Da : -M]``, which has the wrong width (its configs never use that path); here the head has exactly
    ``2 M Da`` outputs and the second half is the log-variance, a deliberate fix (docs/algorithms.md#d21-gmm-std-heads).

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
        learn_fixed_std: learn a state-independent std per (mode, action dim).
        std_min: lower bound of any learned std.
        std_max: upper bound of any learned std.
        num_modes: ``M``.

    Shapes:
        ``forward(cond{"state": (B, To, Do)})`` ->
        ``(means (B, M, Ta * Da), scales (B, M, Ta * Da), logits (B, M))``.
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
        num_modes: int = 5,
    ) -> None:
        super().__init__()
        check_std_args(fixed_std, learn_fixed_std)
        if num_modes < 1:
            raise ValueError(f"num_modes must be >= 1, got {num_modes}")
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.num_modes = num_modes
        self.fixed_std = fixed_std
        self.logvar_min, self.logvar_max = logvar_bounds(std_min, std_max)
        self.trunk = ObsToChunkTransformer(
            cond_dim, horizon_steps, embed_dim, num_heads, num_layers, activation_type, dropout
        )
        per_step = num_modes * action_dim
        self.head = nn.Linear(embed_dim, per_step if fixed_std is not None else 2 * per_step)
        self.logits_head = nn.Linear(horizon_steps * embed_dim, num_modes)
        init_transformer_weights(self.head)
        init_transformer_weights(self.logits_head)
        if fixed_std is not None:
            self.std = StateIndependentStd(
                (num_modes,),
                action_dim,
                horizon_steps,
                fixed_std,
                learn_fixed_std,
                self.logvar_min,
                self.logvar_max,
            )

    def _per_mode(self, x: Tensor) -> Tensor:
        """``(B, Ta, M * Da) -> (B, M, Ta * Da)``."""
        batch = x.shape[0]
        x = x.reshape(batch, self.horizon_steps, self.num_modes, self.action_dim).transpose(1, 2)
        return x.reshape(batch, self.num_modes, -1)

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Args: cond with ``state`` ``(B, To, Do)``.

        Returns:
            ``means (B, M, Ta * Da)``, ``scales (B, M, Ta * Da)``, ``logits (B, M)``.
        """
        feat = self.trunk(flatten_state(cond, self.cond_dim))  # (B, Ta, n)
        out = self.head(feat)
        per_step = self.num_modes * self.action_dim
        means = torch.tanh(self._per_mode(out[..., :per_step]))
        if self.fixed_std is None:
            logvar = self._per_mode(out[..., per_step:]).clamp(self.logvar_min, self.logvar_max)
            scales = torch.exp(0.5 * logvar)
        else:
            scales = self.std(means)
        logits = self.logits_head(feat.flatten(1))
        return means, scales, logits
