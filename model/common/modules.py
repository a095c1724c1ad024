"""Small shared modules: activation lookup and the sinusoidal timestep embedding."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "ELU": nn.ELU,
    "GELU": nn.GELU,
    "Tanh": nn.Tanh,
    "Mish": nn.Mish,
    "Identity": nn.Identity,
    "Softplus": nn.Softplus,
}


def get_activation(name: str) -> nn.Module:
    """Return a fresh activation module by name.

    Args:
        name: one of ReLU, ELU, GELU, Tanh, Mish, Identity, Softplus. Matching is case-insensitive so that
            configs written as ``relu`` or ``gelu`` also work.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    cls = _ACTIVATIONS.get(name)
    if cls is None:
        lowered = {k.lower(): v for k, v in _ACTIVATIONS.items()}
        cls = lowered.get(str(name).lower())
    if cls is None:
        raise ValueError(f"Unknown activation {name!r}; known: {', '.join(_ACTIVATIONS)}")
    return cls()


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of integer denoising timesteps (sines first, raw integer t).

    With h = dim / 2 the frequencies are ``w_k = exp(-k ln(10000) / (h - 1))`` for k = 0..h-1 and the output
    is ``[sin(t w), cos(t w)]``.

    Args:
        dim: embedding width; must be even and >= 4 (h - 1 must be positive).
    """

    freqs: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"SinusoidalPosEmb dim must be even and >= 4, got {dim}")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        # Non-persistent buffer: follows .to(device) but stays out of checkpoints (a pure function of dim).
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """Embed timesteps.

        Args:
            t: ``(B,)`` integer (or float) timesteps.

        Returns:
            ``(B, dim)`` float32 embedding.
        """
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


def encode_cond(net: nn.Module, cond: dict[str, Tensor]) -> dict[str, Tensor]:
    """Run a denoiser's optional ``encode_cond`` (e.g. an image encoder) once, so that the K calls of a
    denoising or integration loop (and the K' transitions of a chain) reuse its output instead of re-encoding every
    time."""
    encode = getattr(net, "encode_cond", None)
    return cond if encode is None else encode(cond)


def denoise_fn(net: nn.Module, cond: dict[str, Tensor], steps: Tensor) -> Callable[[Tensor, int], Tensor]:
    """`(x, i) -> net(x, steps[i], cond)` for the i-th step of one reverse process (diffusion) or Euler integration
    (flow), with the work that does not change along the chain done once: a network's `prepare_steps(cond, steps)`
    (the state and time terms of the diffusion MLP's first layer) or its `encode_cond` (an image encoder).

    Args:
        net: the denoiser or velocity network.
        cond: observation dict with batch size B.
        steps: ``(N,)`` time of each step, or ``(N, 2)`` (time, step size) for a step-size-conditioned network.
    """
    b = cond["state"].shape[0]
    prepare = getattr(net, "prepare_steps", None)
    if prepare is not None:
        context = prepare(cond, steps)
        stepper: Any = net  # duck-typed: a network with `prepare_steps` also has `forward_step`
        return lambda x, i: stepper.forward_step(x, i, context)
    encoded = encode_cond(net, cond)
    return lambda x, i: net(x, steps[i].expand(b, *steps.shape[1:]), encoded)
