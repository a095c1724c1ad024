"""Timing for the benchmarks on a shared CPU whose speed drifts from minute to minute: the calls being compared
are timed in interleaved rounds and compared by the median of their per-round ratios."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall-clock and process CPU seconds of a block. On a CPU shared with other jobs, CPU seconds of a
    single-threaded run approximate the wall time the same work takes on an idle core."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def interleaved_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device
) -> dict[str, np.ndarray]:
    """(wall, cpu) seconds ``(repeats, 2)`` of each `fns[name]()` per round, after one warm-up call each; within a
    round the calls are interleaved (in reverse order every other round), so a drift of the machine's speed
    affects them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for i in range(repeats):
        for name in list(fns)[:: -1 if i % 2 else 1]:
            sync(device)
            with Clock() as c:
                fns[name]()
                sync(device)
            times[name].append((c.wall, c.cpu))
    return {name: np.array(t) for name, t in times.items()}


def paired(a: np.ndarray, b: np.ndarray) -> float:
    """Median over rounds of ``a[i] / b[i]``."""
    return float(np.median(np.asarray(a) / np.asarray(b)))
