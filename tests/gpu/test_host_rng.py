"""The `host_rng` fixture of the CPU-against-CUDA tests: the patched draws are the CPU generator's own numbers,
in the dtype asked for, on the device asked for (checked on the `meta` device, which needs no GPU)."""

from __future__ import annotations

import torch

PROBS = [[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]]
ORIGINAL = {name: getattr(torch, name) for name in ("rand", "randn", "randint", "randperm", "multinomial")}


def draws(device: str) -> list[torch.Tensor]:
    """One draw of each patched kind on `device`, from seed 0 (the mixture-mode pick on the CPU only: a meta
    tensor cannot be read back to the host)."""
    torch.manual_seed(0)
    out = [
        torch.randn(2, 3, device=device),
        torch.rand(4, device=device, dtype=torch.float64),
        torch.randint(0, 9, (5,), device=device),
        torch.randperm(7, device=device),
        torch.randn_like(torch.zeros(2, 2, dtype=torch.float64, device=device)),
        torch.rand_like(torch.zeros(3, device=device)),
    ]
    if device == "cpu":
        out.append(torch.distributions.Categorical(probs=torch.tensor(PROBS)).sample((4,)))
    return out


def test_host_rng_gives_the_cpu_generators_numbers(host_rng: None) -> None:
    assert all(getattr(torch, name) is not fn for name, fn in ORIGINAL.items())
    got = draws("cpu")
    torch.manual_seed(0)
    want = [
        ORIGINAL["randn"](2, 3),
        ORIGINAL["rand"](4, dtype=torch.float64),
        ORIGINAL["randint"](0, 9, (5,)),
        ORIGINAL["randperm"](7),
        ORIGINAL["randn"](2, 2, dtype=torch.float64),
        ORIGINAL["rand"](3),
        ORIGINAL["multinomial"](torch.tensor(PROBS), 4, True).T,
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_host_rng_moves_draws_to_the_device_asked_for(host_rng: None) -> None:
    shapes = [(2, 3), (4,), (5,), (7,), (2, 2), (3,)]
    got = draws("meta")
    assert len(got) == len(shapes)
    for x, shape in zip(got, shapes):
        assert x.device.type == "meta" and tuple(x.shape) == shape
