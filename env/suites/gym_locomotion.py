"""Gym locomotion (Hopper, Walker2d, HalfCheetah) on gymnasium's MuJoCo `-v5` envs.

DPPO uses D4RL names (hopper-medium-v2 for pretraining data, hopper-v2 for fine-tuning) on mujoco-py `-v2` envs.
Those need mujoco-py, so every name maps to the gymnasium `-v5` env of the same robot, simulated by MuJoCo 3:

| names | gymnasium id | obs / action dims |
|---|---|---|
| hopper-v2, hopper-{random,medium,medium-replay,medium-expert,expert,full-replay}-v2 | Hopper-v5 | 11 / 3 |
| walker2d-... | Walker2d-v5 | 17 / 6 |
| halfcheetah-... | HalfCheetah-v5 | 17 / 6 |

The observation layout (qpos without the root x, then qvel, clipped) and the rewards match `-v2`; the physics
engine does not, so returns are close to but not identical with D4RL's (a one-time log line says so).
Hopper and Walker2d terminate (terminated=True) when they fall; the time limit (default 1000) only truncates.
`env.env_kwargs` are passed to the gymnasium env (e.g. `reset_noise_scale`, `terminate_when_unhealthy`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any, cast

import gymnasium as gym

from env.registry import EnvConfigError, EnvSpec, register_suite

log = logging.getLogger(__name__)

_ROBOTS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5"}
_DATASETS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
GYM_IDS: dict[str, str] = {}
for _robot, _gym_id in _ROBOTS.items():
    GYM_IDS[f"{_robot}-v2"] = _gym_id
    for _ds in _DATASETS:
        GYM_IDS[f"{_robot}-{_ds}-v2"] = _gym_id

_notice_logged = False


def _log_physics_notice() -> None:
    global _notice_logged
    if not _notice_logged:
        _notice_logged = True
        log.info(
            "gym locomotion: D4RL '-v2' names run on gymnasium's MuJoCo 3 '-v5' envs (same observations and rewards, "
            "MuJoCo 3 physics instead of mujoco-py's): returns are comparable to, not identical with, D4RL's"
        )


def _validate_kwargs(name: str, env_kwargs: Mapping[str, Any]) -> None:
    # Called by make_vec_env in the main process, so the notice is seen even when async workers build the envs.
    _log_physics_notice()
    if not env_kwargs:
        return
    from gymnasium.envs.registration import load_env_creator

    creator = load_env_creator(cast(str, gym.spec(GYM_IDS[name]).entry_point))  # MuJoCo envs register a str
    accepted = [p for p in inspect.signature(creator).parameters if p not in ("self", "kwargs")]
    unknown = sorted(set(env_kwargs) - set(accepted))
    if unknown:
        raise EnvConfigError(f"env.env_kwargs: {unknown} not accepted by {GYM_IDS[name]}; accepted: {accepted}")


@register_suite(
    "gym",
    max_episode_steps={name: 1000 for name in GYM_IDS},
    aliases={gym_id: f"{robot}-v2" for robot, gym_id in _ROBOTS.items()},
    extra="gym",
    requires=("mujoco",),
    obs_kind="box",
    default_wrapper="mujoco_locomotion_lowdim",
    uses_gl=True,
    validate_kwargs=_validate_kwargs,
    reports_success=False,  # locomotion has returns, no success
)
def make_gym_env(spec: EnvSpec) -> gym.Env:
    """Build the gymnasium `-v5` env for a D4RL name, with its time limit (truncation).

    Returns:
        env with Box observation (11 or 17,) float64 and Box action (3 or 6,) in [-1, 1].
    """
    kwargs: dict[str, Any] = dict(spec.env_kwargs)
    if spec.render:
        kwargs.update(render_mode="rgb_array", height=spec.render_size[0], width=spec.render_size[1])
    return gym.make(GYM_IDS[spec.name], max_episode_steps=spec.max_episode_steps, disable_env_checker=True, **kwargs)
