"""Robomimic tasks (lift, can, square, transport) built on robosuite 1.5 directly from env_meta JSON files.

robomimic's PyPI release cannot be used beside torch 2.13 (it imports mujoco_py and pulls torchvision), so this
module reads robomimic's env_meta format (cfg/robomimic/env_meta/<task>[-img].json: env_name, type 1,
env_kwargs with robosuite 1.4-style `controller_configs`) and builds the robosuite env itself:

* The old OSC_POSE controller config is converted to robosuite 1.5's composite format (renamed keys
  damping -> damping_ratio, damping_limits -> damping_ratio_limits, control_delta -> input_type) with
  `input_ref_frame="world"`: robosuite 1.4 applied delta actions in the world frame, 1.5 defaults to the robot
  base frame, which differs for transport's second (opposed, rotated) arm.
* `lite_physics=False` (robosuite 1.5's default True skips a forward pass that 1.4 did) and `hard_reset=False`
  (as DPPO sets), unless the env_meta says otherwise.
* Observation keys follow robomimic: `robot0_eef_pos` (3), `robot0_eef_quat` (4, x-y-z-w of the hand *body*,
  as in 1.4; 1.5 adds `robot0_eef_quat_site`), `robot0_gripper_qpos` (2), ..., and `object`, the task's object
  state **in robosuite 1.4's order**. robosuite 1.5 reordered its `object-state` (can/square: the
  object-to-eef pose now comes before the object pose; transport: the two booleans moved before the gripper
  offsets), and at reset its object-to-eef entries are zeros because they are computed before the object pose
  they depend on. We assemble `object` from the named entries in the old order and recompute the observation
  once after each reset. Sizes: lift 10, can 14, square 14, transport 41, so the default low-dim state has
  19 / 23 / 23 / 59 dims.
* Images `<camera>_image` are (3, H, W) uint8, upright (robosuite renders upside down in its default OpenGL
  convention).
* Reward: robosuite's sparse reward (reward_shaping false): 1.0 on every step where the task is solved. `success`
  is in the info. The episode never terminates (robomimic's ignore_done, DPPO's done=False) unless
  `env.env_kwargs.terminate_on_success` is true; the time limit (lift/can 300, square 400, transport 800)
  truncates.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.registry import EnvConfigError, EnvSpec, MissingDependencyError, register_suite
from env.wrappers.normalization import image_request

log = logging.getLogger(__name__)

ROBOSUITE_ENV_NAMES = {
    "lift": "Lift",
    "can": "PickPlaceCan",
    "square": "NutAssemblySquare",
    "transport": "TwoArmTransport",
}

# robomimic's `object` key: the object state in robosuite 1.4's concatenation order (see the module docstring).
OBJECT_KEYS: dict[str, tuple[str, ...]] = {
    "Lift": ("cube_pos", "cube_quat", "gripper_to_cube_pos"),
    "PickPlaceCan": ("Can_pos", "Can_quat", "Can_to_robot0_eef_pos", "Can_to_robot0_eef_quat"),
    "NutAssemblySquare": (
        "SquareNut_pos",
        "SquareNut_quat",
        "SquareNut_to_robot0_eef_pos",
        "SquareNut_to_robot0_eef_quat",
    ),
    "TwoArmTransport": (
        "payload_pos",
        "payload_quat",
        "trash_pos",
        "trash_quat",
        "lid_handle_pos",
        "lid_handle_quat",
        "target_bin_pos",
        "trash_bin_pos",
        "gripper0_to_payload",
        "gripper0_to_lid_handle",
        "gripper1_to_payload",
        "gripper1_to_trash",
        "payload_in_target_bin",
        "trash_in_trash_bin",
    ),
}
_PROPRIO = ("eef_pos", "eef_quat", "gripper_qpos")
_SUITE_KWARGS = ("terminate_on_success", "lite_physics")


def load_env_meta(task: str, env_meta_path: str | Path | None = None, image: bool = False) -> dict[str, Any]:
    """Read a robomimic env_meta JSON; default path cfg/robomimic/env_meta/<task>[-img].json.

    Raises:
        FileNotFoundError: the file does not exist.
        EnvConfigError: its env_name does not belong to `task`.
    """
    if env_meta_path:
        path = Path(env_meta_path)
    else:
        from agent.config import CFG_ROOT  # where the configs are: a checkout's cfg/ or the wheel's agent/cfg

        path = CFG_ROOT / "robomimic" / "env_meta" / f"{task}{'-img' if image else ''}.json"
    if not path.is_file():
        raise FileNotFoundError(f"robomimic env_meta file not found: {path}")
    meta = json.loads(path.read_text())
    expected = ROBOSUITE_ENV_NAMES.get(task)
    if expected is not None and meta.get("env_name") != expected:
        raise EnvConfigError(f"{path}: env_name is {meta.get('env_name')!r}, but task '{task}' needs {expected!r}")
    return meta


# Notices robosuite logs when imported, about optional parts this toolkit does not use: a private macro file,
# the robosuite_models robots, the mink IK of the GR1 robot.
ROBOSUITE_IMPORT_NOTICES = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run:",
    "Could not import robosuite_models",
    "Could not load the mink-based whole-body IK",
)


class DropImportNotices(logging.Filter):
    """Drops the records of `ROBOSUITE_IMPORT_NOTICES` (on robosuite's logger: its own handler and the root's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(ROBOSUITE_IMPORT_NOTICES)


def import_robosuite() -> ModuleType:
    """`import robosuite` without its import-time notices (`ROBOSUITE_IMPORT_NOTICES`) and PyOpenGL's INFO line
    about its optional accelerator; robosuite's other warnings still show. Called in every process that builds a
    robosuite env (env workers too). Raises MissingDependencyError naming the extra when robosuite is missing."""
    logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, DropImportNotices) for f in logger.filters):
        logger.addFilter(DropImportNotices())
    logging.getLogger("OpenGL.acceleratesupport").setLevel(logging.WARNING)  # "No OpenGL_accelerate module loaded"
    try:
        import robosuite
    except ImportError as e:
        raise MissingDependencyError(f'robomimic tasks need robosuite 1.5 ({e}): pip install -e ".[robomimic]"') from e
    logger.setLevel(logging.WARNING)  # per-env "Loading controller" INFO lines
    return robosuite


