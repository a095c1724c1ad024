"""`make_vec_env`: the DPPO-style `env:` config block -> a vector env that follows the contract in env/README.md.

The block's keys, defaults and checks are `EnvConfig`'s (any other key is an error).

`wrappers`: at most one *task* wrapper (`mujoco_locomotion_lowdim`, `d3il_lowdim`, `robomimic_lowdim`,
`robomimic_image`), then optional generic wrappers, then `multi_step` last. A missing task wrapper becomes the
suite's default with identity normalisation; a missing `multi_step` becomes `multi_step` with To = Te = 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from env.pipeline import PipelinedVectorEnv
from env.registry import EnvConfigError, EnvSpec, Suite, get_suite, get_wrapper, resolve_env_name
from env.vector import ChunkedVectorEnv, EnvWorkerError
from env.wrappers.guard import SubEnvGuard
from env.wrappers.video import VideoRecorder

log = logging.getLogger(__name__)


@dataclass
class EnvConfig:
    """The `env` block: its schema (registered in Hydra's ConfigStore as `schema/env` by agent/schemas.py) and,
    once built, the checked values (the checks run in `__post_init__`).

    Attributes:
        name: the task. gym: hopper-v2, hopper-medium-v2 (and the other D4RL dataset names), walker2d-...,
            halfcheetah-...; robomimic: lift, can, square, transport; kitchen: kitchen-complete-v0,
            kitchen-partial-v0, kitchen-mixed-v0; avoid: avoid_m1, avoid_m2, avoid_m3.
        n_envs: the number of sub-envs E.
        max_episode_steps: the time limit in env steps (truncation); null: the suite's (gym 1000, lift/can 300,
            square 400, transport 800, kitchen 280, avoid 100).
        asynchronous: gymnasium's AsyncVectorEnv (one process per sub-env) instead of SyncVectorEnv.
        pipeline: step the sub-envs in worker processes (one unless `workers` says more), in two groups, so that an
            on-policy rollout samples one group's chunks while the workers step the other (env/pipeline.py); not
            together with `asynchronous`.
        workers: worker processes that step the sub-envs, each a contiguous part of them in a loop (with
            `pipeline` false the envs form one group); auto: one per core this process may run on; never more than
            the sub-envs per group; null: one with `pipeline`, else the sub-envs step in this process.
        mp_context: the start method of async / pipeline workers (fork, spawn, forkserver); forced to spawn when
            MuJoCo renders.
        step_timeout: seconds an async step may take before the workers are reported as hung (a reset: 4x).
        action_clip: clip normalised actions to [-1, 1]; false: out-of-range actions raise an error.
        action_tolerance: the allowed excess beyond [-1, 1] when action_clip is false.
        save_video: record mp4 videos of the first `n_video_envs` sub-envs, `n_video_episodes` episodes each
            (re-armed by `reset(options={"video_prefix": ...})`).
        video_dir: where videos go; null: the run's `<logdir>/videos` ("videos" when the factory is called
            directly).
        n_video_envs: sub-envs recorded.
        n_video_episodes: episodes recorded per sub-env.
        video_fps: frames per second of the videos; null: the env's render fps.
        render_size: [H, W] of rendered frames, two even numbers.
        render_camera: the robosuite camera of the videos; null: agentview.
        env_kwargs: suite-specific keyword arguments (see each suite module).
        wrappers: ordered mapping {wrapper name: kwargs}, applied in order (see the module docstring).
        use_image_obs: DPPO's flag; if given, it must agree with the task wrapper.
        reset_at_iteration: the fine-tuning loop resets every env at the start of each iteration.
        best_reward_threshold_for_success: an episode whose return reaches it counts as a success; null: the
            env's own success flag.
        save_full_observations: DPPO's key, accepted; unused here.
        specific: DPPO's key (Furniture-Bench), accepted; unused here.
        env_type: DPPO's key (Furniture-Bench), accepted; unused here.
    """

    name: str
    n_envs: int = 1
    max_episode_steps: int | None = None
    asynchronous: bool = False
    pipeline: bool = False
    workers: Any = None  # int >= 1, "auto" or None
    mp_context: str | None = None
    step_timeout: float | None = 300.0
    action_clip: bool = True
    action_tolerance: float = 1e-3
    save_video: bool = False
    video_dir: str | None = None
    n_video_envs: int = 1
    n_video_episodes: int = 1
    video_fps: int | None = None
    render_size: tuple[int, int] = (256, 256)
    render_camera: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: dict[str, Any] = field(default_factory=dict)  # ordered {wrapper name: kwargs or None}
    use_image_obs: bool | None = None
    reset_at_iteration: bool = True
    best_reward_threshold_for_success: float | None = None
    save_full_observations: bool = False
    specific: Any = None
    env_type: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EnvConfig:
        """Build from a plain mapping; raises EnvConfigError naming the key for unknown keys or bad values."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(names))
        if unknown:
            raise EnvConfigError(f"env: unknown key(s) {unknown}; accepted: {', '.join(sorted(names))}")
        if not cfg.get("name"):
            raise EnvConfigError("env.name is required")
        return cls(**cfg)

    def __post_init__(self) -> None:
        if not isinstance(self.wrappers, Mapping) and self.wrappers is not None:
            raise EnvConfigError("env.wrappers must be a mapping {wrapper_name: {kwargs}}")
        self.wrappers = {str(k): dict(v or {}) for k, v in (self.wrappers or {}).items()}
        size = self.render_size
        if isinstance(size, int):
            size = (size, size)
        self.render_size = (int(size[0]), int(size[1]))
        self.env_kwargs = dict(self.env_kwargs or {})

        def positive(key: str, value: Any) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise EnvConfigError(f"env.{key} must be a positive integer, got {value!r}")

        positive("n_envs", self.n_envs)
        positive("n_video_envs", self.n_video_envs)
        positive("n_video_episodes", self.n_video_episodes)
        if self.max_episode_steps is not None:
            positive("max_episode_steps", self.max_episode_steps)
        if self.step_timeout is not None and self.step_timeout <= 0:
            raise EnvConfigError(f"env.step_timeout must be > 0 or null, got {self.step_timeout}")
        for key in ("asynchronous", "pipeline"):
            if not isinstance(getattr(self, key), bool):
                raise EnvConfigError(f"env.{key} must be true or false, got {getattr(self, key)!r}")
        if self.pipeline and self.asynchronous:
            raise EnvConfigError("env.pipeline and env.asynchronous exclude each other: set one of them to false")
        if self.workers is not None:
            w = self.workers
            if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
                raise EnvConfigError(f"env.workers must be a positive integer, auto or null, got {w!r}")
            if self.asynchronous:
                raise EnvConfigError("env.workers and env.asynchronous exclude each other: set workers to null")
        if self.mp_context not in (None, "fork", "spawn", "forkserver"):
            raise EnvConfigError(f"env.mp_context must be fork, spawn, forkserver or null, got {self.mp_context!r}")
        if any(s < 2 or s % 2 for s in self.render_size):
            raise EnvConfigError(f"env.render_size must be two even numbers [H, W], got {list(self.render_size)}")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; os.cpu_count() where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_workers(workers: int | str | None, pipeline: bool) -> int | None:
    """`env.workers` -> the number of worker processes (None: no workers, the envs step in this process)."""
    if workers == "auto":
        return available_cores()
    if workers is None:
        return 1 if pipeline else None
    return int(workers)


