"""Plain and residual multi-layer perceptrons (docs/algorithms.md#denoiser-networks)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from model.common.modules import get_activation


class MLP(nn.Module):
    """Stack of Linear layers; each hidden layer is Linear -> [LayerNorm] -> [Dropout] -> activation.

    Args:
        dim_list: ``[d_in, d_1, ..., d_out]``; gives ``len(dim_list) - 1`` Linear layers.
        activation_type: activation after every hidden layer (default Tanh, as in DPPO).
        out_activation_type: activation after the last layer.
        use_layernorm: LayerNorm after every hidden Linear.
        use_layernorm_final: also LayerNorm after the last Linear.
        dropout: dropout probability after every hidden layer (0 disables it).

    Shapes:
        ``(..., d_in) -> (..., d_out)``.
    """

    def __init__(
        self,
        dim_list: Sequence[int],
        activation_type: str = "Tanh",
        out_activation_type: str = "Identity",
        use_layernorm: bool = False,
        use_layernorm_final: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dim_list]
        if len(dims) < 2:
            raise ValueError(f"MLP needs at least an input and an output dim, got dim_list={list(dim_list)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP dropout must be in [0, 1), got {dropout}")
        n_layers = len(dims) - 1
        layers: list[nn.Module] = []
        for i in range(n_layers):
            final = i == n_layers - 1
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if (use_layernorm and not final) or (final and use_layernorm_final):
                layers.append(nn.LayerNorm(dims[i + 1]))
            if dropout > 0 and not final:
                layers.append(nn.Dropout(dropout))
            act = get_activation(out_activation_type if final else activation_type)
            if not isinstance(act, nn.Identity):  # skip no-op modules: fewer Python calls per forward
                layers.append(act)
        # One flat Sequential keeps the forward cheap for the small batches used in rollouts.
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(..., d_in)``. Returns ``(..., d_out)``."""
        return self.layers(x)


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``y = x + L2(act(N2(L1(act(N1(x))))))``.

    Args:
        dim: hidden width h.
        activation_type: activation name.
        use_layernorm: N1/N2 are ``LayerNorm(h, eps=1e-6)`` if set, otherwise identities.
    """

    def __init__(self, dim: int, activation_type: str = "Mish", use_layernorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if use_layernorm:
            layers.append(nn.LayerNorm(dim, eps=1e-6))
        layers += [get_activation(activation_type), nn.Linear(dim, dim)]
        if use_layernorm:
            layers.append(nn.LayerNorm(dim, eps=1e-6))
        layers += [get_activation(activation_type), nn.Linear(dim, dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(..., h)``. Returns ``(..., h)``."""
        return x + self.layers(x)


class ResidualMLP(nn.Module):
    """Linear(d_in, h) (no activation) -> n/2 residual blocks -> Linear(h, d_out) -> [LayerNorm] -> out act.

    Args:
        dim_list: ``[d_in, h, h, ..., h, d_out]``; all hidden widths are taken equal to ``dim_list[1]``
            and the number of hidden layers ``len(dim_list) - 3`` must be even (two Linear layers per block).
        activation_type: activation inside the residual blocks.
        out_activation_type: activation after the output layer.
        use_layernorm: LayerNorm(eps=1e-6) inside the residual blocks.
        use_layernorm_final: LayerNorm after the output Linear.

    Shapes:
        ``(..., d_in) -> (..., d_out)``.
    """

    def __init__(
        self,
        dim_list: Sequence[int],
        activation_type: str = "Mish",
        out_activation_type: str = "Identity",
        use_layernorm: bool = False,
        use_layernorm_final: bool = False,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in dim_list]
        if len(dims) < 3:
            raise ValueError(f"ResidualMLP needs [d_in, h, ..., d_out], got dim_list={list(dim_list)}")
        n_hidden = len(dims) - 3
        if n_hidden % 2:
            raise ValueError(
                f"ResidualMLP needs an even number of hidden layers (len(dim_list) - 3), got {n_hidden} for "
                f"dim_list={list(dim_list)}; e.g. mlp_dims [512, 512, 512] gives one residual block"
            )
        hidden = dims[1]
        layers: list[nn.Module] = [nn.Linear(dims[0], hidden)]
        layers += [ResidualBlock(hidden, activation_type, use_layernorm) for _ in range(n_hidden // 2)]
        layers.append(nn.Linear(hidden, dims[-1]))
        if use_layernorm_final:
            layers.append(nn.LayerNorm(dims[-1]))
        out_act = get_activation(out_activation_type)
        if not isinstance(out_act, nn.Identity):
            layers.append(out_act)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(..., d_in)``. Returns ``(..., d_out)``."""
        return self.layers(x)
