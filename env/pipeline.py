"""Envs stepped in a worker process, in groups, so that rollouts overlap env stepping with policy sampling.

`PipelinedVectorEnv` builds the sub-envs in one worker process as G `ChunkedVectorEnv` groups (contiguous
slices of the E sub-envs, sync inside the worker). An on-policy rollout sends group 0's chunk, samples group 1's
chunk while the worker steps group 0, and so on (`OnPolicyAgent.collect`): the denoising chain then runs on one
core while the envs run on another, instead of one after the other. `step` (all groups, in order) gives the same
observations, rewards and infos as a plain `ChunkedVectorEnv` over the same sub-envs and seed, so every other
user (evaluation, off-policy agents) sees an ordinary vector env.

Chosen with `env.pipeline: true` (see env/factory.py); suits cheap state-based envs on CPU (gym locomotion,
kitchen, avoid), where one process steps all envs at the raw sync rate.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space

from env.vector import ChunkedVectorEnv, EnvWorkerError, _describe_exit

log = logging.getLogger(__name__)

# `ChunkedVectorEnv` attributes of the INTERFACES contract that do not depend on the number of sub-envs.
_CONTRACT_ATTRIBUTES = ("n_obs_steps", "obs_dim", "n_action_steps", "action_dim", "image_shape")

StepResult = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


def group_slices(n_envs: int, n_groups: int) -> list[slice]:
    """Split E sub-envs into `n_groups` contiguous, nearly equal slices (the first ones one larger)."""
    if not 1 <= n_groups <= n_envs:
        raise ValueError(f"n_groups must be in [1, n_envs={n_envs}], got {n_groups}")
    sizes = [n_envs // n_groups + (g < n_envs % n_groups) for g in range(n_groups)]
    starts = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


def concat_groups(values: Sequence[Any]) -> Any:
    """Concatenate arrays, or (nested) dicts of arrays, of consecutive groups along the env axis."""
    if len(values) == 1:
        return values[0]
    if isinstance(values[0], dict):
        return {k: concat_groups([v[k] for v in values]) for k in values[0]}
    return np.concatenate(values)


def merge_step_results(results: Sequence[StepResult]) -> StepResult:
    """Per-group `ChunkedVectorEnv.step` results -> the result for all groups' sub-envs, in order."""
    return tuple(concat_groups(parts) for parts in zip(*results))  # type: ignore[return-value]


