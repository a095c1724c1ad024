"""MLP denoiser for state-based diffusion policies (DPPO's DiffusionMLP; docs/algorithms.md#denoiser-networks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.common.mlp import MLP, ResidualMLP
from model.common.modules import SinusoidalPosEmb


class DiffusionMLP(nn.Module):
    """Epsilon (or x0) predictor ``f(x, t, s)`` built from an MLP over ``[flatten(x), time_emb, state]``.

    Args:
        action_dim: Da.
        horizon_steps: Ta.
        cond_dim: flattened state size To * Do.
        time_dim: width td of the time embedding ``Linear(2td, td)(Mish(Linear(td, 2td)(SinEmb_td(t))))``.
        mlp_dims: hidden widths of the main MLP.
        cond_mlp_dims: optional hidden/output widths of an MLP applied to the state first (Identity output).
        activation_type: hidden activation (main MLP and cond MLP).
        out_activation_type: activation after the output layer.
        use_layernorm: LayerNorm in the main MLP (inside the residual blocks when ``residual_style``).
        residual_style: use a ResidualMLP (``len(mlp_dims) - 1`` must be even) instead of a plain MLP.
        step_size_conditioned: also condition on a step size d (shortcut flow policies, model/flow/shortcut.py):
            ``time`` is then ``(B, 2)`` rows (t, d), and the time embedding is that of t plus a second embedding
            of d of the same form.
    """

    def __init__(
        self,
        action_dim: int,
        horizon_steps: int,
        cond_dim: int,
        time_dim: int = 16,
        mlp_dims: Sequence[int] = (256, 256),
        cond_mlp_dims: Sequence[int] | None = None,
        activation_type: str = "Mish",
        out_activation_type: str = "Identity",
        use_layernorm: bool = False,
        residual_style: bool = False,
        step_size_conditioned: bool = False,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.horizon_steps = horizon_steps
        self.cond_dim = cond_dim
        self.time_dim = time_dim
        self.time_embedding = nn.Sequential(
            SinusoidalPosEmb(time_dim),
            nn.Linear(time_dim, time_dim * 2),
            nn.Mish(),
            nn.Linear(time_dim * 2, time_dim),
        )
        self.step_size_conditioned = step_size_conditioned
        self.step_embedding: nn.Module | None = None
        if step_size_conditioned:
            self.step_embedding = nn.Sequential(
                SinusoidalPosEmb(time_dim),
                nn.Linear(time_dim, time_dim * 2),
                nn.Mish(),
                nn.Linear(time_dim * 2, time_dim),
            )
        if cond_mlp_dims:
            self.cond_mlp: nn.Module | None = MLP(
                [cond_dim, *cond_mlp_dims], activation_type=activation_type, out_activation_type="Identity"
            )
            cond_out = int(cond_mlp_dims[-1])
        else:
            self.cond_mlp = None
            cond_out = cond_dim
        act_flat = action_dim * horizon_steps
        dims = [act_flat + time_dim + cond_out, *mlp_dims, act_flat]
        if residual_style:
            self.mlp_mean: MLP | ResidualMLP = ResidualMLP(
                dims,
                activation_type=activation_type,
                out_activation_type=out_activation_type,
                use_layernorm=use_layernorm,
            )
        else:
            self.mlp_mean = MLP(
                dims,
                activation_type=activation_type,
                out_activation_type=out_activation_type,
                use_layernorm=use_layernorm,
            )

    def prepare_steps(self, cond: dict[str, Tensor], steps: Tensor) -> tuple[Tensor, Tensor, Tensor, nn.Module]:
        """What one reverse process of `len(steps)` steps shares, for `forward_step`.

        The first layer acts on ``[x, time_emb(t), state]``; its state term (with the bias) is the same at every
        step and its time term the same for every row, so both are computed once: the same sums as `forward`,
        without the per-step time MLP, concatenation and state columns.

        Args:
            cond: dict with ``state`` ``(B, To, Do)``.
            steps: ``(K,)`` integer denoising index of each step.

        Returns:
            (x weight ``(h, Ta * Da)``, state term ``(B, h)``, time term ``(K, h)``, the layers after the first).
        """
        b = cond["state"].shape[0]
        state = cond["state"].reshape(b, -1)
        if self.cond_mlp is not None:
            state = self.cond_mlp(state)
        first = cast(nn.Linear, self.mlp_mean.layers[0])  # both MLPs start with a Linear layer
        w_x, w_t, w_s = first.weight.split([self.action_dim * self.horizon_steps, self.time_dim, state.shape[1]], 1)
        rest = self.mlp_mean.layers[1:]
        return w_x, F.linear(state, w_s, first.bias), F.linear(self.embed_time(steps), w_t), rest

    def embed_time(self, time: Tensor) -> Tensor:
        """``(N,)`` times (or ``(N, 2)`` rows (t, d) when ``step_size_conditioned``) -> ``(N, time_dim)``."""
        if self.step_embedding is None:
            return self.time_embedding(time)
        if time.dim() != 2 or time.shape[1] != 2:
            raise ValueError(f"a step-size-conditioned network takes (N, 2) rows (t, d), got {tuple(time.shape)}")
        return self.time_embedding(time[:, 0]) + self.step_embedding(time[:, 1])

    def forward_step(self, x: Tensor, i: int, context: tuple[Tensor, Tensor, Tensor, nn.Module]) -> Tensor:
        """`forward(x, steps[i], cond)` from `prepare_steps(cond, steps)`. x: ``(B, Ta, Da)``; returns the same."""
        w_x, state_term, time_term, rest = context
        b = x.shape[0]
        h = torch.addmm(state_term + time_term[i], x.reshape(b, -1), w_x.t())
        return rest(h).view(b, self.horizon_steps, self.action_dim)

    def forward(self, x: Tensor, time: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Predict the denoising target.

        Args:
            x: ``(B, Ta, Da)`` noisy action chunk.
            time: ``(B,)`` denoising index (diffusion) or scaled flow time; ``(B, 2)`` (t, d) when
                ``step_size_conditioned``.
            cond: dict with ``state`` ``(B, To, Do)``.

        Returns:
            ``(B, Ta, Da)``.
        """
        b = x.shape[0]
        state = cond["state"].reshape(b, -1)
        if self.cond_mlp is not None:
            state = self.cond_mlp(state)
        h = torch.cat((x.reshape(b, -1), self.embed_time(time), state), dim=-1)
        return self.mlp_mean(h).view(b, self.horizon_steps, self.action_dim)
