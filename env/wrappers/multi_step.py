"""Action chunking with observation history (DPPO's `multi_step` wrapper).

See docs/algorithms.md#action-chunking.

One `step(chunk)` executes the first `n_action_steps` actions of a chunk, stopping early when the episode ends,
and returns the last `n_obs_steps` observations stacked oldest first. Differences from DPPO, on purpose:

* A pure time limit (docs/algorithms.md#d4-time-limits) is reported as `truncated=True, terminated=False`, never both
  (DPPO's gym path reported terminated=True at gym's TimeLimit, which makes PPO treat a time-out as a terminal state).
  When an episode terminates on the very step the time limit is reached, only `terminated` is set.
* This wrapper never resets by itself: the vector env resets finished sub-envs in the same step (gymnasium's
  SAME_STEP autoreset) and keeps the finished episode's last observation as `final_obs`. `reset_within_step` is
  accepted for config compatibility and has no other effect.
* Episode statistics (return, length, success) are tracked here and reported in the info of the step that ends
  the episode, so the vector env can report them per sub-env.

When the wrapper directly below is a task wrapper (`NormalizedTask`), the two are fused for speed: the chunk is
unnormalised in one operation, the raw env is stepped directly, and only the observations that are returned get
normalised. The outputs are identical to stepping through the task wrapper.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.registry import EnvConfigError, register_wrapper
from env.wrappers.normalization import NormalizedTask

log = logging.getLogger(__name__)

_AGGREGATORS = ("sum", "mean", "max")


def _stacked_box(space: spaces.Box, n: int) -> spaces.Box:
    low = np.repeat(space.low[None], n, axis=0)
    high = np.repeat(space.high[None], n, axis=0)
    return spaces.Box(low, high, dtype=space.dtype)


@register_wrapper("multi_step", role="chunk")
class MultiStep(gym.Wrapper):
    """Execute action chunks and stack observation histories.

    Observation: {"state": (To, Do) float32[, "rgb": (To_img, C, H, W) uint8]}, oldest first. Right after a reset
    every history slot holds the reset observation (padding by repetition, like the dataset's windows).
    Action: a chunk (Te, Da) in [-1, 1] (a longer chunk (Ta >= Te, Da) is cut to its first Te rows; a 1-D action is
    taken as Te = 1).

    Info of every step: `success` (bool, the task was solved on some executed step), `chunk_steps` (int, env steps
    executed). On the step that ends an episode also `episode_return` (float, sum of raw rewards),
    `episode_length` (int, env steps) and `episode_success` (bool, solved at some step of the episode); and with
    `pass_full_observations`, `full_state` (Te, Do): the state after each executed step, the last one repeated
    when the chunk stopped early.

    Args:
        env: env with a Dict observation containing "state" (Do,) and optionally "rgb" (C, H, W).
        n_obs_steps: To, observations returned.
        n_action_steps: Te, actions executed per chunk.
        max_episode_steps: time limit in env steps (truncation); None: rely on the inner env's limit.
        reward_agg_method: how the chunk's rewards combine: "sum" (the contract, default), "mean" or "max".
        reset_within_step: accepted for DPPO configs; resets always happen in the vector env's step.
        pass_full_observations: add `full_state` to the info.
        n_image_obs_steps: To_img <= To, images returned (None: To).
    """

    def __init__(
        self,
        env: gym.Env,
        n_obs_steps: int = 1,
        n_action_steps: int = 1,
        max_episode_steps: int | None = None,
        reward_agg_method: str = "sum",
        reset_within_step: bool = True,
        pass_full_observations: bool = False,
        n_image_obs_steps: int | None = None,
    ) -> None:
        super().__init__(env)
        if int(n_obs_steps) < 1 or int(n_action_steps) < 1:
            raise EnvConfigError(
                f"multi_step: n_obs_steps and n_action_steps must be >= 1, got {n_obs_steps}, {n_action_steps}"
            )
        if reward_agg_method not in _AGGREGATORS:
            raise EnvConfigError(
                f"multi_step.reward_agg_method: '{reward_agg_method}' unknown; use one of {sorted(_AGGREGATORS)}"
            )
        if max_episode_steps is not None and int(max_episode_steps) < 1:
            raise EnvConfigError(f"multi_step.max_episode_steps must be >= 1 or null, got {max_episode_steps}")
        obs_space = env.observation_space
        if not isinstance(obs_space, spaces.Dict) or "state" not in obs_space.spaces:
            raise EnvConfigError(
                "multi_step must come after a task wrapper that produces {'state': ...} observations "
                f"(got observation space {obs_space})"
            )
        self.n_obs_steps = int(n_obs_steps)
        self.n_action_steps = int(n_action_steps)
        self.n_image_obs_steps = self.n_obs_steps if n_image_obs_steps is None else int(n_image_obs_steps)
        if not 1 <= self.n_image_obs_steps <= self.n_obs_steps:
            raise EnvConfigError(
                f"multi_step.n_image_obs_steps must be in [1, n_obs_steps={self.n_obs_steps}], got {n_image_obs_steps}"
            )
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.reward_agg_method = reward_agg_method
        self.reset_within_step = bool(reset_within_step)
        self.pass_full_observations = bool(pass_full_observations)
        self._has_rgb = "rgb" in obs_space.spaces

        stacked: dict[str, spaces.Space] = {
            "state": _stacked_box(cast(spaces.Box, obs_space["state"]), self.n_obs_steps)
        }
        if self._has_rgb:
            stacked["rgb"] = _stacked_box(cast(spaces.Box, obs_space["rgb"]), self.n_image_obs_steps)
        self.observation_space = spaces.Dict(stacked)
        action_dim = cast(spaces.Box, env.action_space).shape[0]
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.n_action_steps, action_dim), dtype=np.float32)

        # Fused fast path over a task wrapper (see the module docstring); history entries are [raw obs, obs].
        self._task = env if isinstance(env, NormalizedTask) else None
        self._inner = self._task.env if self._task is not None else env
        self._history: deque[list[Any]] = deque(maxlen=self.n_obs_steps)
        self._elapsed = 0
        self._episode_return = 0.0
        self._episode_success = False

    def _entry(self, raw_obs: Any) -> list[Any]:
        return [raw_obs, None] if self._task is not None else [raw_obs, raw_obs]

    def _converted(self, entry: list[Any]) -> dict[str, np.ndarray]:
        if entry[1] is None:
            assert self._task is not None  # only entries made over a task wrapper start unconverted
            entry[1] = self._task.observation(entry[0])
        return entry[1]

    def _stack(self) -> dict[str, np.ndarray]:
        history = self._history
        if self.n_obs_steps == 1:  # fast path (the common To = 1): a view, copied by the vector env
            return {k: v[None] for k, v in self._converted(history[0]).items()}
        obs = [self._converted(e) for e in history]
        out = {"state": np.stack([o["state"] for o in obs])}
        if self._has_rgb:
            out["rgb"] = np.stack([o["rgb"] for o in obs[-self.n_image_obs_steps :]])
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset the inner env; every history slot holds the reset observation. Returns (obs, {})."""
        raw_obs, _ = self._inner.reset(seed=seed, options=options)
        entry = self._entry(raw_obs)
        self._history.clear()
        self._history.extend([entry] * self.n_obs_steps)
        self._elapsed = 0
        self._episode_return = 0.0
        self._episode_success = False
        return self._stack(), {}

    def step(self, action: np.ndarray):
        """Execute up to Te actions of the chunk (Te, Da); see the class docstring for the outputs."""
        chunk = np.asarray(action)
        if chunk.ndim == 1:
            chunk = chunk[None]
        chunk = chunk[: self.n_action_steps]
        if self._task is not None:
            chunk = self._task.actions_to_env(chunk)  # the whole chunk at once
        total, best, n = 0.0, -np.inf, 0
        full_state: list[np.ndarray] = []
        terminated = truncated = success = False
        limit = self.max_episode_steps
        fused = self._task is not None
        inner_step, remember = self._inner.step, self._history.append  # hot loop: local lookups
        elapsed = self._elapsed
        for a in chunk:
            obs, reward, term, trunc, info = inner_step(a)
            elapsed += 1
            entry = [obs, None] if fused else [obs, obs]
            remember(entry)
            r = float(reward)
            total += r
            if r > best:
                best = r
            n += 1
            if self.pass_full_observations:
                full_state.append(self._converted(entry)["state"])
            if not success and info.get("success", False):
                success = True
            if term:
                # Deliberate difference from DPPO (docs/algorithms.md#d4-time-limits): a time limit is a truncation
                # only, never a termination, and a termination on the last allowed step is reported as a termination
                # only.
                terminated = True
                break
            if trunc or (limit is not None and elapsed >= limit):
                truncated = True
                break
        self._elapsed = elapsed
        self._episode_return += total
        self._episode_success = self._episode_success or success
        info_out: dict[str, Any] = {"success": success, "chunk_steps": n}
        if self.pass_full_observations:
            full_state += [full_state[-1]] * (self.n_action_steps - len(full_state))
            info_out["full_state"] = np.stack(full_state)
        if terminated or truncated:
            info_out["episode_return"] = self._episode_return
            info_out["episode_length"] = self._elapsed
            info_out["episode_success"] = self._episode_success
        if n == 0:
            reward_out = 0.0
        elif self.reward_agg_method == "sum":
            reward_out = total
        elif self.reward_agg_method == "mean":
            reward_out = total / n
        else:
            reward_out = best
        return self._stack(), reward_out, terminated, truncated, info_out
