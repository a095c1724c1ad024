"""Franka Kitchen (D4RL's kitchen-*-v0 tasks) on gymnasium-robotics' `FrankaKitchen-v1`.

| name | tasks (D4RL's task set) |
|---|---|
| kitchen-complete-v0 | microwave, kettle, light switch, slide cabinet |
| kitchen-partial-v0 | microwave, kettle, light switch, slide cabinet |
| kitchen-mixed-v0 | microwave, kettle, bottom burner, light switch |

(complete and partial share the task set; D4RL's versions differ only in their datasets.)

* Observation (60,) float64, D4RL's layout: robot joint positions (9), object positions (21), and the goal
  vector (30) that D4RL appends: zeros except the task elements' goal values at their state indices. It is
  assembled from gymnasium-robotics' dict observation (whose own `observation` is 59-D: robot qpos 9 + qvel 9 +
  object qpos 21 + object qvel 20); velocities are dropped and the goal added, as in D4RL.
* Action (9,) in [-1, 1]: gymnasium-robotics' joint-velocity control of the 7 arm joints and 2 fingers.
* Reward: number of tasks completed on this step (each task counts once per episode), so the episode return
  is the number of completed tasks, as in D4RL. `success` = all tasks completed; the episode then terminates.
  The time limit (default 280) truncates.

Physics (MuJoCo 3, gymnasium-robotics' model and velocity actuators) and the observation noise differ from
D4RL's mujoco-py kitchen, so D4RL-trained policies do not transfer exactly (a one-time log line says so).
`env.env_kwargs` go to `FrankaKitchen-v1` (e.g. `robot_noise_ratio`, `object_noise_ratio`, `tasks_to_complete`).
Video frames are rendered without shadows and reflections (about 30x faster on a CPU).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.registry import EnvConfigError, EnvSpec, MissingDependencyError, register_suite

log = logging.getLogger(__name__)

KITCHEN_TASKS: dict[str, tuple[str, ...]] = {
    "kitchen-complete-v0": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-partial-v0": ("microwave", "kettle", "light switch", "slide cabinet"),
    "kitchen-mixed-v0": ("microwave", "kettle", "bottom burner", "light switch"),
}
_ACCEPTED_KWARGS = ("tasks_to_complete", "robot_noise_ratio", "object_noise_ratio", "frame_skip")
_notice_logged = False


class KitchenD4RLObservation(gym.Wrapper):
    """Turn FrankaKitchen-v1's dict observation into D4RL's 60-D vector; add `success` to the info.

    Args:
        env: a FrankaKitchen-v1 env.
        tasks: the episode's task set (defines the goal part of the observation and success).
    """

    def __init__(self, env: gym.Env, tasks: Sequence[str]) -> None:
        super().__init__(env)
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

        self.tasks = tuple(tasks)
        goal = np.zeros(30)
        for task in self.tasks:
            goal[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
        self._goal = goal
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(60,), dtype=np.float64)

    def _observation(self, obs: Mapping[str, Any]) -> np.ndarray:
        flat = obs["observation"]  # robot qpos (9), robot qvel (9), object qpos (21), object qvel (20)
        return np.concatenate([flat[:9], flat[18:39], self._goal])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observation(obs), {}

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = len(info["episode_task_completions"]) == len(self.tasks)
        return self._observation(obs), float(reward), terminated, truncated, {"success": success}


def _validate_kwargs(name: str, env_kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(env_kwargs) - set(_ACCEPTED_KWARGS))
    if unknown:
        raise EnvConfigError(f"env.env_kwargs: {unknown} not accepted by {name}; accepted: {list(_ACCEPTED_KWARGS)}")


@register_suite(
    "kitchen",
    max_episode_steps={name: 280 for name in KITCHEN_TASKS},
    extra="kitchen",
    requires=("gymnasium_robotics", "mujoco"),
    obs_kind="box",
    default_wrapper="mujoco_locomotion_lowdim",
    uses_gl=True,
    validate_kwargs=_validate_kwargs,
)
def make_kitchen_env(spec: EnvSpec) -> gym.Env:
    """Build FrankaKitchen-v1 for a D4RL kitchen name with D4RL's 60-D observation and the time limit.

    Returns:
        env with Box observation (60,) float64 and Box action (9,) in [-1, 1].
    """
    global _notice_logged
    try:
        # gymnasium_robotics prints a notice about Adroit envs on import; keep worker logs clean.
        with contextlib.redirect_stdout(io.StringIO()):
            import gymnasium_robotics
    except ImportError as e:
        raise MissingDependencyError(
            f"env '{spec.name}' needs gymnasium-robotics ({e}): pip install -e \".[kitchen]\""
        ) from e

    gym.register_envs(gymnasium_robotics)
    if not _notice_logged:
        _notice_logged = True
        log.info(
            "kitchen: D4RL kitchen names run on gymnasium-robotics FrankaKitchen-v1 (MuJoCo 3, velocity actuators); "
            "dynamics differ from D4RL's mujoco-py kitchen"
        )
    kwargs: dict[str, Any] = dict(spec.env_kwargs)
    tasks = tuple(kwargs.pop("tasks_to_complete", KITCHEN_TASKS[spec.name]))
    if spec.render:
        kwargs.update(render_mode="rgb_array", height=spec.render_size[0], width=spec.render_size[1])
    env = gym.make(
        "FrankaKitchen-v1",
        tasks_to_complete=list(tasks),
        max_episode_steps=spec.max_episode_steps,
        disable_env_checker=True,
        **kwargs,
    )
    if spec.render:
        # Video frames only (the observation is state): without shadows, reflections and multisampling a CPU
        # (software EGL) frame takes ~0.1 s instead of ~3 s. Rendering fields only; physics is unchanged.
        kitchen: Any = env.unwrapped  # gymnasium_robotics' MujocoEnv (the package ships no type information)
        model = kitchen.model
        model.light_castshadow[:] = 0
        model.mat_reflectance[:] = 0
        model.vis.quality.offsamples = 0
    return KitchenD4RLObservation(env, tasks)