def _to_plain(obj: Any) -> Any:
    """DictConfig/ListConfig (omegaconf) or nested mappings -> plain dicts and lists."""
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class _SubEnvPlan:
    """Picklable recipe for one sub-env (sent to spawn workers)."""

    suite: str
    spec: EnvSpec
    wrappers: tuple[tuple[str, Mapping[str, Any]], ...]
    label: str
    video: tuple[str, str, int, int, int | None] | None  # (video_dir, prefix, index, n_episodes, fps)


def _build_sub_env(plan: _SubEnvPlan) -> gym.Env:
    """Build raw env -> [video] -> task wrapper -> ... -> multi_step -> guard (runs inside the worker)."""
    suite = get_suite(plan.suite)
    env = suite.builder(plan.spec)
    if plan.video is not None:
        video_dir, prefix, index, n_episodes, fps = plan.video
        env = VideoRecorder(env, video_dir, prefix, index=index, n_episodes=n_episodes, fps=fps)
    for name, kwargs in plan.wrappers:
        env = get_wrapper(name).factory(env, **kwargs)
    return SubEnvGuard(env, plan.label)


def _plan_wrappers(
    cfg: EnvConfig, suite: Suite, max_episode_steps: int
) -> tuple[tuple[tuple[str, dict[str, Any]], ...], bool]:
    """Validate the wrapper list and fill in defaults. Returns (wrappers, needs_gl)."""
    wrappers = [(name, dict(kwargs)) for name, kwargs in cfg.wrappers.items()]
    entries = [get_wrapper(name) for name, _ in wrappers]
    roles = [e.role for e in entries]
    if roles.count("task") > 1:
        raise EnvConfigError(f"env.wrappers: at most one task wrapper, got {[n for n, _ in wrappers]}")
    if roles.count("chunk") > 1 or ("chunk" in roles and roles[-1] != "chunk"):
        raise EnvConfigError("env.wrappers: multi_step must be listed once, as the last wrapper")
    if "task" in roles and roles.index("task") != 0:
        raise EnvConfigError("env.wrappers: the task wrapper (normalisation) must be listed first")
    if "task" not in roles:
        log.info("env %s: no task wrapper configured, using %s with identity scaling", cfg.name, suite.default_wrapper)
        wrappers.insert(0, (suite.default_wrapper, {}))
        entries.insert(0, get_wrapper(suite.default_wrapper))
    if "chunk" not in roles:
        wrappers.append(("multi_step", {"max_episode_steps": max_episode_steps}))
        entries.append(get_wrapper("multi_step"))
    task = entries[0]
    if suite.obs_kind not in task.obs_kinds:
        fitting = ", ".join(n for n in _task_wrappers_for(suite.obs_kind))
        raise EnvConfigError(
            f"env.wrappers.{task.name} does not apply to env '{cfg.name}' (suite '{suite.name}'); use {fitting}"
        )
    chunk_kwargs = wrappers[-1][1]
    chunk_kwargs.setdefault("max_episode_steps", max_episode_steps)
    if chunk_kwargs["max_episode_steps"] not in (None, max_episode_steps):
        log.warning(
            "env %s: multi_step.max_episode_steps=%s differs from env.max_episode_steps=%s; the smaller one applies",
            cfg.name,
            chunk_kwargs["max_episode_steps"],
            max_episode_steps,
        )
    for entry, (_, kwargs) in zip(entries, wrappers):
        entry.check_kwargs(kwargs)
    needs_gl = any(e.needs_gl for e in entries)
    if cfg.use_image_obs is not None and bool(cfg.use_image_obs) != needs_gl:
        raise EnvConfigError(
            f"env.use_image_obs={cfg.use_image_obs} but the task wrapper is {task.name} "
            f"({'with' if needs_gl else 'without'} images)"
        )
    return tuple(wrappers), needs_gl


