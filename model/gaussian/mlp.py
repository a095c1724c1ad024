"""MLP network of the diagonal-Gaussian policy, plus std helpers shared with the GMM nets.

See docs/algorithms.md#gaussian-and-gmm-policies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.critic import flatten_state
from model.common.mlp import MLP, ResidualMLP


def logvar_bounds(std_min: float, std_max: float) -> tuple[float, float]:
    """Return ``(log std_min^2, log std_max^2)`` after checking ``0 < std_min <= std_max``.

    The bounds are plain Python floats on purpose (a deliberate fix, docs/algorithms.md#d7-gaussian-std-bounds): DPPO
    keeps them as non-trainable ``nn.Parameter``s, so loading a pre-training checkpoint silently replaced the
    fine-tuning config's ``std_max`` with the pre-training one. Here the constructor arguments always win.
    """
    if not 0.0 < std_min <= std_max:
        raise ValueError(f"need 0 < std_min <= std_max, got std_min={std_min}, std_max={std_max}")
    return 2.0 * math.log(std_min), 2.0 * math.log(std_max)


def bounded_logvar(raw: Tensor, logvar_min: float, logvar_max: float) -> Tensor:
    """Squash an unbounded network output into ``[logvar_min, logvar_max]`` with a rescaled tanh.

    Unlike a clamp this keeps a gradient everywhere, and a zero raw output maps to the middle of the range (in log
    space) instead of sitting on a bound.
    """
    return logvar_min + 0.5 * (logvar_max - logvar_min) * (torch.tanh(raw) + 1.0)


def check_std_args(fixed_std: float | None, learn_fixed_std: bool) -> None:
    """Validate the fixed / learned-fixed std options shared by the Gaussian and GMM networks."""
    if learn_fixed_std and fixed_std is None:
        raise ValueError("learn_fixed_std=True needs fixed_std (the initial std of the learned parameter)")
    if fixed_std is not None and fixed_std <= 0:
        raise ValueError(f"fixed_std must be positive, got {fixed_std}")


def make_mlp(
    dims: Sequence[int],
    activation_type: str,
    out_activation_type: str,
    residual_style: bool,
    use_layernorm: bool,
    use_layernorm_final: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Build an MLP or a ResidualMLP with the same keyword set (ResidualMLP has no dropout)."""
    if residual_style:
        if dropout > 0:
            raise ValueError("residual_style networks have no dropout; set dropout=0 or residual_style=False")
        return ResidualMLP(
            dims,
            activation_type=activation_type,
            out_activation_type=out_activation_type,
            use_layernorm=use_layernorm,
            use_layernorm_final=use_layernorm_final,
        )
    return MLP(
        dims,
        activation_type=activation_type,
        out_activation_type=out_activation_type,
        use_layernorm=use_layernorm,
        use_layernorm_final=use_layernorm_final,
        dropout=dropout,
    )


class StateIndependentStd(nn.Module):
    """A std that does not depend on the observation: a constant, or a learned log-variance per action dim.

    The learned variant holds ``logvar`` of shape ``(*lead, Da)`` (lead ``()`` for a Gaussian, ``(M,)`` for a
    GMM), initialised to ``log fixed_std^2``, clamped to the log-variance bounds and tiled over the horizon.

    Args:
        lead_shape: leading shape of the std (``()`` or ``(M,)``).
        action_dim: ``Da``.
        horizon_steps: ``Ta``.
        fixed_std: the constant std, or the initial value of the learned one.
        learn: learn the std (one value per leading index and action dim).
        logvar_min: lower clamp of the learned log-variance.
        logvar_max: upper clamp of the learned log-variance.

    Shapes:
        ``forward(like (B, *lead, Ta * Da)) -> (B, *lead, Ta * Da)`` on ``like``'s device and dtype.
    """

    def __init__(
        self,
        lead_shape: tuple[int, ...],
        action_dim: int,
        horizon_steps: int,
        fixed_std: float,
        learn: bool,
        logvar_min: float,
        logvar_max: float,
    ) -> None:
        super().__init__()
        self.horizon_steps = horizon_steps
        self.fixed_std = float(fixed_std)
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        self.logvar: nn.Parameter | None = None
        if learn:
            init = torch.full((*lead_shape, action_dim), 2.0 * math.log(fixed_std))
            self.logvar = nn.Parameter(init)

    def forward(self, like: Tensor) -> Tensor:
        """Return the std broadcast to the shape of ``like`` ``(B, *lead, Ta * Da)``."""
        if self.logvar is None:
            return torch.full_like(like, self.fixed_std)
        logvar = self.logvar.clamp(self.logvar_min, self.logvar_max)
        # (..., Da) -> (..., Ta * Da) in (t, d) order, matching the (Ta, Da) -> Ta*Da flattening of the means.
        scale = torch.exp(0.5 * logvar).repeat(*([1] * (logvar.dim() - 1)), self.horizon_steps)
        return scale.expand_as(like)


class GaussianMLP(nn.Module):
    """Diagonal-Gaussian action-chunk network on the flattened state.

    Three std modes:

    * ``fixed_std=None``: state-dependent std. A shared trunk ``(Residual)MLP([cond_dim] + mlp_dims)`` (hidden
      activation also at its output) feeds a mean head and a log-variance head; the raw log-variance is
      squashed with tanh into ``[log std_min^2, log std_max^2]`` so the std stays within the bounds with a
      nonzero gradient.
    * ``fixed_std`` set, ``learn_fixed_std=False``: constant std; the mean is ``(Residual)MLP([cond_dim] +
      mlp_dims + [Ta * Da])``.
    * ``fixed_std`` set, ``learn_fixed_std=True``: one learned log-variance per action dim (clamped to the
      bounds), tiled over the horizon.

    Args:
        action_dim: ``Da``.
        horizon_steps: ``Ta``.
        cond_dim: flattened observation size ``To * Do``.
        mlp_dims: hidden widths. With ``residual_style`` the ResidualMLP needs an even number of hidden
            layers: ``len(mlp_dims) - 1`` with a fixed std, ``len(mlp_dims) - 2`` for the learned-std trunk.
        activation_type: hidden activation name.
        tanh_output: squash the mean with tanh (the sample itself is not squashed).
        residual_style: ResidualMLP instead of MLP.
        use_layernorm: LayerNorm in the hidden layers.
        dropout: dropout in the hidden layers (plain MLP only).
        fixed_std: constant std, or the initial std with ``learn_fixed_std``; None for a state-dependent std.
        learn_fixed_std: learn a state-independent std.
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
    ) -> None:
        super().__init__()
        check_std_args(fixed_std, learn_fixed_std)
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.tanh_output = tanh_output
        self.logvar_min, self.logvar_max = logvar_bounds(std_min, std_max)
        out_dim = action_dim * horizon_steps
        mlp_dims = list(mlp_dims)
        self.fixed_std = fixed_std
        if fixed_std is None:
            self.mlp_base = make_mlp(
                [cond_dim, *mlp_dims],
                activation_type,
                out_activation_type=activation_type,
                residual_style=residual_style,
                use_layernorm=use_layernorm,
                use_layernorm_final=use_layernorm,
                dropout=dropout,
            )
            self.mean_head = nn.Linear(mlp_dims[-1], out_dim)
            self.logvar_head = nn.Linear(mlp_dims[-1], out_dim)
        else:
            self.mlp_mean = make_mlp(
                [cond_dim, *mlp_dims, out_dim],
                activation_type,
                out_activation_type="Identity",
                residual_style=residual_style,
                use_layernorm=use_layernorm,
                dropout=dropout,
            )
            self.std = StateIndependentStd(
                (), action_dim, horizon_steps, fixed_std, learn_fixed_std, self.logvar_min, self.logvar_max
            )

    def forward(self, cond: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Args: cond with ``state`` ``(B, To, Do)``. Returns ``(mean, scale)``, each ``(B, Ta * Da)``."""
        state = flatten_state(cond, self.cond_dim)
        if self.fixed_std is None:
            feat = self.mlp_base(state)
            mean = self.mean_head(feat)
            logvar = bounded_logvar(self.logvar_head(feat), self.logvar_min, self.logvar_max)
            scale = torch.exp(0.5 * logvar)
        else:
            mean = self.mlp_mean(state)
            scale = self.std(mean)
        if self.tanh_output:
            mean = torch.tanh(mean)
        return mean, scale
