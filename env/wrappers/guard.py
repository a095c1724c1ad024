"""Outermost per-sub-env wrapper: errors raised inside a sub-env name the env and its index."""

from __future__ import annotations

from typing import Any

import gymnasium as gym


class SubEnvError(RuntimeError):
    """An exception raised inside a sub-environment, re-raised with the env name and index in the message."""


class SubEnvGuard(gym.Wrapper):
    """Re-raise exceptions from `reset`/`step` as SubEnvError("<label>: <Type>: <message>").

    In an AsyncVectorEnv the worker's exception crosses the process boundary as its type and message only, so
    without this label the main process could not tell which sub-env failed.

    Args:
        env: the fully wrapped sub-env.
        label: e.g. "hopper-v2 sub-env 3".
    """

    def __init__(self, env: gym.Env, label: str) -> None:
        super().__init__(env)
        self.label = label

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as e:
            raise SubEnvError(f"{self.label}: reset failed: {type(e).__name__}: {e}") from e

    def step(self, action: Any):
        try:
            return self.env.step(action)
        except Exception as e:
            raise SubEnvError(f"{self.label}: step failed: {type(e).__name__}: {e}") from e
