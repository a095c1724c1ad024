"""State-value and state-action-value critics on the flattened state (docs/algorithms.md#value-loss, #replay-loop)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from model.common.mlp import MLP, ResidualMLP


def _value_mlp(
    in_dim: int, mlp_dims: Sequence[int], activation_type: str, use_layernorm: bool, residual_style: bool
) -> nn.Module:
    """``[in_dim] + mlp_dims + [1]`` MLP (or ResidualMLP) with an Identity output."""
    dims = [in_dim, *mlp_dims, 1]
    net_cls = ResidualMLP if residual_style else MLP
    return net_cls(dims, activation_type=activation_type, out_activation_type="Identity", use_layernorm=use_layernorm)


def flatten_state(cond: dict[str, Tensor], cond_dim: int) -> Tensor:
    """``cond["state"]`` ``(B, To, Do)`` -> ``(B, To * Do)``, checking that it matches ``cond_dim``."""
    state = cond["state"].flatten(1)
    if state.shape[1] != cond_dim:
        raise ValueError(f"critic expects cond_dim={cond_dim} (To*Do) but cond['state'] flattens to {state.shape[1]}")
    return state


class CriticObs(nn.Module):
    """State-value function ``V(s)``.

    Args:
        cond_dim: flattened observation size ``To * Do``.
        mlp_dims: hidden widths. With ``residual_style`` the number of hidden layers ``len(mlp_dims) - 1``
            must be even, e.g. ``[256, 256, 256]`` gives Linear - one residual block - Linear.
        activation_type: hidden activation name.
        use_layernorm: LayerNorm in the hidden layers (inside the residual blocks for ``residual_style``).
        residual_style: use a ResidualMLP instead of a plain MLP.

    Shapes:
        ``forward(cond{"state": (B, To, Do)}) -> (B,)``.
    """

    def __init__(
        self,
        cond_dim: int,
        mlp_dims: Sequence[int],
        activation_type: str = "Mish",
        use_layernorm: bool = False,
        residual_style: bool = False,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = _value_mlp(cond_dim, mlp_dims, activation_type, use_layernorm, residual_style)

    def forward(self, cond: dict[str, Tensor]) -> Tensor:
        """Args: cond with ``state`` ``(B, To, Do)``. Returns values ``(B,)``."""
        return self.mlp(flatten_state(cond, self.cond_dim)).squeeze(-1)


class CriticObsAct(nn.Module):
    """Twin state-action-value function ``Q_i(s, a)`` on ``concat[state, flattened action chunk]``.

    DPPO misspells the flag as ``residual_tyle``, so ``residual_style`` is silently ignored there
    (docs/algorithms.md#d6-residual-q-critics); here it is honoured deliberately: ``residual_style=True`` builds
    ResidualMLP heads.

    Args:
        cond_dim: flattened observation size ``To * Do``.
        mlp_dims: hidden widths of each Q head.
        action_dim: ``Da``.
        action_steps: number of action steps ``Ta'`` the critic sees (the chunk is flattened).
        activation_type: hidden activation name.
        use_layernorm: LayerNorm in the hidden layers.
        residual_style: use ResidualMLP heads.
        double_q: build a second, independently initialised head ``Q2``.

    Shapes:
        ``forward(cond{"state": (B, To, Do)}, action (B, Ta', Da)) -> (q1 (B,), q2 (B,) or None)``.
    """

    def __init__(
        self,
        cond_dim: int,
        mlp_dims: Sequence[int],
        action_dim: int,
        action_steps: int = 1,
        activation_type: str = "Mish",
        use_layernorm: bool = False,
        residual_style: bool = False,
        double_q: bool = True,
    ) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.action_dim = action_dim
        self.action_steps = action_steps
        self.double_q = double_q
        in_dim = cond_dim + action_dim * action_steps
        self.Q1 = _value_mlp(in_dim, mlp_dims, activation_type, use_layernorm, residual_style)
        self.Q2 = _value_mlp(in_dim, mlp_dims, activation_type, use_layernorm, residual_style) if double_q else None

    def forward(self, cond: dict[str, Tensor], action: Tensor) -> tuple[Tensor, Tensor | None]:
        """Evaluate both heads.

        Args:
            cond: dict with ``state`` ``(B, To, Do)``.
            action: ``(B, Ta', Da)`` with ``Ta' == action_steps`` (or already flat ``(B, Ta' * Da)``).

        Returns:
            ``(q1, q2)``, each ``(B,)``; ``q2`` is None when ``double_q`` is False.
        """
        act = action.flatten(1)
        if act.shape[1] != self.action_dim * self.action_steps:
            raise ValueError(
                f"critic expects actions of {self.action_steps} steps x {self.action_dim} dims, got shape "
                f"{tuple(action.shape)}"
            )
        x = torch.cat((flatten_state(cond, self.cond_dim), act), dim=-1)
        q1 = self.Q1(x).squeeze(-1)
        q2 = self.Q2(x).squeeze(-1) if self.Q2 is not None else None
        return q1, q2


class CriticEnsemble(nn.Module):
    """An ensemble of independently initialised state-action-value heads ``Q_k(s, a)``, k = 1..E (RLPD).

    Args:
        cond_dim: flattened observation size ``To * Do``.
        mlp_dims: hidden widths of each head.
        action_dim: ``Da``.
        action_steps: action steps ``Ta'`` the heads see (the chunk is flattened).
        n_critics: E, at least 2 (targets take the min over a random pair).
        activation_type: hidden activation name.
        use_layernorm: LayerNorm after each hidden layer (RLPD's).
        residual_style: ResidualMLP heads.

    Shapes:
        ``forward(cond{"state": (B, To, Do)}, action (B, Ta', Da)) -> (E, B)``.
    """

    def __init__(
        self,
        cond_dim: int,
        mlp_dims: Sequence[int],
        action_dim: int,
        action_steps: int = 1,
        n_critics: int = 10,
        activation_type: str = "ReLU",
        use_layernorm: bool = True,
        residual_style: bool = False,
    ) -> None:
        super().__init__()
        if n_critics < 2:
            raise ValueError(f"CriticEnsemble needs n_critics >= 2, got {n_critics}")
        self.cond_dim = cond_dim
        in_dim = cond_dim + action_dim * action_steps
        self.heads = nn.ModuleList(
            _value_mlp(in_dim, mlp_dims, activation_type, use_layernorm, residual_style) for _ in range(n_critics)
        )

    def forward(self, cond: dict[str, Tensor], action: Tensor) -> Tensor:
        x = torch.cat((flatten_state(cond, self.cond_dim), action.flatten(1)), dim=-1)
        return torch.stack([head(x).squeeze(-1) for head in self.heads])
