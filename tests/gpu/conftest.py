"""Fixtures of the CPU-against-CUDA tests: TF32 off, and random numbers drawn alike on every device."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """float32 matrix products and convolutions in full float32 on the GPU (TF32 keeps only 10 mantissa bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def drawn_on_host(draw: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`draw(*args, device=d, **kw)` (torch.rand, randn, randint, randperm) drawn on the CPU, then moved to d."""

    def wrapped(*args, device=None, **kwargs) -> Tensor:
        out = draw(*args, **kwargs)
        return out if device is None else out.to(device)

    return wrapped


def like_drawn_on_host(draw: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`torch.rand_like` / `randn_like` from `draw` (torch.rand / randn) on the CPU, moved to the input's device."""

    def wrapped(x: Tensor, *, dtype=None, **_) -> Tensor:
        return draw(x.shape, dtype=dtype or x.dtype).to(x.device)

    return wrapped


@pytest.fixture
def host_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `torch.rand/randn/randint/randperm/multinomial` call (and `rand_like/randn_like`) draws on the CPU
    generator, the result moved to the device asked for: seeded alike, a CPU run and a CUDA run see the same noise,
    minibatch permutations and mixture-mode picks."""
    monkeypatch.setattr(torch, "rand_like", like_drawn_on_host(torch.rand))
    monkeypatch.setattr(torch, "randn_like", like_drawn_on_host(torch.randn))
    for name in ("rand", "randn", "randint", "randperm"):
        monkeypatch.setattr(torch, name, drawn_on_host(getattr(torch, name)))
    multinomial = torch.multinomial

    def multinomial_on_host(probs: Tensor, *args, **kwargs) -> Tensor:
        return multinomial(probs.cpu(), *args, **kwargs).to(probs.device)

    monkeypatch.setattr(torch, "multinomial", multinomial_on_host)
