"""Shortcut flow policy: a rectified flow whose network also sees the Euler step size d, trained so that one step
of size 2d matches two steps of size d; few-step (even one-step) sampling is then accurate
(docs/algorithms.md#shortcut-flow-policies).

Pretraining loss on a batch of B chunks, with z ~ N(0, I) and x_t = t a + (1 - t) z:

* flow-matching rows (all but the first floor(f B), f = ``self_consistency_fraction``): t from ``time_sampling``,
  d = 0, target a - z;
* self-consistency rows: a level j ~ U{0..L-1} with L = log2(``max_denoising_steps``), d = 2^-j, t uniform on the
  grid {0, d, ..., 1 - d}; with no gradient, u1 = v(x_t, t, d/2), x' = x_t + (d/2) u1, u2 = v(x', t + d/2, d/2);
  target (u1 + u2) / 2 for v(x_t, t, d). The finest bootstrap step is d/2 = 1 / max_denoising_steps.

Sampling, fine-tuning and evaluation are the FlowModel's with the network also given d = 1/K at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model.flow.flow import FlowKeys, FlowModel


@dataclass
class ShortcutKeys(FlowKeys):
    """FlowKeys plus the self-consistency targets' keys (`schema/policy_shortcut` holds these two, which
    `cfg/common/policy/shortcut_mlp*.yaml` adds to the flow policy's block).

    Attributes:
        self_consistency_fraction: the share f of each batch trained on the self-consistency target, in [0, 1).
        max_denoising_steps: M, a power of two >= 2: the finest step size the targets bootstrap from is 1/M.
    """

    self_consistency_fraction: float = 0.25
    max_denoising_steps: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.self_consistency_fraction < 1.0:
            raise ValueError(f"self_consistency_fraction must be in [0, 1), got {self.self_consistency_fraction}")
        m = self.max_denoising_steps
        if m < 2 or math.log2(m) != int(math.log2(m)):
            raise ValueError(f"max_denoising_steps must be a power of two >= 2, got {m}")


class ShortcutFlowModel(FlowModel):
    """A FlowModel whose network takes ``time`` rows (t * time_scale, d * time_scale) (e.g. DiffusionMLP with
    ``step_size_conditioned: true``); its keys are `ShortcutKeys` (FlowModel's plus the self-consistency ones)."""

    Keys = ShortcutKeys

    def __init__(self, network: nn.Module, *args: Any, **keys: Any) -> None:
        super().__init__(network, *args, **keys)
        assert isinstance(self.keys, ShortcutKeys)
        self.self_consistency_fraction = float(self.keys.self_consistency_fraction)
        self.max_denoising_steps = int(self.keys.max_denoising_steps)
        self.levels = int(math.log2(self.max_denoising_steps))

    def step_times(self, device: torch.device) -> Tensor:
        """``(K, 2)`` network time input of Euler step i: (i / K, 1 / K) * time_scale."""
        k = self.denoising_steps
        t = torch.arange(k, device=device, dtype=torch.float32) / k
        return torch.stack((t, torch.full_like(t, 1.0 / k)), dim=1) * self.time_scale

    def _velocity(self, net: nn.Module, x: Tensor, t: Tensor, d: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """v(x, t, d) for rows of t and d ``(B,)`` in flow time (scaled here)."""
        return net(x, torch.stack((t, d), dim=1) * self.time_scale, cond)

    def self_consistency_target(
        self, net: nn.Module, x: Tensor, t: Tensor, d: Tensor, cond: dict[str, Tensor]
    ) -> Tensor:
        """(u1 + u2) / 2 with u1 = v(x, t, d/2), u2 = v(x + (d/2) u1, t + d/2, d/2), without gradient."""
        half = d / 2
        with torch.no_grad():
            u1 = self._velocity(net, x, t, half, cond)
            u2 = self._velocity(net, x + half.view(-1, 1, 1) * u1, t + half, half, cond)
        return (u1 + u2) / 2

    def loss_per_sample(self, actions: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Flow-matching rows and self-consistency rows (module docstring); mean squared error per row ``(B,)``."""
        b, device = actions.shape[0], actions.device
        net = self.trainable_network
        z = torch.randn_like(actions)
        n_sc = int(self.self_consistency_fraction * b)
        t = self.sample_time(b, device)
        d = torch.zeros(b, device=device)
        if n_sc > 0:
            level = torch.randint(0, self.levels, (n_sc,), device=device)
            d_sc = torch.pow(2.0, -level.float())
            t[:n_sc] = torch.floor(torch.rand(n_sc, device=device) / d_sc) * d_sc  # grid {0, d, ..., 1 - d}
            d[:n_sc] = d_sc
        x_t = self.interpolate(actions, z, t)
        target = actions - z
        if n_sc > 0:
            sc_cond = {key: v[:n_sc] for key, v in cond.items()}
            target = torch.cat(
                (self.self_consistency_target(net, x_t[:n_sc], t[:n_sc], d[:n_sc], sc_cond), target[n_sc:])
            )
        pred = self._velocity(net, x_t, t, d, cond)
        return (pred - target).square().mean(dim=(1, 2))


__all__ = ["ShortcutFlowModel"]