def _worker(
    conn: Any, parent_conn: Any, env_fns: Sequence[Callable[[], gym.Env]], groups: Sequence[slice], kwargs: dict
) -> None:
    """Worker process: build the groups, then answer (command, group, payload) messages in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it closes the worker)
    # A forked worker holds a copy of the parent's end: close it, so that the parent's death ends `recv` (EOFError)
    # and the worker with it, instead of leaving it waiting forever.
    parent_conn.close()
    from env.factory import vectorize

    envs: list[ChunkedVectorEnv] = []
    try:
        seed = kwargs.pop("seed")
        for g in groups:
            envs.append(vectorize(env_fns[g], seed=None if seed is None else seed + g.start, **kwargs))
        first = envs[0]
        spaces = (first.single_observation_space, first.single_action_space)
        conn.send(("ok", (spaces, {key: getattr(first, key) for key in _CONTRACT_ATTRIBUTES})))
        while True:
            command, group, payload = conn.recv()
            if command == "close":
                break
            try:
                if command == "reset":
                    result = envs[group].reset(**payload)
                else:
                    result = envs[group].step(payload)
                conn.send(("ok", result))
            except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
                conn.send(("error", _picklable(e)))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except Exception as e:  # noqa: BLE001 - a failed build is reported to the parent
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", _picklable(e)))
    finally:
        for env in envs:
            env.close()
        conn.close()


def _picklable(e: BaseException) -> BaseException:
    import pickle

    try:
        pickle.dumps(e)
        return e
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(e).__name__}: {e}")


class PipelinedVectorEnv:
    """E sub-envs in one worker process, as `n_groups` ChunkedVectorEnvs that can be stepped one after another.

    The API and attributes of `ChunkedVectorEnv` (`reset`, `step`, `close`, spaces, `n_envs`, `obs_dim`, ...),
    plus `groups` (the sub-env slice of each group), `step_async(group, actions)` and `step_wait(group)`.

    Args:
        env_fns: one picklable constructor per sub-env (ending in MultiStep, as for `vectorize`).
        name: env name for messages.
        seed: seed of the first reset without one (sub-env i: seed + i, as `ChunkedVectorEnv`).
        n_groups: G.
        context: multiprocessing start method (None: the platform's default).
        step_timeout: seconds to wait for a group's step (a reset waits 4x as long); None: forever.
        action_clip, action_tolerance: see `ChunkedVectorEnv`.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env]],
        *,
        name: str,
        seed: int | None = None,
        n_groups: int = 2,
        context: str | None = None,
        step_timeout: float | None = 300.0,
        action_clip: bool = True,
        action_tolerance: float = 1e-3,
    ) -> None:
        self.name = name
        self.n_envs = self.num_envs = len(env_fns)
        self.groups = group_slices(self.n_envs, n_groups)
        self.step_timeout = step_timeout
        self._pending: deque[int] = deque()
        self._closed = False
        self._seeded = False
        self._seed = seed
        kwargs = {
            "name": name,
            "seed": seed,
            "action_clip": action_clip,
            "action_tolerance": action_tolerance,
            "step_timeout": None,
        }
        ctx = multiprocessing.get_context(context)
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_worker,
            args=(child, self._conn, list(env_fns), self.groups, kwargs),
            name=f"{name}-envs",
            daemon=True,
        )
        try:
            self._process.start()
        except (BrokenPipeError, EOFError, ConnectionError) as e:
            raise EnvWorkerError(f"{name}: the env worker process failed to start: {e!r}") from e
        child.close()
        timeout = None if step_timeout is None else 4 * step_timeout
        (obs_space, action_space), attributes = self._receive("start", timeout)
        self.single_observation_space, self.single_action_space = obs_space, action_space
        self.observation_space = batch_space(obs_space, self.n_envs)
        self.action_space = batch_space(action_space, self.n_envs)
        for key, value in attributes.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ worker messages
    def _receive(self, stage: str, timeout: float | None) -> Any:
        try:
            if timeout is not None and not self._conn.poll(timeout):
                raise self._failure(stage, f"did not answer within {timeout} s")
            status, payload = self._conn.recv()
        except (EOFError, BrokenPipeError, ConnectionError, OSError) as e:
            raise self._failure(stage, _describe_exit(self._process.exitcode)) from e
        if status == "error":
            raise payload
        return payload

    def _failure(self, stage: str, detail: str) -> EnvWorkerError:
        self.close(terminate=True)
        return EnvWorkerError(f"{self.name}: {stage} failed: the env worker (pid {self._process.pid}) {detail}")

    def _send(self, stage: str, message: tuple) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, ConnectionError, OSError) as e:
            raise self._failure(stage, _describe_exit(self._process.exitcode)) from e

    # ------------------------------------------------------------------ vector env API
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every group; returns (obs for all E sub-envs, {}), as `ChunkedVectorEnv.reset`."""
        self._drain()
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        timeout = None if self.step_timeout is None else 4 * self.step_timeout
        for i, g in enumerate(self.groups):
            group_seed = seed[g] if isinstance(seed, list) else (None if seed is None else seed + g.start)
            self._send("reset", ("reset", i, {"seed": group_seed, "options": options}))
        return concat_groups([self._receive("reset", timeout)[0] for _ in self.groups]), {}

    def step_async(self, group: int, actions: Any) -> None:
        """Send group `group`'s chunk (n_g, Te, Da); the worker steps the groups in the order they are sent."""
        self._send("step", ("step", group, actions))
        self._pending.append(group)

    def step_wait(self, group: int) -> StepResult:
        """The result of the oldest pending step, which must be group `group`'s (see `ChunkedVectorEnv.step`)."""
        if not self._pending or self._pending[0] != group:
            raise RuntimeError(f"{self.name}: step_wait({group}) but the pending group steps are {list(self._pending)}")
        self._pending.popleft()
        return self._receive("step", self.step_timeout)

    def step(self, actions: Any) -> StepResult:
        """Step every group with its rows of `actions` (E, Te, Da); the merged result, as `ChunkedVectorEnv.step`."""
        actions = np.asarray(actions)
        if actions.ndim < 1 or actions.shape[0] != self.n_envs:
            raise ValueError(
                f"{self.name}: actions must have shape (n_envs={self.n_envs}, act_steps, action_dim), "
                f"got {tuple(actions.shape)}"
            )
        for i, g in enumerate(self.groups):
            self.step_async(i, actions[g])
        results, error = [], None
        for i in range(len(self.groups)):  # read every group's answer, even after an error
            try:
                results.append(self.step_wait(i))
            except EnvWorkerError:
                raise
            except Exception as e:  # noqa: BLE001 - raised below, once the worker is idle again
                error = error or e
        if error is not None:
            raise error
        return merge_step_results(results)

    def _drain(self) -> None:
        """Read and drop the answers of steps that were sent but never waited for (an interrupted rollout)."""
        while self._pending:
            self._pending.popleft()
            try:
                self._receive("step", self.step_timeout)
            except EnvWorkerError:
                raise
            except Exception:  # noqa: BLE001 - the abandoned step's own error no longer matters
                log.debug("%s: an abandoned group step failed", self.name, exc_info=True)

    def close(self, terminate: bool = False) -> None:
        """Stop the worker (politely unless `terminate`, or when it does not stop within 10 s)."""
        if self._closed:
            return
        self._closed = True
        if not terminate and self._process.is_alive():
            with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
                self._conn.send(("close", 0, None))
            self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()

    def __del__(self) -> None:
        if hasattr(self, "_process"):
            self.close(terminate=True)
