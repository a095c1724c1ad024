"""Registries of environment suites and of the wrappers named in a config's `env.wrappers` block.

A *suite* builds one raw `gymnasium.Env` for a task name (hopper-v2, can, kitchen-complete-v0, avoid_m1...). Suite
modules live in `env/suites/` and keep their heavy imports (mujoco, robosuite, gymnasium_robotics) inside functions,
so importing `env` stays cheap and a missing optional dependency only matters for the suite that needs it.

A *wrapper* is registered under DPPO's config name (`mujoco_locomotion_lowdim`, `robomimic_lowdim`,
`robomimic_image`, `d3il_lowdim`, `multi_step`) and is applied in the YAML order by the factory.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

__all__ = [
    "EnvConfigError",
    "EnvSpec",
    "MissingDependencyError",
    "Suite",
    "WrapperEntry",
    "get_suite",
    "get_wrapper",
    "known_env_names",
    "known_wrappers",
    "register_suite",
    "register_wrapper",
    "resolve_env_name",
]


class EnvConfigError(ValueError):
    """A wrong key or value in the `env` config block (raised before any environment is built)."""


class MissingDependencyError(ImportError):
    """An optional dependency (a pip extra) needed by the requested suite is not installed."""


@dataclass(frozen=True)
class EnvSpec:
    """Everything a suite needs to build one raw sub-environment.

    Plain data only, so that it pickles into `spawn`-started worker processes.

    Attributes:
        name: canonical task name (e.g. "hopper-medium-v2", "can", "avoid_m1").
        max_episode_steps: time limit in env steps; the raw env truncates (never terminates) there.
        render: whether `render()` must return RGB frames (video recording).
        render_size: (height, width) of rendered video frames.
        render_camera: camera for video frames where the suite has several (robosuite), else None.
        env_meta_path: robomimic env_meta JSON, if given.
        wrappers: the whole `wrappers` block (some suites read their task wrapper's keys, e.g. camera names).
        env_kwargs: suite-specific keyword arguments from `env.env_kwargs`.
        index: index of this sub-environment in the vector env.
    """

    name: str
    max_episode_steps: int
    render: bool = False
    render_size: tuple[int, int] = (256, 256)
    render_camera: str | None = None
    env_meta_path: str | None = None
    wrappers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    index: int = 0


SuiteBuilder = Callable[[EnvSpec], gym.Env]


@dataclass(frozen=True)
class Suite:
    """A registered suite.

    Attributes:
        name: suite name ("gym", "robomimic", "kitchen", "avoid").
        builder: `builder(spec) -> gymnasium.Env`, the raw env with its time limit.
        max_episode_steps: task name -> default time limit (the keys are the task names the suite serves).
        aliases: extra accepted names -> canonical task name.
        extra: pip extra that provides the dependencies, or None when numpy is enough.
        requires: importable module names checked before building.
        obs_kind: "box" (flat Box observation) or "robosuite" (dict of named arrays).
        default_wrapper: task wrapper used when the config names none.
        uses_gl: whether rendering goes through MuJoCo's OpenGL (needs MUJOCO_GL and spawn workers).
        validate_kwargs: optional `f(name, env_kwargs)` raising EnvConfigError for unknown suite kwargs.
        reports_success: whether its envs have a notion of success (`info["success"]`); False (gym locomotion):
            the loops report no success_rate unless `env.best_reward_threshold_for_success` defines one.
    """

    name: str
    builder: SuiteBuilder
    max_episode_steps: Mapping[str, int]
    aliases: Mapping[str, str] = field(default_factory=dict)
    extra: str | None = None
    requires: tuple[str, ...] = ()
    obs_kind: str = "box"
    default_wrapper: str = "mujoco_locomotion_lowdim"
    uses_gl: bool = True
    validate_kwargs: Callable[[str, Mapping[str, Any]], None] | None = None
    reports_success: bool = True

    def install_hint(self) -> str:
        """One line telling the user which extra to install."""
        if self.extra is None:
            return ""
        return f'pip install -e ".[{self.extra}]"'

    def check_available(self, env_name: str) -> None:
        """Raise MissingDependencyError (one line naming the extra) if a required module is missing."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise MissingDependencyError(
                f"env '{env_name}' (suite '{self.name}') needs {', '.join(missing)}: {self.install_hint()}"
            )


@dataclass(frozen=True)
class WrapperEntry:
    """A registered wrapper.

    Attributes:
        name: the config name.
        factory: `factory(env, **kwargs) -> gymnasium.Env`.
        role: "task" (turns the raw observation into {"state"[, "rgb"]} and maps actions from [-1, 1]),
            "chunk" (action chunking / observation history, applied last) or "generic".
        obs_kinds: for task wrappers, the raw observation kinds (Suite.obs_kind) it accepts.
        needs_gl: whether the wrapper needs rendered camera images (pixel observations).
    """

    name: str
    factory: Callable[..., gym.Env]
    role: str = "generic"
    obs_kinds: tuple[str, ...] = ()
    needs_gl: bool = False

    def check_kwargs(self, kwargs: Mapping[str, Any]) -> None:
        """Raise EnvConfigError if `kwargs` do not fit the wrapper's signature (checked before building)."""
        sig = inspect.signature(self.factory)
        params = list(sig.parameters.values())[1:]  # drop `env`
        accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise EnvConfigError(f"env.wrappers.{self.name}: unknown key(s) {unknown}; accepted: {', '.join(accepted)}")
        required = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise EnvConfigError(f"env.wrappers.{self.name}: missing required key(s) {missing}")


