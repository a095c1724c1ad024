"""1-D temporal conditional UNet denoiser in the Diffusion-Policy style (DPPO's Unet1D).

See docs/algorithms.md#denoiser-networks.

Channels run along the action dimension and the convolution runs along the horizon Ta. The global condition
``g = [time feature, state]`` modulates every residual block through FiLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
from torch import Tensor, nn

from model.common.mlp import ResidualMLP
from model.common.modules import SinusoidalPosEmb, get_activation


class ConvBlock1D(nn.Module):
    """Conv1d(kernel, same padding) -> GroupNorm (if ``n_groups``) -> activation.

    Shapes: ``(B, C_in, T) -> (B, C_out, T)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        n_groups: int | None = None,
        groupnorm_eps: float = 1e-5,
        activation_type: str = "Mish",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)]
        if n_groups:
            if out_channels % n_groups:
                raise ValueError(f"GroupNorm n_groups={n_groups} must divide the channel count {out_channels}")
            layers.append(nn.GroupNorm(n_groups, out_channels, eps=groupnorm_eps))
        layers.append(get_activation(activation_type))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x ``(B, C_in, T)``. Returns ``(B, C_out, T)``."""
        return self.block(x)


class ResidualBlock1D(nn.Module):
    """Two ConvBlocks with FiLM conditioning in between and a (1x1 conv) skip connection.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        cond_dim: width of the global condition g.
        kernel_size: convolution kernel size (odd).
        n_groups: GroupNorm groups, None for no normalisation.
        cond_predict_scale: FiLM predicts scale and bias (``h = scale * h + bias``); otherwise ``h + bias``.
        larger_encoder: cond encoder Linear-act-Linear-act-Linear instead of act-Linear.
        groupnorm_eps: GroupNorm epsilon.
        activation_type: activation name.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 5,
        n_groups: int | None = None,
        cond_predict_scale: bool = False,
        larger_encoder: bool = False,
        groupnorm_eps: float = 1e-5,
        activation_type: str = "Mish",
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.cond_predict_scale = cond_predict_scale
        self.conv1 = ConvBlock1D(in_channels, out_channels, kernel_size, n_groups, groupnorm_eps, activation_type)
        self.conv2 = ConvBlock1D(out_channels, out_channels, kernel_size, n_groups, groupnorm_eps, activation_type)
        film_dim = 2 * out_channels if cond_predict_scale else out_channels
        if larger_encoder:
            self.cond_encoder = nn.Sequential(
                nn.Linear(cond_dim, film_dim),
                get_activation(activation_type),
                nn.Linear(film_dim, film_dim),
                get_activation(activation_type),
                nn.Linear(film_dim, film_dim),
            )
        else:
            self.cond_encoder = nn.Sequential(get_activation(activation_type), nn.Linear(cond_dim, film_dim))
        self.residual_conv: nn.Module = (
            nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Args: x ``(B, C_in, T)``, cond ``(B, cond_dim)``. Returns ``(B, C_out, T)``."""
        h = self.conv1(x)
        embed = self.cond_encoder(cond).unsqueeze(-1)  # (B, film_dim, 1): broadcast over time
        if self.cond_predict_scale:
            scale, bias = embed.split(self.out_channels, dim=1)
            h = torch.addcmul(bias, scale, h)
        else:
            h = h + embed
        return self.conv2(h) + self.residual_conv(x)


class Unet1D(nn.Module):
    """Conditional 1-D UNet denoiser ``f(x, t, s) -> (B, Ta, Da)``.

    Args:
        action_dim: Da (input/output channels).
        cond_dim: flattened state size To * Do.
        diffusion_step_embed_dim: width dsed of the time feature
            ``Linear(4 dsed, dsed)(Mish(Linear(dsed, 4 dsed)(SinEmb_dsed(t))))``.
        dim: base channel count; level j has ``dim * dim_mults[j]`` channels.
        dim_mults: channel multipliers per level; Ta must be divisible by ``2 ** (len(dim_mults) - 1)``.
        down_dims: Diffusion Policy's spelling, the channel count per level (e.g. ``[256, 512, 1024]``); when
            given it replaces ``dim`` / ``dim_mults``.
        kernel_size: convolution kernel size.
        n_groups: GroupNorm groups (None: no GroupNorm, the reference default).
        smaller_encoder: use the small FiLM encoder (act-Linear) even without ``cond_mlp_dims``.
        cond_predict_scale: FiLM predicts scale and bias.
        cond_mlp_dims: if set, the state first goes through ``ResidualMLP([cond_dim, *cond_mlp_dims])`` and
            the small FiLM encoder is used.
        groupnorm_eps: GroupNorm epsilon.
        activation_type: activation in conv blocks, FiLM encoders and the cond MLP.
        horizon_steps: optional Ta, checked against the divisibility rule at construction (it is always
            checked in ``forward``).
    """

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        diffusion_step_embed_dim: int = 32,
        dim: int = 32,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        kernel_size: int = 5,
        n_groups: int | None = None,
        smaller_encoder: bool = False,
        cond_predict_scale: bool = False,
        cond_mlp_dims: Sequence[int] | None = None,
        groupnorm_eps: float = 1e-5,
        activation_type: str = "Mish",
        horizon_steps: int | None = None,
        down_dims: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if down_dims is not None:
            if len(down_dims) < 1:
                raise ValueError("Unet1D down_dims must have at least one level")
            dim, dim_mults = 1, [int(d) for d in down_dims]
        if len(dim_mults) < 1:
            raise ValueError("Unet1D dim_mults must have at least one level")
        if kernel_size % 2 == 0:
            raise ValueError(f"Unet1D kernel_size must be odd to keep the horizon length, got {kernel_size}")
        self.action_dim = action_dim
        self.horizon_multiple = 2 ** (len(dim_mults) - 1)
        if horizon_steps is not None:
            self._check_horizon(horizon_steps)

        dsed = diffusion_step_embed_dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        if cond_mlp_dims:
            self.cond_mlp: nn.Module | None = ResidualMLP(
                [cond_dim, *cond_mlp_dims], activation_type=activation_type, out_activation_type="Identity"
            )
            g_dim = dsed + int(cond_mlp_dims[-1])
        else:
            self.cond_mlp = None
            g_dim = dsed + cond_dim
        larger_encoder = cond_mlp_dims is None and not smaller_encoder

        dims = [action_dim] + [dim * int(m) for m in dim_mults]
        in_out = list(zip(dims[:-1], dims[1:]))

        def res(c_in: int, c_out: int) -> ResidualBlock1D:
            return ResidualBlock1D(
                c_in,
                c_out,
                g_dim,
                kernel_size=kernel_size,
                n_groups=n_groups,
                cond_predict_scale=cond_predict_scale,
                larger_encoder=larger_encoder,
                groupnorm_eps=groupnorm_eps,
                activation_type=activation_type,
            )

        self.down_modules = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            down: nn.Module = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down_modules.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), down]))

        mid = dims[-1]
        self.mid_modules = nn.ModuleList([res(mid, mid), res(mid, mid)])

        # Every up level upsamples. As in DPPO, the first down level's skip is never used
        # (docs/algorithms.md#k5-unet-skip-connection).
        self.up_modules = nn.ModuleList()
        for c_in, c_out in reversed(in_out[1:]):
            self.up_modules.append(
                nn.ModuleList(
                    [
                        res(2 * c_out, c_in),
                        res(c_in, c_in),
                        nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1),
                    ]
                )
            )

        self.final_conv = nn.Sequential(
            ConvBlock1D(dims[1], dims[1], kernel_size, n_groups, groupnorm_eps, activation_type),
            nn.Conv1d(dims[1], action_dim, 1),
        )

    def _check_horizon(self, horizon_steps: int) -> None:
        if horizon_steps % self.horizon_multiple:
            raise ValueError(
                f"Unet1D: horizon_steps (Ta={horizon_steps}) must be divisible by 2**(len(dim_mults)-1)="
                f"{self.horizon_multiple}; use fewer dim_mults levels or a horizon that is a multiple of it"
            )

    def forward(self, x: Tensor, time: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Predict the denoising target.

        Args:
            x: ``(B, Ta, Da)`` noisy action chunk.
            time: ``(B,)`` integer denoising index.
            cond: dict with ``state`` ``(B, To, Do)``.

        Returns:
            ``(B, Ta, Da)``.
        """
        b, ta, _ = x.shape
        self._check_horizon(ta)
        state = cond["state"].reshape(b, -1)
        if self.cond_mlp is not None:
            state = self.cond_mlp(state)
        g = torch.cat((self.time_mlp(time), state), dim=-1)

        h = x.transpose(1, 2)  # (B, Da, Ta): actions are channels, the horizon is the sequence
        skips: list[Tensor] = []
        for res1, res2, down in cast("Iterable[nn.ModuleList]", self.down_modules):
            h = res2(res1(h, g), g)
            skips.append(h)
            h = down(h)
        for block in self.mid_modules:
            h = block(h, g)
        for res1, res2, up in cast("Iterable[nn.ModuleList]", self.up_modules):
            h = torch.cat((h, skips.pop()), dim=1)
            h = up(res2(res1(h, g), g))
        return self.final_conv(h).transpose(1, 2)