def convert_controller_config(controller: Mapping[str, Any], robots: Sequence[str]) -> dict[str, Any]:
    """robosuite <= 1.4 part controller config (e.g. OSC_POSE) -> robosuite 1.5 composite config.

    Keys renamed in 1.5 are translated, and delta actions stay in the world frame as in 1.4 (unless the config
    names `input_ref_frame`). A config that already is composite (has `body_parts`) is returned unchanged.
    """
    import_robosuite()
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config

    if "body_parts" in controller:
        return dict(controller)
    part = dict(controller)
    if "damping" in part:
        part["damping_ratio"] = part.pop("damping")
    if "damping_limits" in part:
        part["damping_ratio_limits"] = part.pop("damping_limits")
    if "control_delta" in part:
        part["input_type"] = "delta" if part.pop("control_delta") else "absolute"
    part.setdefault("input_ref_frame", "world")
    return refactor_composite_controller_config(part, robots[0], ["right"])


def make_robosuite_env(
    env_meta: Mapping[str, Any],
    *,
    cameras: Sequence[str] = (),
    camera_size: tuple[int, int] | None = None,
    offscreen: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """Build the raw robosuite env of a robomimic env_meta (see the module docstring for what is adapted).

    Args:
        env_meta: robomimic env_meta dict.
        cameras: camera observations to render (use_camera_obs is on iff non-empty).
        camera_size: (H, W) of camera observations; default: the env_meta's camera_heights/widths.
        offscreen: create the offscreen renderer even without camera observations (video frames).
        overrides: extra robosuite kwargs, applied last.

    Returns:
        the robosuite environment.
    """
    robosuite = import_robosuite()
    kwargs = copy.deepcopy(dict(env_meta["env_kwargs"]))
    robots = kwargs.get("robots", ["Panda"])
    robots = [robots] if isinstance(robots, str) else list(robots)
    kwargs["controller_configs"] = convert_controller_config(kwargs["controller_configs"], robots)
    kwargs["has_renderer"] = False
    kwargs["has_offscreen_renderer"] = bool(cameras) or offscreen
    kwargs["use_camera_obs"] = bool(cameras)
    if cameras:
        kwargs["camera_names"] = list(cameras)
        if camera_size is not None:
            kwargs["camera_heights"], kwargs["camera_widths"] = int(camera_size[0]), int(camera_size[1])
    kwargs.setdefault("hard_reset", False)
    kwargs.setdefault("lite_physics", False)
    kwargs.update(overrides or {})
    return robosuite.make(env_meta["env_name"], **kwargs)


def robomimic_observation(env_name: str, raw: Mapping[str, Any], cameras: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """robosuite observation dict -> robomimic-style dict (float64 low-dim arrays, `object`, CHW images).

    Args:
        env_name: robosuite env name (e.g. "PickPlaceCan").
        raw: robosuite's observation.
        cameras: cameras whose `<camera>_image` (H, W, 3) is converted to upright (3, H, W) uint8.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        if key.endswith("_image") or key.endswith("-state"):
            continue
        out[key] = np.asarray(value, dtype=np.float64).reshape(-1)
    object_keys = OBJECT_KEYS.get(env_name)
    if object_keys is not None:
        out["object"] = np.concatenate([out[k] for k in object_keys])
    elif "object-state" in raw:
        out["object"] = np.asarray(raw["object-state"], dtype=np.float64).reshape(-1)
    for cam in cameras:
        image = raw[f"{cam}_image"]
        out[f"{cam}_image"] = np.ascontiguousarray(image[::-1].transpose(2, 0, 1))
    return out


class RobosuiteEnv(gym.Env):
    """A thin gymnasium env around a robosuite env built from a robomimic env_meta.

    robosuite's own GymWrapper leaves `metadata=None` (which breaks AsyncVectorEnv) and flattens the observation,
    hence this class. Observation: Dict of robomimic keys (see `robomimic_observation`); action: Box (7,) per arm
    in [-1, 1] (OSC_POSE delta + gripper). Info: {"success": bool}.

    Args:
        env_meta: robomimic env_meta dict.
        cameras: camera observations (`<camera>_image`).
        camera_size: (H, W) of camera observations (default: env_meta's).
        render: enable `render()` (video frames of `render_camera` at `render_size`).
        render_size: (H, W) of `render()` frames.
        render_camera: camera for `render()`.
        terminate_on_success: end the episode (terminated=True) on success; default False like robomimic/DPPO.
        lite_physics: robosuite 1.5's lite_physics (None: env_meta's value, else False).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env_meta: Mapping[str, Any],
        *,
        cameras: Sequence[str] = (),
        camera_size: tuple[int, int] | None = None,
        render: bool = False,
        render_size: tuple[int, int] = (256, 256),
        render_camera: str = "agentview",
        terminate_on_success: bool = False,
        lite_physics: bool | None = None,
    ) -> None:
        overrides = {} if lite_physics is None else {"lite_physics": bool(lite_physics)}
        self.env_name = str(env_meta["env_name"])
        self.cameras = tuple(cameras)
        self.robosuite_env = make_robosuite_env(
            env_meta, cameras=self.cameras, camera_size=camera_size, offscreen=render, overrides=overrides
        )
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": int(self.robosuite_env.control_freq)}
        self.render_mode = "rgb_array" if render else None
        self.render_size = (int(render_size[0]), int(render_size[1]))
        self.render_camera = render_camera
        self.terminate_on_success = bool(terminate_on_success)
        n_robots = len(self.robosuite_env.robots)
        self.default_low_dim_keys = [f"robot{i}_{k}" for i in range(n_robots) for k in _PROPRIO] + ["object"]

        obs = self._reset_observation()
        obs_spaces: dict[str, spaces.Space] = {}
        for key, value in obs.items():
            if key.endswith("_image"):
                obs_spaces[key] = spaces.Box(0, 255, shape=value.shape, dtype=np.uint8)
            else:
                obs_spaces[key] = spaces.Box(-np.inf, np.inf, shape=value.shape, dtype=np.float64)
        self.observation_space = spaces.Dict(obs_spaces)
        low, high = self.robosuite_env.action_spec
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    def _reset_observation(self) -> dict[str, np.ndarray]:
        self.robosuite_env.reset()
        # robosuite 1.5 computes object-to-eef observables before the object pose they read, so right after a
        # reset they are zeros; a second (cached-state) pass fills them with the values 1.4 returned.
        raw = self.robosuite_env._get_observations(force_update=True)
        return robomimic_observation(self.env_name, raw, self.cameras)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset; with a seed, reseed robosuite's generator (object placement, robot init noise) first."""
        super().reset(seed=seed)
        if seed is not None:
            # The placement samplers hold a reference to this Generator, so reseed it in place.
            self.robosuite_env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        return self._reset_observation(), {}

    def step(self, action: np.ndarray):
        raw, reward, _, _ = self.robosuite_env.step(np.asarray(action, dtype=np.float64))
        success = bool(self.robosuite_env._check_success())
        obs = robomimic_observation(self.env_name, raw, self.cameras)
        return obs, float(reward), success and self.terminate_on_success, False, {"success": success}

    def render(self) -> np.ndarray | None:
        """Upright RGB frame (H, W, 3) uint8 of `render_camera`, or None when rendering is off."""
        if self.render_mode is None:
            return None
        h, w = self.render_size
        frame = self.robosuite_env.sim.render(camera_name=self.render_camera, height=h, width=w)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self.robosuite_env.close()


def _validate_kwargs(name: str, env_kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(env_kwargs) - set(_SUITE_KWARGS))
    if unknown:
        raise EnvConfigError(f"env.env_kwargs: {unknown} not accepted by {name}; accepted: {list(_SUITE_KWARGS)}")


@register_suite(
    "robomimic",
    max_episode_steps={"lift": 300, "can": 300, "square": 400, "transport": 800},
    extra="robomimic",
    requires=("robosuite", "mujoco"),
    obs_kind="robosuite",
    default_wrapper="robomimic_lowdim",
    uses_gl=True,
    validate_kwargs=_validate_kwargs,
)
def make_robomimic_env(spec: EnvSpec) -> gym.Env:
    """Build a `RobosuiteEnv` for lift/can/square/transport with its time limit.

    Cameras and their size come from the `robomimic_image` wrapper config when present (image_keys, shape_meta
    or image_size), else from the env_meta; the env_meta defaults to `<task>-img.json` for pixel configs.
    """
    image_cfg = spec.wrappers.get("robomimic_image")
    meta = load_env_meta(spec.name, spec.env_meta_path, image=image_cfg is not None)
    cameras: list[str] = []
    size: tuple[int, int] | None = None
    if image_cfg is not None:
        requested, size = image_request(image_cfg)
        names = meta["env_kwargs"].get("camera_names", ["agentview"])
        cameras = requested if requested is not None else ([names] if isinstance(names, str) else list(names))
    env = RobosuiteEnv(
        meta,
        cameras=cameras,
        camera_size=size,
        render=spec.render,
        render_size=spec.render_size,
        render_camera=spec.render_camera or "agentview",
        **dict(spec.env_kwargs),
    )
    return gym.wrappers.TimeLimit(env, max_episode_steps=spec.max_episode_steps)
