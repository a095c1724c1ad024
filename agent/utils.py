"""Small shared helpers: seeding and device resolution."""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import torch

from agent.errors import ConfigError


def set_seed(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """Turn a config `device` value into a `torch.device`.

    Args:
        name: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ConfigError: CUDA was asked for but is not available, or the index does not exist.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r} is not a device name; use cpu, cuda, cuda:0 or auto") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} was requested but CUDA is not available here; pass device=cpu")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu" and device.type != "mps":
        raise ConfigError(f"device={name!r} is not supported; use cpu, cuda, cuda:0 or auto")
    return device


def rng_state() -> dict:
    """RNG states of python, numpy and torch, for checkpoints that must resume bit-for-bit.

    Plain values and tensors only (they load with `torch.load(weights_only=True)`): python's state is a tuple of
    ints; numpy's legacy state is ("MT19937", key (624,) uint32 as a list of ints, pos, has_gauss, cached_gaussian);
    torch's is a uint8 tensor.
    """
    # The global RandomState is MT19937, so the (default) legacy form is a tuple; numpy's stubs pick the dict overload.
    legacy = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    name, key, pos, has_gauss, cached = legacy
    state = {
        "python": random.getstate(),
        "numpy": (str(name), key.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (numpy's key as a list, a tensor or an array; tensors on any device)."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, cached = state["numpy"]
    key = key.cpu().numpy() if isinstance(key, torch.Tensor) else key
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
