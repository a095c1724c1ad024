"""The vector env the agents talk to: action checks, worker watchdog, and the info contract of env/README.md.

`ChunkedVectorEnv` wraps a gymnasium `SyncVectorEnv` / `AsyncVectorEnv` (SAME_STEP autoreset) whose sub-envs end
in `MultiStep`. It

* validates the action chunk (shape, NaN/inf, range) and clips it to [-1, 1] or rejects it, naming the env;
* on async envs, waits at most `step_timeout` seconds for the workers and reports which sub-env died or hung
  (instead of blocking forever);
* turns gymnasium's masked info arrays into plain (E,) arrays: `episode_return`, `episode_length`,
  `episode_success` (valid where terminated | truncated), `success`, `chunk_steps`, and `final_obs` (a dict like
  the observation: the last observation of the finished episode where one ended, else equal to `obs`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import warnings
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv, VectorEnv, VectorWrapper

log = logging.getLogger(__name__)


class EnvWorkerError(RuntimeError):
    """An async sub-env worker died or did not answer in time."""


def _describe_exit(code: int | None, pid: int | None = None) -> str:
    """How a worker process ended (`code`: its exit code, None while it lives; `pid`: to tell a stopped one)."""
    if code is None:
        if pid is not None and _is_stopped(pid):
            return "is stopped (SIGSTOP or a debugger; `kill -CONT` resumes it)"
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _is_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (state T/t in /proc; False where /proc does not exist)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def kill_workers(processes: list[multiprocessing.Process], wait: float = 5.0) -> None:
    """SIGKILL every live worker and reap it: unlike SIGTERM, this also ends a stopped or stuck one at once."""
    for process in processes:
        if process.pid is not None and process.is_alive():
            process.kill()
    for process in processes:
        if process.pid is not None:
            process.join(wait)


class ChunkedVectorEnv(VectorWrapper):
    """Vector env over chunked sub-envs, conforming to the contract in env/README.md.

    Observations: dict of numpy arrays, `state` float32 (E, To, Do) [, `rgb` uint8 (E, To_img, C, H, W)].
    Actions: (E, Te, Da) normalised to [-1, 1] (a longer chunk (E, Ta, Da), Ta > Te, is cut to its first Te
    steps; with Te = 1 an (E, Da) array is accepted).

    Args:
        env: SyncVectorEnv or AsyncVectorEnv with autoreset_mode SAME_STEP over MultiStep sub-envs.
        name: env name used in error messages.
        seed: seed of the first `reset()` that is called without one (sub-env i gets seed + i).
        action_clip: clip actions to [-1, 1]; if False, actions beyond [-1 - tol, 1 + tol] raise ValueError.
        action_tolerance: tol above.
        step_timeout: seconds to wait for async workers in `step` (`reset` waits 4x as long); None: forever.
    """

    def __init__(
        self,
        env: VectorEnv,
        *,
        name: str,
        seed: int | None = None,
        action_clip: bool = True,
        action_tolerance: float = 1e-3,
        step_timeout: float | None = 300.0,
    ) -> None:
        super().__init__(env)
        self.name = name
        self._pending_seed = seed
        self.action_clip = bool(action_clip)
        self.action_tolerance = float(action_tolerance)
        self.step_timeout = step_timeout
        self.n_envs = env.num_envs
        self.n_action_steps, self.action_dim = cast(spaces.Box, env.single_action_space).shape
        obs_space = cast(spaces.Dict, env.single_observation_space)
        state_shape = cast(spaces.Box, obs_space["state"]).shape
        self.n_obs_steps, self.obs_dim = state_shape
        rgb = cast("spaces.Box | None", obs_space.spaces.get("rgb"))
        self.image_shape: tuple[int, ...] | None = None if rgb is None else tuple(rgb.shape[1:])
        self._is_async = isinstance(env, AsyncVectorEnv)
        if seed is not None:
            self.action_space.seed(seed)

    # ------------------------------------------------------------------ actions
    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate and return the chunk to execute, float32 (E, Te, Da), clipped if `action_clip`.

        Raises:
            ValueError: wrong shape, non-finite values, or (without clipping) values outside [-1, 1] by more than
                the tolerance; the message names the env and the offending sub-envs.
        """
        a = np.asarray(actions, dtype=np.float32)
        E, Te, Da = self.n_envs, self.n_action_steps, self.action_dim
        if a.ndim == 2 and Te == 1 and a.shape == (E, Da):
            a = a[:, None]
        if a.ndim != 3 or a.shape[0] != E or a.shape[1] < Te or a.shape[2] != Da:
            raise ValueError(
                f"{self.name}: actions must have shape (n_envs={E}, act_steps={Te}, action_dim={Da}) "
                f"(a longer horizon is cut to the first {Te} steps), got {tuple(np.shape(actions))}"
            )
        a = a[:, :Te]
        if not np.isfinite(a).all():
            bad = ~np.isfinite(a).all(axis=(1, 2))
            raise ValueError(
                f"{self.name}: non-finite action (NaN or inf) for sub-env(s) {np.flatnonzero(bad).tolist()}"
            )
        if self.action_clip:
            # two ufunc calls into a fresh array: much cheaper than np.clip's Python-level dispatch
            out = np.minimum(a, 1.0)
            return np.maximum(out, -1.0, out=out)
        if np.abs(a).max() > 1.0 + self.action_tolerance:
            excess = np.abs(a).max(axis=(1, 2))
            bad = excess > 1.0 + self.action_tolerance
            raise ValueError(
                f"{self.name}: normalised actions must lie in [-1, 1] (tolerance {self.action_tolerance}); "
                f"sub-env(s) {np.flatnonzero(bad).tolist()} reach |a| = {float(excess.max()):.4g}. "
                "Set env.action_clip: true to clip instead."
            )
        return np.ascontiguousarray(a)

    # ------------------------------------------------------------------ async watchdog
    def _worker_failure(self, stage: str, timeout: float | None, cause: BaseException) -> EnvWorkerError:
        env = cast(AsyncVectorEnv, self.env)  # only async envs have workers
        problems = []
        for i, (proc, pipe) in enumerate(zip(env.processes, env.parent_pipes)):
            if not proc.is_alive():
                problems.append(f"sub-env {i} (pid {proc.pid}) {_describe_exit(proc.exitcode)}")
            elif pipe is None or pipe.closed:
                problems.append(f"sub-env {i} (pid {proc.pid}) lost its pipe")
            elif _is_stopped(cast(int, proc.pid)):  # alive, so started: pid is set
                problems.append(f"sub-env {i} (pid {proc.pid}) {_describe_exit(None, proc.pid)}")
            elif isinstance(cause, multiprocessing.TimeoutError) and not pipe.poll(0):
                problems.append(f"sub-env {i} (pid {proc.pid}) did not answer within {timeout} s")
        detail = "; ".join(problems) or f"{type(cause).__name__}: {cause}"
        # The vector env cannot recover from a lost or stuck worker: stop all of them instead of leaking. SIGKILL
        # first: gymnasium's close sends SIGTERM and then waits, forever for a stopped worker.
        kill_workers(env.processes)
        try:
            with warnings.catch_warnings():  # "close while waiting for a pending call": we know
                warnings.simplefilter("ignore")
                env.close(terminate=True)
        except Exception:  # noqa: BLE001 - best effort cleanup while reporting the real error
            log.debug("closing the broken vector env failed", exc_info=True)
        return EnvWorkerError(f"{self.name}: {stage} failed: {detail}")

    def _call_async(self, stage: str, start: Any, wait: Any, timeout: float | None) -> Any:
        try:
            start()
            return wait(timeout=timeout)
        except (multiprocessing.TimeoutError, EOFError, BrokenPipeError, ConnectionError) as e:
            raise self._worker_failure(stage, timeout, e) from e

    # ------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset all sub-envs. The first call without a seed uses the factory's seed (sub-env i: seed + i).

        Returns:
            obs: dict, `state` (E, To, Do) float32 [, `rgb` (E, To_img, C, H, W) uint8].
            info: {} (nothing per env at reset).
        """
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        if self._is_async:
            async_env = cast(AsyncVectorEnv, self.env)
            timeout = None if self.step_timeout is None else 4 * self.step_timeout
            obs, _ = self._call_async(
                "reset",
                lambda: async_env.reset_async(seed=seed, options=options),
                async_env.reset_wait,
                timeout,
            )
        else:
            obs, _ = cast(SyncVectorEnv, self.env).reset(seed=seed, options=options)
        return {k: v.copy() for k, v in obs.items()}, {}

    def step(self, actions: Any):
        """Execute one chunk per sub-env.

        Args:
            actions: (E, Te, Da) normalised actions.

        Returns:
            obs: dict like `reset`'s; for a finished sub-env, the first observation of its new episode.
            reward: (E,) float64, sum of the executed env steps' rewards.
            terminated: (E,) bool, the episode reached a terminal state.
            truncated: (E,) bool, the episode hit the time limit (never True together with terminated).
            info: dict of (E,) arrays `episode_return` (float64), `episode_length` (int64), `episode_success`
                (bool) [valid where terminated | truncated, 0 elsewhere], `success` (bool, solved during this
                chunk), `chunk_steps` (int64, env steps executed), and `final_obs` (dict like obs).
        """
        a = self.check_actions(actions)
        if self._is_async:
            async_env = cast(AsyncVectorEnv, self.env)
            obs, reward, terminated, truncated, infos = self._call_async(
                "step", lambda: async_env.step_async(a), async_env.step_wait, self.step_timeout
            )
        else:
            obs, reward, terminated, truncated, infos = self.env.step(a)
        # The vector env runs with copy=False (its buffers are reused); one plain copy per key here is cheaper
        # than gymnasium's deepcopy and keeps the returned arrays owned by the caller.
        obs = {k: v.copy() for k, v in obs.items()}
        return obs, reward, terminated, truncated, self._convert_info(obs, infos)

    # ------------------------------------------------------------------ infos
    def _gather(self, infos: Mapping[str, Any], key: str, dtype: Any, final: Mapping[str, Any]) -> np.ndarray:
        out = np.zeros(self.n_envs, dtype=dtype)
        for source in (infos, final):
            if key in source:
                mask = source[f"_{key}"]
                out[mask] = source[key][mask]
        return out

    def _convert_info(self, obs: dict[str, np.ndarray], infos: Mapping[str, Any]) -> dict[str, Any]:
        final = infos.get("final_info")
        out: dict[str, Any]
        if final is None:  # no episode ended: every sub-env reported the per-chunk keys at the top level
            zeros = np.zeros(self.n_envs)
            out = {
                "episode_return": zeros,
                "episode_length": zeros.astype(np.int64),
                "episode_success": zeros.astype(np.bool_),
                "success": infos["success"].astype(np.bool_, copy=False),
                "chunk_steps": infos["chunk_steps"].astype(np.int64, copy=False),
                "final_obs": {k: v.copy() for k, v in obs.items()},
            }
        else:
            out = {
                "episode_return": self._gather(infos, "episode_return", np.float64, final),
                "episode_length": self._gather(infos, "episode_length", np.int64, final),
                "episode_success": self._gather(infos, "episode_success", np.bool_, final),
                "success": self._gather(infos, "success", np.bool_, final),
                "chunk_steps": self._gather(infos, "chunk_steps", np.int64, final),
            }
            final_obs = {k: v.copy() for k, v in obs.items()}
            for i in np.flatnonzero(infos["_final_obs"]):
                for k, v in infos["final_obs"][i].items():
                    final_obs[k][i] = v
            out["final_obs"] = final_obs
        if "full_state" in infos or (final is not None and "full_state" in final):
            full = np.zeros((self.n_envs, self.n_action_steps, self.obs_dim), dtype=np.float32)
            for source in (infos, final or {}):
                if "full_state" in source:
                    mask = source["_full_state"]
                    full[mask] = source["full_state"][mask]
            out["full_state"] = full
        return out