def _task_wrappers_for(obs_kind: str) -> list[str]:
    from env.registry import known_wrappers

    return [n for n in known_wrappers() if obs_kind in get_wrapper(n).obs_kinds]


def _ensure_headless_gl() -> None:
    """Select EGL for MuJoCo rendering when no backend is chosen (must happen before mujoco creates a context)."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl"
        log.info("MUJOCO_GL not set: using egl for offscreen rendering (set MUJOCO_GL=osmesa without a GPU/EGL)")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def vectorize(
    env_fns: Sequence[Callable[[], gym.Env]],
    *,
    name: str,
    seed: int | None = None,
    asynchronous: bool = False,
    context: str | None = None,
    action_clip: bool = True,
    action_tolerance: float = 1e-3,
    step_timeout: float | None = 300.0,
) -> ChunkedVectorEnv:
    """Vectorise sub-env constructors whose envs end in `MultiStep` (SAME_STEP autoreset) and wrap the result.

    Args:
        env_fns: one picklable constructor per sub-env.
        name: env name for messages.
        seed: seed of the first reset (sub-env i: seed + i).
        asynchronous: one worker process per sub-env.
        context: multiprocessing start method for async envs.
        action_clip, action_tolerance, step_timeout: see `ChunkedVectorEnv`.
    """
    if asynchronous:
        try:
            vec: gym.vector.VectorEnv = AsyncVectorEnv(
                list(env_fns), context=context, autoreset_mode=AutoresetMode.SAME_STEP, daemon=True, copy=False
            )
        except (BrokenPipeError, EOFError, ConnectionError) as e:
            hint = (
                " (spawned workers re-import the main script: guard its entry point with `if __name__ == '__main__':`)"
                if context == "spawn"
                else ""
            )
            raise EnvWorkerError(f"{name}: async worker processes failed to start{hint}: {e!r}") from e
    else:
        vec = SyncVectorEnv(list(env_fns), autoreset_mode=AutoresetMode.SAME_STEP, copy=False)
    return ChunkedVectorEnv(
        vec,
        name=name,
        seed=seed,
        action_clip=action_clip,
        action_tolerance=action_tolerance,
        step_timeout=step_timeout,
    )


def make_vec_env(
    env_cfg: EnvConfig | Mapping[str, Any], *, seed: int, env_meta_path: str | None = None
) -> ChunkedVectorEnv | PipelinedVectorEnv:
    """Build the vector env described by a DPPO-style `env` block.

    Args:
        env_cfg: the `env:` block (an EnvConfig, a dict or an omegaconf DictConfig); keys in the module docstring.
        seed: base seed; sub-env i is seeded with seed + i at the first reset.
        env_meta_path: robomimic env_meta JSON (DPPO's `robomimic_env_cfg_path`); default:
            cfg/robomimic/env_meta/<name>[-img].json.

    Returns:
        ChunkedVectorEnv (PipelinedVectorEnv with `pipeline` or `workers`, the same API):
        `reset() -> (obs, {})`, `step((E, Te, Da)) -> (obs, reward (E,), terminated (E,),
        truncated (E,), info)`; see `ChunkedVectorEnv.step` for the info keys.

    Raises:
        EnvConfigError: unknown env name (lists the known ones), unknown key, bad value.
        MissingDependencyError: the suite's pip extra is not installed (one line naming it).
    """
    cfg = env_cfg if isinstance(env_cfg, EnvConfig) else EnvConfig.from_config(_to_plain(env_cfg))
    name, suite = resolve_env_name(cfg.name)
    suite.check_available(name)
    if suite.validate_kwargs is not None:
        suite.validate_kwargs(name, cfg.env_kwargs)
    max_episode_steps = cfg.max_episode_steps or suite.max_episode_steps[name]
    wrappers, needs_gl = _plan_wrappers(cfg, suite, max_episode_steps)
    renders_gl = suite.uses_gl and (needs_gl or cfg.save_video)
    if renders_gl:
        _ensure_headless_gl()
    context = cfg.mp_context
    n_workers = resolve_workers(cfg.workers, cfg.pipeline)
    if (cfg.asynchronous or n_workers is not None) and renders_gl and context != "spawn":
        # A forked worker inherits the parent's OpenGL/EGL state and hangs on its first render.
        context = "spawn"
    base_spec = EnvSpec(
        name=name,
        max_episode_steps=max_episode_steps,
        render_size=cfg.render_size,
        render_camera=cfg.render_camera,
        env_meta_path=env_meta_path,
        wrappers={k: v for k, v in wrappers},
        env_kwargs=dict(cfg.env_kwargs),
    )
    plans = []
    for i in range(cfg.n_envs):
        record = cfg.save_video and i < cfg.n_video_envs
        video = None
        if record:
            video = (cfg.video_dir or "videos", name, i, cfg.n_video_episodes, cfg.video_fps)
        spec = replace(base_spec, render=record, index=i)
        plans.append(_SubEnvPlan(suite.name, spec, wrappers, f"{name} sub-env {i}", video))
    n_groups = min(2, cfg.n_envs) if cfg.pipeline else 1
    if n_workers is not None:
        n_workers = min(n_workers, cfg.n_envs // n_groups)
    kind = "async" if cfg.asynchronous else "sync" if n_workers is None else f"{n_workers}-worker"
    log.info(
        "building %d %s%s %s env(s) (suite %s, max_episode_steps %d)",
        cfg.n_envs,
        kind,
        ", pipelined" if cfg.pipeline else "",
        name,
        suite.name,
        max_episode_steps,
    )
    env_fns = [partial(_build_sub_env, p) for p in plans]
    if n_workers is not None:
        return PipelinedVectorEnv(
            env_fns,
            name=name,
            seed=seed,
            n_groups=n_groups,
            n_workers=n_workers,
            context=context,
            step_timeout=cfg.step_timeout,
            action_clip=cfg.action_clip,
            action_tolerance=cfg.action_tolerance,
        )
    return vectorize(
        env_fns,
        name=name,
        seed=seed,
        asynchronous=cfg.asynchronous,
        context=context,
        action_clip=cfg.action_clip,
        action_tolerance=cfg.action_tolerance,
        step_timeout=cfg.step_timeout,
    )
