"""Optimisers shared by pretraining and every fine-tuning algorithm: AdamW with a cosine schedule, and target
networks (Polyak averaging, frozen copies). The settings come from the typed `train` blocks (agent/schemas.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from agent.schedulers import CosineWarmupRestarts


def make_adamw(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fastest implementation available for the parameters' device (fused on CPU and CUDA)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def make_optimizer(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, scheduler: Mapping[str, Any] | None
) -> tuple[torch.optim.Optimizer, CosineWarmupRestarts]:
    """AdamW and its per-iteration cosine schedule (`scheduler` None: constant lr).

    Args:
        params: parameters to optimise.
        lr: the (maximum) learning rate.
        weight_decay: AdamW weight decay.
        scheduler: DPPO's `*_lr_scheduler` block {first_cycle_steps, warmup_steps, min_lr}, or None.
    """
    opt = make_adamw(params, float(lr), float(weight_decay))
    kwargs = dict(scheduler) if scheduler else {"first_cycle_steps": 1, "warmup_steps": 0, "min_lr": lr}
    return opt, CosineWarmupRestarts(opt, **kwargs, max_lr=float(lr))


OptimSettings = tuple[float, float, "dict[str, Any] | None"]


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """theta' <- (1 - tau) theta' + tau theta for every parameter.

    Buffers are left alone: here they are the diffusion schedule's constants (no network has trained buffers such as
    batch-norm statistics), and copying them every gradient step would only cost time.
    """
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off (target networks)."""
    return copy.deepcopy(module).requires_grad_(False)


__all__ = [
    "OptimSettings",
    "frozen_copy",
    "make_adamw",
    "make_optimizer",
    "polyak_update",
]
