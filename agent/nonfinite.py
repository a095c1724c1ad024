"""What a training loop does when a loss or a weight stops being finite (`train.nan_policy`).

`stop` (the default): the loop ends with one line naming the step, the last good checkpoint and the likely causes
(`DivergedError`, exit code 2 on the command line); nothing non-finite is saved (`save_checkpoint` refuses it as
well). `skip_batch`: a batch whose loss is not finite makes no update (pretraining; the check then costs a host sync
per batch), and the run stops only once the weights themselves are not finite.

Pretraining checks the losses without a host sync per batch under `stop`: the epoch's loss sum, which it reads
anyway, is finite exactly when every batch's loss was (or their sum overflowed, a divergence as well).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from agent.checkpoint import latest_checkpoint
from agent.config import require
from agent.errors import UserError

NAN_POLICIES = ("stop", "skip_batch")


class DivergedError(UserError):
    """A loss or weight became NaN or inf; the message names the step, the last good checkpoint and the fix."""


def check_nan_policy(value: object) -> str:
    """`train.nan_policy` (null = stop), or a `ConfigError` naming the choices."""
    policy = "stop" if value is None else value
    require(policy in NAN_POLICIES, f"train.nan_policy must be one of {', '.join(NAN_POLICIES)}, got {value!r}")
    return str(policy)


def diverged(what: str, where: str, logdir: Path, lr_keys: str, data: str = "the data") -> DivergedError:
    """The one-line error for a divergence.

    Args:
        what: what is not finite (e.g. "loss", "weights model.net.0.weight").
        where: the step (e.g. "epoch 3 (batches 20-29)", "iteration 5").
        logdir: the run folder (its newest checkpoint is the last good one: none non-finite is written).
        lr_keys: the learning-rate settings, with their values, to name among the causes.
        data: what else may hold NaN/inf (the data; in fine-tuning also the rewards).
    """
    last = latest_checkpoint(logdir)
    return DivergedError(
        f"training diverged: non-finite {what} at {where}; last good checkpoint: "
        f"{last if last is not None else 'none (nothing was saved)'}; likely causes: a learning rate too high "
        f"({lr_keys}) or NaN/inf in {data}; lower the learning rate or check the data "
        "(train.nan_policy=skip_batch skips such batches)"
    )


def non_finite_losses(metrics: Mapping[str, object]) -> list[str]:
    """Keys of `metrics` that name a loss (`*loss*`) and hold a number that is NaN or inf."""
    return [
        k
        for k, v in metrics.items()
        if "loss" in k and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)
    ]


@torch.no_grad()
def non_finite_parameters(modules: Iterable[tuple[str, nn.Module]]) -> list[str]:
    """Names `<module>.<parameter>` of floating-point parameters or buffers that hold NaN or inf.

    One host sync for all tensors of a module (their flags are reduced on the device first).
    """
    bad: list[str] = []
    for prefix, module in modules:
        named = [(n, t) for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
        if not named:
            continue
        flags = torch.stack([torch.isfinite(t).all() for _, t in named])
        if bool(flags.all()):
            continue
        bad.extend(f"{prefix}.{n}" for (n, _), ok in zip(named, flags.tolist()) if not ok)
    return bad
