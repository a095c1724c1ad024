"""DPPO's command-line keys that this toolkit spells differently or does not use, translated before Hydra composes.

A DPPO user's override of a key that their config file has keeps working here:

* renamed keys are rewritten: DPPO's fine-tuning configs call the fine-tuned network `model.actor` (here
  `model.network`, the same block for pretraining, fine-tuning and evaluation), and load the pretrained weights
  from `model.network_path` (here `base_policy_path`, which loads a pretraining checkpoint's EMA weights,
  docs/algorithms.md#d9-ema-weights-everywhere);
* keys that have no effect here (rendering during training, D3IL's plotter, devices of sub-objects, which follow
  the run's `device`) are dropped, each named once on stderr with the reason.

Keys this toolkit shares with DPPO (`env.save_video`, `env.use_image_obs`, `robomimic_env_cfg_path`, ...) need no
translation: they are in the configs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

# DPPO key prefix -> this toolkit's
RENAMED: dict[str, str] = {
    "model.actor.": "model.network.",
    "model.network_path": "base_policy_path",
}

# DPPO key (or prefix ending in ".") -> why it has no effect here
IGNORED: dict[str, str] = {
    "train.render.": "no rendering during training here; record evaluation videos with env.save_video=true",
    "render_num": "no rendering during training here; record evaluation videos with env.save_video=true",
    "train.plotter": "D3IL's plotter is not part of this toolkit; plot runs with script/plot/plot_runs.py",
    "model.device": "every module follows the run's `device`",
    "train_dataset.device": "the dataset is kept on the CPU and batches move to the run's `device`",
}


def _key(arg: str) -> tuple[str, str, str]:
    """(prefix of +/++/~, key, rest from '=') of a command-line override."""
    stripped = arg.lstrip("+~")
    prefix = arg[: len(arg) - len(stripped)]
    key, eq, value = stripped.partition("=")
    return prefix, key, eq + value


def _matches(key: str, pattern: str) -> bool:
    return key.startswith(pattern) if pattern.endswith(".") else key == pattern or key.startswith(pattern + ".")


def renamed(key: str) -> str:
    """This toolkit's name of DPPO's `key` (`model.actor.mlp_dims` -> `model.network.mlp_dims`), else `key`."""
    for old, new in RENAMED.items():
        if old.endswith(".") and key.startswith(old):
            return new + key[len(old) :]
        if key == old:
            return new
    return key


def translate_dppo_overrides(argv: Sequence[str], stream: TextIO | None = None) -> list[str]:
    """`argv` with DPPO's renamed keys rewritten and its no-effect keys dropped (each dropped key named once on
    `stream`, default stderr). Options (`--...`, `-m`) and other overrides pass unchanged."""
    out: list[str] = []
    noted: set[str] = set()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        prefix, key, rest = _key(arg)
        ignored = next((p for p in IGNORED if _matches(key, p)), None)
        if ignored is not None:
            if ignored not in noted:
                noted.add(ignored)
                print(f"note: ignoring {key}{rest}: {IGNORED[ignored]}", file=stream or sys.stderr)
            continue
        out.append(f"{prefix}{renamed(key)}{rest}")
    return out


__all__ = ["IGNORED", "RENAMED", "renamed", "translate_dppo_overrides"]