_SUITES: dict[str, Suite] = {}
_NAME_TO_SUITE: dict[str, str] = {}
_ALIASES: dict[str, str] = {}
_WRAPPERS: dict[str, WrapperEntry] = {}


def register_suite(
    name: str,
    *,
    max_episode_steps: Mapping[str, int],
    aliases: Mapping[str, str] | None = None,
    extra: str | None = None,
    requires: tuple[str, ...] = (),
    obs_kind: str = "box",
    default_wrapper: str = "mujoco_locomotion_lowdim",
    uses_gl: bool = True,
    validate_kwargs: Callable[[str, Mapping[str, Any]], None] | None = None,
    reports_success: bool = True,
) -> Callable[[SuiteBuilder], SuiteBuilder]:
    """Decorator registering a suite builder `f(spec: EnvSpec) -> gymnasium.Env`.

    Args:
        name: suite name.
        max_episode_steps: task name -> default time limit; its keys are the task names the suite serves.
        aliases: other accepted names -> canonical task name.
        extra: pip extra providing the dependencies (for the error message).
        requires: module names that must be importable.
        obs_kind: raw observation kind, "box" or "robosuite".
        default_wrapper: task wrapper applied when the config lists none.
        uses_gl: rendering needs OpenGL (sets MUJOCO_GL, spawn workers).
        validate_kwargs: optional checker for `env.env_kwargs`.
        reports_success: the envs set `info["success"]` (False where success means nothing).
    """

    def decorator(builder: SuiteBuilder) -> SuiteBuilder:
        suite = Suite(
            name=name,
            builder=builder,
            max_episode_steps=dict(max_episode_steps),
            aliases=dict(aliases or {}),
            extra=extra,
            requires=tuple(requires),
            obs_kind=obs_kind,
            default_wrapper=default_wrapper,
            uses_gl=uses_gl,
            validate_kwargs=validate_kwargs,
            reports_success=reports_success,
        )
        for task in suite.max_episode_steps:
            other = _NAME_TO_SUITE.get(task)
            if other is not None and other != name:
                raise ValueError(f"env name '{task}' is registered by suites '{other}' and '{name}'")
            _NAME_TO_SUITE[task] = name
        for alias, target in suite.aliases.items():
            if target not in suite.max_episode_steps:
                raise ValueError(f"alias '{alias}' of suite '{name}' points at unknown task '{target}'")
            _ALIASES[alias] = target
        _SUITES[name] = suite
        return builder

    return decorator


def register_wrapper(
    name: str, *, role: str = "generic", obs_kinds: tuple[str, ...] = (), needs_gl: bool = False
) -> Callable[[Callable[..., gym.Env]], Callable[..., gym.Env]]:
    """Decorator registering a wrapper class or factory `f(env, **kwargs) -> gymnasium.Env` under `name`.

    Args:
        name: the key used in `env.wrappers`.
        role: "task", "chunk" or "generic" (see WrapperEntry).
        obs_kinds: raw observation kinds a task wrapper accepts.
        needs_gl: the wrapper needs camera images (pixel observations).
    """
    if role not in ("task", "chunk", "generic"):
        raise ValueError(f"unknown wrapper role '{role}'")

    def decorator(factory: Callable[..., gym.Env]) -> Callable[..., gym.Env]:
        if name in _WRAPPERS and _WRAPPERS[name].factory is not factory:
            raise ValueError(f"wrapper '{name}' is already registered")
        _WRAPPERS[name] = WrapperEntry(name, factory, role, tuple(obs_kinds), needs_gl)
        return factory

    return decorator


def _ensure_loaded() -> None:
    # Importing the packages runs the @register_* decorators (cheap: heavy imports sit inside functions).
    import env.suites  # noqa: F401
    import env.wrappers  # noqa: F401


def known_env_names() -> list[str]:
    """All task names the registered suites serve (aliases not included), sorted."""
    _ensure_loaded()
    return sorted(_NAME_TO_SUITE)


def known_wrappers() -> list[str]:
    """All registered wrapper names, sorted."""
    _ensure_loaded()
    return sorted(_WRAPPERS)


def resolve_env_name(name: str) -> tuple[str, Suite]:
    """Map a config name (or alias) to its canonical task name and suite.

    Raises:
        EnvConfigError: unknown name; the message lists the known names per suite.
    """
    _ensure_loaded()
    canonical = _ALIASES.get(name, name)
    suite_name = _NAME_TO_SUITE.get(canonical)
    if suite_name is None:
        suites = sorted(_SUITES.values(), key=lambda s: s.name)
        listing = "; ".join(f"{s.name}: {', '.join(sorted(s.max_episode_steps))}" for s in suites)
        close = difflib.get_close_matches(name, list(_NAME_TO_SUITE) + list(_ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise EnvConfigError(f"env.name: unknown env '{name}'{hint}. Known envs -- {listing}")
    return canonical, _SUITES[suite_name]


def get_suite(name: str) -> Suite:
    """The suite registered under `name` (a suite name, not a task name)."""
    _ensure_loaded()
    try:
        return _SUITES[name]
    except KeyError:
        raise EnvConfigError(f"unknown suite '{name}'; known: {', '.join(sorted(_SUITES))}") from None


def get_wrapper(name: str) -> WrapperEntry:
    """The wrapper registered under `name`.

    Raises:
        EnvConfigError: unknown wrapper; the message lists the known ones.
    """
    _ensure_loaded()
    try:
        return _WRAPPERS[name]
    except KeyError:
        raise EnvConfigError(f"env.wrappers: unknown wrapper '{name}'; known: {', '.join(sorted(_WRAPPERS))}") from None
