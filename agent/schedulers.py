"""Learning-rate schedule: cosine annealing with linear warm-up and warm restarts.

See docs/algorithms.md#learning-rate-schedule.
"""

from __future__ import annotations

import logging
import math

import torch

from agent.errors import ConfigError

log = logging.getLogger(__name__)


class CosineWarmupRestarts:
    """Cosine schedule with warm-up that restarts every `first_cycle_steps` steps.

    Stepped once per fine-tuning iteration or pretraining epoch. Right after construction the lr is `min_lr`;
    after the n-th `step()` the cycle position is c = n mod C and

        lr = min + (max - min) * c / W                                  if c < W
        lr = min + (max - min) * (1 + cos(pi * (c - W) / (C - W))) / 2  otherwise

    `max_lr` is the lr the optimizer was built with. When `min_lr == max_lr` the lr is constant.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        first_cycle_steps: int,
        warmup_steps: int = 0,
        min_lr: float = 1e-5,
        max_lr: float | None = None,
    ) -> None:
        if first_cycle_steps < 1:
            raise ConfigError(f"lr_scheduler.first_cycle_steps must be >= 1, got {first_cycle_steps}")
        if warmup_steps < 0:
            raise ConfigError(f"lr_scheduler.warmup_steps must be >= 0, got {warmup_steps}")
        if warmup_steps >= first_cycle_steps:
            # A short run (`train.n_epochs=2` on a config with 100 warm-up epochs) keeps working: the warm-up is
            # shortened to fit the cycle instead of stopping the run.
            log.warning(
                "lr_scheduler.warmup_steps=%d does not fit in first_cycle_steps=%d; using %d warm-up steps",
                warmup_steps,
                first_cycle_steps,
                first_cycle_steps - 1,
            )
            warmup_steps = first_cycle_steps - 1
        self.optimizer = optimizer
        self.first_cycle_steps = int(first_cycle_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_lr = float(min_lr)
        self.max_lr = float(max_lr if max_lr is not None else optimizer.param_groups[0]["lr"])
        self.n_steps = 0
        self._set(self.min_lr)

    def lr_at(self, n: int) -> float:
        """The lr after `n` calls to `step()` (n >= 1; n = 0 is `min_lr`)."""
        if n == 0:
            return self.min_lr
        c = n % self.first_cycle_steps
        span = self.max_lr - self.min_lr
        if c < self.warmup_steps:
            return self.min_lr + span * c / self.warmup_steps
        frac = (c - self.warmup_steps) / (self.first_cycle_steps - self.warmup_steps)
        return self.min_lr + span * (1.0 + math.cos(math.pi * frac)) / 2.0

    def step(self) -> None:
        self.n_steps += 1
        self._set(self.lr_at(self.n_steps))

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"n_steps": self.n_steps}

    def load_state_dict(self, state: dict) -> None:
        self.n_steps = int(state["n_steps"])
        self._set(self.lr_at(self.n_steps))

    def _set(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
