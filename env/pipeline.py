"""Envs stepped in worker processes, in groups, so that rollouts overlap env stepping with policy sampling and
spread the envs over the cores.

`PipelinedVectorEnv` builds the E sub-envs in W worker processes as G groups (contiguous slices of the E
sub-envs; each worker holds a contiguous part of every group as a sync `ChunkedVectorEnv`, so a group's step is
one message per worker and no per-env IPC). With G = 2 an on-policy rollout sends group 0's chunk, samples group
1's chunk while the workers step group 0, and so on (`OnPolicyAgent.collect`): the denoising chain then runs while
the envs run, instead of one after the other. With W > 1 the workers step their parts in parallel, one core each.
`step` (all groups, in order) gives the same observations, rewards and infos as a plain `ChunkedVectorEnv` over
the same sub-envs and seed, so every other user (evaluation, off-policy agents) sees an ordinary vector env.

Chosen with `env.pipeline: true` (G = 2) and/or `env.workers: <W> | auto` (see env/factory.py): cheap state-based
envs on CPU (gym locomotion, kitchen, avoid) use one worker and two groups, where one process steps all envs at
the raw sync rate; expensive ones (robosuite) one worker per core.
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

from env.vector import ChunkedVectorEnv, EnvWorkerError, _describe_exit, kill_workers

log = logging.getLogger(__name__)

# `ChunkedVectorEnv` attributes of the contract (env/README.md) that do not depend on the number of sub-envs.
_CONTRACT_ATTRIBUTES = ("n_obs_steps", "obs_dim", "n_action_steps", "action_dim", "image_shape")

StepResult = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]

EXIT_WAIT_S = 2.0
"""Seconds to wait for a worker whose pipe closed to be reaped, so the error says how it ended."""


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
    return tuple(concat_groups(parts) for parts in zip(*results))


def _worker(
    conn: Any,
    parent_conn: Any,
    parts: Sequence[tuple[int, Sequence[Callable[[], gym.Env]]]],
    kwargs: dict,
) -> None:
    """Worker process: build one `ChunkedVectorEnv` per group part, then answer (command, group, payload) messages
    in order.

    Args:
        parts: per group, (index of the part's first sub-env among all E, the part's sub-env constructors).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it closes the worker)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's close(terminate=True) ends the worker
    # A forked worker holds a copy of the parent's end: close it, so that the parent's death ends `recv` (EOFError)
    # and the worker with it, instead of leaving it waiting forever.
    parent_conn.close()
    from env.factory import vectorize

    envs: list[ChunkedVectorEnv] = []
    try:
        seed = kwargs.pop("seed")
        for start, fns in parts:
            envs.append(vectorize(fns, seed=None if seed is None else seed + start, **kwargs))
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
    """E sub-envs in W worker processes, as `n_groups` groups that can be stepped one after another.

    Group g is a contiguous slice of the E sub-envs (`groups[g]`); each worker holds a contiguous part of every
    group (`parts[g][w]`, worker 0 the first rows) as a sync `ChunkedVectorEnv`, so a group's step is one message
    to each worker, which the workers execute in parallel. The API and attributes of `ChunkedVectorEnv` (`reset`,
    `step`, `close`, spaces, `n_envs`, `obs_dim`, ...), plus `groups`, `n_workers`, `step_async(group, actions)`
    and `step_wait(group)`.

    Args:
        env_fns: one picklable constructor per sub-env (ending in MultiStep, as for `vectorize`).
        name: env name for messages.
        seed: seed of the first reset without one (sub-env i: seed + i, as `ChunkedVectorEnv`).
        n_groups: G.
        n_workers: W, at most the size of the smallest group (a larger value is lowered to it).
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
        n_workers: int = 1,
        context: str | None = None,
        step_timeout: float | None = 300.0,
        action_clip: bool = True,
        action_tolerance: float = 1e-3,
    ) -> None:
        self.name = name
        self.n_envs = self.num_envs = len(env_fns)
        self.groups = group_slices(self.n_envs, n_groups)
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.n_workers = min(n_workers, min(g.stop - g.start for g in self.groups))
        # parts[g][w]: the sub-envs of group g that worker w holds (global indices)
        self.parts = [
            [slice(g.start + s.start, g.start + s.stop) for s in group_slices(g.stop - g.start, self.n_workers)]
            for g in self.groups
        ]
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
        fns = list(env_fns)
        ctx = multiprocessing.get_context(context)
        self._conns: list[Any] = []
        self._processes: list[Any] = []
        for w in range(self.n_workers):
            parent, child = ctx.Pipe()
            parts = [(part[w].start, fns[part[w]]) for part in self.parts]
            process = ctx.Process(  # type: ignore[attr-defined]  # typeshed's BaseContext lacks Process
                target=_worker,
                args=(child, parent, parts, dict(kwargs)),
                name=f"{name}-envs-{w}",
                daemon=True,
            )
            self._conns.append(parent)
            self._processes.append(process)
            try:
                process.start()
            except (BrokenPipeError, EOFError, ConnectionError) as e:
                self.close(terminate=True)
                raise EnvWorkerError(f"{name}: the env worker process failed to start: {e!r}") from e
            child.close()
        timeout = None if step_timeout is None else 4 * step_timeout
        try:
            (obs_space, action_space), attributes = self._receive_all("start", timeout)[0]
        except Exception:
            self.close(terminate=True)  # the workers that did build wait for commands: stop them
            raise
        self.single_observation_space, self.single_action_space = obs_space, action_space
        self.observation_space = batch_space(obs_space, self.n_envs)
        self.action_space = batch_space(action_space, self.n_envs)
        for key, value in attributes.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ worker messages
    def _receive(self, w: int, stage: str, timeout: float | None) -> tuple[str, Any]:
        """Worker w's next answer as (status, payload); a dead or silent worker closes all and raises."""
        conn, process = self._conns[w], self._processes[w]
        try:
            if timeout is not None and not conn.poll(timeout):
                detail = _describe_exit(None, process.pid)
                detail = detail if detail.startswith("is stopped") else f"did not answer within {timeout} s"
                raise self._failure(w, stage, detail)
            return conn.recv()
        except (EOFError, BrokenPipeError, ConnectionError, OSError) as e:
            process.join(EXIT_WAIT_S)  # the pipe closed as the worker ended: wait for its exit code (busy machines)
            raise self._failure(w, stage, _describe_exit(process.exitcode, process.pid)) from e

    def _receive_all(self, stage: str, timeout: float | None) -> list[Any]:
        """Every worker's next answer, in worker order; an error is raised once all workers have answered."""
        answers = [self._receive(w, stage, timeout) for w in range(self.n_workers)]
        for status, payload in answers:
            if status == "error":
                raise payload
        return [payload for _, payload in answers]

    def _failure(self, w: int, stage: str, detail: str) -> EnvWorkerError:
        pid = self._processes[w].pid
        self.close(terminate=True)
        return EnvWorkerError(f"{self.name}: {stage} failed: the env worker (pid {pid}) {detail}")

    def _send(self, w: int, stage: str, message: tuple) -> None:
        try:
            self._conns[w].send(message)
        except (BrokenPipeError, ConnectionError, OSError) as e:
            self._processes[w].join(EXIT_WAIT_S)
            raise self._failure(w, stage, _describe_exit(self._processes[w].exitcode)) from e

    # ------------------------------------------------------------------ vector env API
    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every group; returns (obs for all E sub-envs, {}), as `ChunkedVectorEnv.reset`."""
        self._drain()
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = True
        timeout = None if self.step_timeout is None else 4 * self.step_timeout
        for i, parts in enumerate(self.parts):
            for w, part in enumerate(parts):
                part_seed = seed[part] if isinstance(seed, list) else (None if seed is None else seed + part.start)
                self._send(w, "reset", ("reset", i, {"seed": part_seed, "options": options}))
        obs = [concat_groups([o for o, _ in self._receive_all("reset", timeout)]) for _ in self.groups]
        return concat_groups(obs), {}

    def step_async(self, group: int, actions: Any) -> None:
        """Send group `group`'s chunk (n_g, Te, Da); the workers step the groups in the order they are sent."""
        actions = np.asarray(actions)
        g = self.groups[group]
        if actions.ndim < 1 or actions.shape[0] != g.stop - g.start:
            raise ValueError(
                f"{self.name}: group {group} holds sub-envs {g.start}..{g.stop - 1}, so its actions must have "
                f"shape ({g.stop - g.start}, act_steps, action_dim), got {tuple(actions.shape)}"
            )
        for w, part in enumerate(self.parts[group]):
            self._send(w, "step", ("step", group, actions[part.start - g.start : part.stop - g.start]))
        self._pending.append(group)

    def step_wait(self, group: int) -> StepResult:
        """The result of the oldest pending step, which must be group `group`'s (see `ChunkedVectorEnv.step`)."""
        if not self._pending or self._pending[0] != group:
            raise RuntimeError(f"{self.name}: step_wait({group}) but the pending group steps are {list(self._pending)}")
        self._pending.popleft()
        return merge_step_results(self._receive_all("step", self.step_timeout))

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
            except Exception as e:  # noqa: BLE001 - raised below, once the workers are idle again
                error = error or e
        if error is not None:
            raise error
        return merge_step_results(results)

    def _drain(self) -> None:
        """Read and drop the answers of steps that were sent but never waited for (an interrupted rollout)."""
        while self._pending:
            self._pending.popleft()
            try:
                self._receive_all("step", self.step_timeout)
            except EnvWorkerError:
                raise
            except Exception:  # noqa: BLE001 - the abandoned step's own error no longer matters
                log.debug("%s: an abandoned group step failed", self.name, exc_info=True)

    def close(self, terminate: bool = False) -> None:
        """Stop the workers (politely unless `terminate`, or when one does not stop within 10 s)."""
        if self._closed:
            return
        self._closed = True
        if not terminate:
            for conn, process in zip(self._conns, self._processes):
                if process.is_alive():
                    with contextlib.suppress(BrokenPipeError, ConnectionError, OSError):
                        conn.send(("close", 0, None))
            for process in self._processes:
                if process.pid is not None:
                    process.join(10)
        kill_workers(self._processes)
        for conn in self._conns:
            conn.close()

    def __del__(self) -> None:
        if hasattr(self, "_processes"):
            self.close(terminate=True)
