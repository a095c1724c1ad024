"""MLP network of the Gaussian-mixture policy (DPPO's GMM_MLP)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.critic import flatten_state
from model.gaussian.mlp import (
    StateIndependentStd,
    bounded_logvar,
    check_std_args,
    logvar_bounds,
    make_mlp,
)


class GMMMLP(nn.Module):
    """``M``-mode diagonal Gaussian mixture over action chunks, from separate MLPs for means, stds and logits.

    * means: ``(Residual)MLP([cond_dim] + mlp_dims + [M * Ta * Da])``, tanh-squashed if ``tanh_output``
    * std: state-dependent (``fixed_std=None``, an MLP of the same shape whose log-variance is tanh-rescaled
      into ``[log std_min^2, log std_max^2]``), constant, or learned per (mode, action dim) (clamped) and tiled
      over the horizon
    * mixture logits: ``(Residual)MLP([cond_dim] + mlp_dims + [M])``

    DPPO clamps the state-dependent log-variance (docs/algorithms.md#d21-gmm-std-heads). A clamp starts every mode at
    ``std_max`` with no gradient above it, and on a two-mode 1-d toy problem half the seeds collapsed to one broad mode;
    the tanh-rescaling used by the Gaussian MLP fits both modes on every seed tried, so it is used here on purpose.

    Args:
        action_dim: ``Da``.
        horizon_steps: ``Ta``.
        cond_dim: flattened observation size ``To * Do``.
        mlp_dims: hidden widths of each MLP (``len(mlp_dims) - 1`` must be even with ``residual_style``).
        activation_type: hidden activation name.
        tanh_output: squash the means with tanh.
        residual_style: ResidualMLP instead of MLP.
        use_layernorm: LayerNorm in the hidden layers.
        dropout: dropout in the hidden layers (plain MLP only).
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
        mlp_dims: Sequence[int] = (256, 256, 256),
        activation_type: str = "Mish",
        tanh_output: bool = True,
        residual_style: bool = False,
        use_layernorm: bool = False,
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
        self.tanh_output = tanh_output
        self.fixed_std = fixed_std
        self.logvar_min, self.logvar_max = logvar_bounds(std_min, std_max)
        chunk_dim = action_dim * horizon_steps

        def build(out_dim: int) -> nn.Module:
            return make_mlp(
                [cond_dim, *mlp_dims, out_dim],
                activation_type,
                out_activation_type="Identity",
                residual_style=residual_style,
                use_layernorm=use_layernorm,
                dropout=dropout,
            )

        self.mlp_mean = build(num_modes * chunk_dim)
        self.mlp_logits = build(num_modes)
        if fixed_std is None:
            self.mlp_logvar = build(num_modes * chunk_dim)
        else:
            self.std = StateIndependentStd(
                (num_modes,),
                action_dim,
                horizon_steps,
                fixed_std,
                learn_fixed_std,
                self.logvar_min,
                self.logvar_max,
            )

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Args: cond with ``state`` ``(B, To, Do)``.

        Returns:
            ``means (B, M, Ta * Da)``, ``scales (B, M, Ta * Da)``, ``logits (B, M)``.
        """
        state = flatten_state(cond, self.cond_dim)
        batch = state.shape[0]
        means = self.mlp_mean(state).view(batch, self.num_modes, -1)
        if self.tanh_output:
            means = torch.tanh(means)
        if self.fixed_std is None:
            logvar = self.mlp_logvar(state).view(batch, self.num_modes, -1)
            scales = torch.exp(0.5 * bounded_logvar(logvar, self.logvar_min, self.logvar_max))
        else:
            scales = self.std(means)
        logits = self.mlp_logits(state)
        return means, scales, logits
