"""Min/max normalisation of observations and actions, and the task wrappers that apply it.

`normalization.npz` (written by the dataset scripts) holds per-dimension `obs_min`, `obs_max`, `action_min` and
`action_max`. Observations map to roughly [-1, 1] with DPPO's formula

    o_norm = 2 * ((o - obs_min) / (obs_max - obs_min + 1e-6) - 0.5)

(no clipping unless `clamp_obs`), and policy actions in [-1, 1] map back to the env's units with the exact inverse
of the dataset formula a_norm = 2 * (a - min) / (max - min + 1e-6) - 1:

    a_raw = (a_norm + 1) / 2 * (action_max - action_min + 1e-6) + action_min

DPPO's wrapper drops the 1e-6 here, so its round trip data -> env is off by ~1e-6 relative; we keep the exact inverse (a
deliberate, harmless fix: docs/algorithms.md#d19-action-unnormalization). Actions are *not* clipped here: the vector env
clips (or rejects) normalised actions outside [-1, 1] before they reach the sub-envs (see
`env.vector.ChunkedVectorEnv`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.registry import EnvConfigError, register_wrapper

log = logging.getLogger(__name__)

_EPS = 1e-6


@dataclass(frozen=True)
class Normalization:
    """Per-dimension min/max statistics for observations (Do,) and actions (Da,), float64."""

    obs_min: np.ndarray
    obs_max: np.ndarray
    action_min: np.ndarray
    action_max: np.ndarray
    exact_identity: bool = False

    @classmethod
    def from_npz(cls, path: str | Path) -> Normalization:
        """Load `obs_min`, `obs_max`, `action_min`, `action_max` from an npz file.

        Raises:
            FileNotFoundError: the file does not exist (the message says how to make one).
            EnvConfigError: a key is missing or the shapes disagree.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"normalization file not found: {path} (it is written next to train.npz by the dataset scripts "
                "in script/dataset/; set the wrapper's normalization_path to null for identity scaling)"
            )
        with np.load(path) as data:
            return cls.from_arrays({k: data[k] for k in data.files}, str(path))

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], source: str) -> Normalization:
        """The statistics from a mapping with the npz keys (e.g. those a checkpoint carries); `source` names it in
        errors.

        Raises:
            EnvConfigError: a key is missing or the shapes disagree.
        """
        missing = [k for k in ("obs_min", "obs_max", "action_min", "action_max") if k not in arrays]
        if missing:
            raise EnvConfigError(f"{source}: missing key(s) {missing}")
        flat = {k: np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in ("obs_min", "obs_max")}
        flat |= {k: np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in ("action_min", "action_max")}
        norm = cls(flat["obs_min"], flat["obs_max"], flat["action_min"], flat["action_max"])
        if norm.obs_min.shape != norm.obs_max.shape or norm.action_min.shape != norm.action_max.shape:
            raise EnvConfigError(f"{source}: min/max shapes differ")
        return norm

    @classmethod
    def identity(cls, obs_dim: int, action_dim: int) -> Normalization:
        """Ranges [-1, 1]; the wrappers then pass observations and actions through unchanged."""
        return cls(-np.ones(obs_dim), np.ones(obs_dim), -np.ones(action_dim), np.ones(action_dim), True)

    @property
    def obs_dim(self) -> int:
        return int(self.obs_min.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.action_min.shape[0])

    def save(self, path: str | Path) -> None:
        """Write the statistics as an npz file with DPPO's keys."""
        np.savez(
            path, obs_min=self.obs_min, obs_max=self.obs_max, action_min=self.action_min, action_max=self.action_max
        )

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Raw observation (..., Do) -> normalised (..., Do), same float dtype as the statistics (float64)."""
        return 2.0 * ((obs - self.obs_min) / (self.obs_max - self.obs_min + _EPS) - 0.5)

    def unnormalize_obs(self, obs: np.ndarray) -> np.ndarray:
        """Inverse of `normalize_obs`: (..., Do) -> (..., Do)."""
        return (obs / 2.0 + 0.5) * (self.obs_max - self.obs_min + _EPS) + self.obs_min

    def normalize_action(self, action: np.ndarray) -> np.ndarray:
        """Raw action (..., Da) -> normalised (..., Da), the dataset formula."""
        return 2.0 * (action - self.action_min) / (self.action_max - self.action_min + _EPS) - 1.0

    def unnormalize_action(self, action: np.ndarray) -> np.ndarray:
        """Normalised action (..., Da) in [-1, 1] -> raw env action (..., Da); exact inverse of normalize_action."""
        return (action + 1.0) / 2.0 * (self.action_max - self.action_min + _EPS) + self.action_min


def _load_normalization(
    path: str | None, arrays: Mapping[str, Any] | None, obs_dim: int, action_dim: int, where: str
) -> Normalization:
    """The statistics a task wrapper uses: `arrays` when given, else the file at `path`, else identity."""
    if arrays is not None:
        source = "the given normalization arrays"
        norm = Normalization.from_arrays(arrays, source)
    elif path is None:
        log.info("%s: normalization_path is null -> identity normalisation", where)
        return Normalization.identity(obs_dim, action_dim)
    else:
        source = str(path)
        norm = Normalization.from_npz(path)
    if norm.obs_dim != obs_dim or norm.action_dim != action_dim:
        raise EnvConfigError(
            f"{where}: {source} has obs dim {norm.obs_dim} / action dim {norm.action_dim}, but the env has "
            f"obs dim {obs_dim} / action dim {action_dim}"
        )
    return norm


class NormalizedTask(gym.Wrapper):
    """Shared part of the task wrappers: action unnormalisation and the observation affine map.

    The raw observation is either a flat array (`state_keys` None) or a dict whose `state_keys` are concatenated;
    `image_keys`, if any, are stacked on channels into "rgb". `observation` and `actions_to_env` are public so
    that `MultiStep`, when it sits directly on a task wrapper, can unnormalise a whole chunk at once and
    normalise only the observations it returns (same results, less per-step work). Subclasses therefore put all
    their behaviour in `observation` / `actions_to_env`, not in `step` / `reset`.
    """

    def _setup(
        self,
        norm: Normalization,
        clamp_obs: bool,
        state_keys: Sequence[str] | None = None,
        image_keys: Sequence[str] = (),
        rgb_space: spaces.Box | None = None,
    ) -> None:
        self.normalization = norm
        self.clamp_obs = bool(clamp_obs)
        self._state_keys = None if state_keys is None else list(state_keys)
        self._image_keys = list(image_keys)
        # Precomputed affine maps: o_norm = o * obs_scale + obs_shift, a_raw = a * act_scale + act_shift.
        obs_range = norm.obs_max - norm.obs_min + _EPS
        self._obs_scale = 2.0 / obs_range
        self._obs_shift = -2.0 * norm.obs_min / obs_range - 1.0
        self._act_scale = (norm.action_max - norm.action_min + _EPS) / 2.0
        self._act_shift = self._act_scale + norm.action_min
        if norm.exact_identity:  # normalization_path null: pass values through unchanged (no 1e-6 drift)
            self._obs_scale, self._obs_shift, self._act_scale, self._act_shift = 1.0, 0.0, 1.0, 0.0
        low = -1.0 if self.clamp_obs else -np.inf
        high = 1.0 if self.clamp_obs else np.inf
        obs_spaces: dict[str, spaces.Space] = {"state": spaces.Box(low, high, shape=(norm.obs_dim,), dtype=np.float32)}
        if rgb_space is not None:
            obs_spaces["rgb"] = rgb_space
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(norm.action_dim,), dtype=np.float32)

    def actions_to_env(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., Da) -> raw env actions (..., Da), float64."""
        return np.asarray(actions, dtype=np.float64) * self._act_scale + self._act_shift

    def observation(self, obs: Any) -> dict[str, np.ndarray]:
        """Raw env observation -> {"state": (Do,) float32 normalised [, "rgb": (C, H, W) uint8]}."""
        if self._state_keys is None:
            raw = np.asarray(obs, dtype=np.float64)
        else:
            raw = np.concatenate([np.asarray(obs[k], dtype=np.float64).reshape(-1) for k in self._state_keys])
        state = raw * self._obs_scale + self._obs_shift
        if self.clamp_obs:
            np.clip(state, -1.0, 1.0, out=state)
        out = {"state": state.astype(np.float32)}
        if len(self._image_keys) == 1:
            out["rgb"] = obs[self._image_keys[0]]
        elif self._image_keys:
            out["rgb"] = np.concatenate([obs[k] for k in self._image_keys], axis=0)
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(self.actions_to_env(action))
        return self.observation(obs), reward, terminated, truncated, info


@register_wrapper("d3il_lowdim", role="task", obs_kinds=("box",))
@register_wrapper("mujoco_locomotion_lowdim", role="task", obs_kinds=("box",))
class LowdimNormalization(NormalizedTask):
    """Task wrapper for flat Box observations (gym locomotion, kitchen, avoid).

    Observation: raw (Do,) -> {"state": (Do,) float32}, normalised. Action: (Da,) in [-1, 1] -> raw units.
    Registered as `mujoco_locomotion_lowdim` and `d3il_lowdim` (DPPO's names; identical maths). Unlike DPPO's D3IL
    wrapper, `terminated` is passed through (the avoid task ends at a collision or at the
    goal line; docs/algorithms.md#d22-avoid-termination).

    Args:
        env: raw env with a Box observation space (Do,) and a Box action space (Da,).
        normalization_path: normalization.npz, or None for identity scaling.
        clamp_obs: clip normalised observations to [-1, 1].
        normalization: the statistics as arrays (obs_min, obs_max, action_min, action_max), used instead of
            normalization_path (e.g. those a checkpoint carries).
    """

    def __init__(
        self,
        env: gym.Env,
        normalization_path: str | None = None,
        clamp_obs: bool = False,
        normalization: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Box) or len(env.observation_space.shape) != 1:
            raise EnvConfigError(f"low-dim normalisation needs a flat Box observation, got {env.observation_space}")
        obs_dim = env.observation_space.shape[0]
        action_dim = cast(spaces.Box, env.action_space).shape[0]
        norm = _load_normalization(normalization_path, normalization, obs_dim, action_dim, "low-dim normalisation")
        self._setup(norm, clamp_obs)


def _check_keys(env: gym.Env, keys: Sequence[str], what: str) -> None:
    available = list(cast(spaces.Dict, env.observation_space).spaces)
    unknown = [k for k in keys if k not in available]
    if unknown:
        raise EnvConfigError(f"{what}: unknown observation key(s) {unknown}; available: {', '.join(available)}")


def _default_low_dim_keys(env: gym.Env, with_object: bool) -> list[str]:
    keys = list(env.get_wrapper_attr("default_low_dim_keys"))
    return keys if with_object else [k for k in keys if k != "object"]


@register_wrapper("robomimic_lowdim", role="task", obs_kinds=("robosuite",))
class RobomimicLowdim(NormalizedTask):
    """Task wrapper for robosuite tasks with low-dimensional observations.

    Observation: the raw dict -> {"state": concat(low_dim_keys) (Do,) float32}, normalised (robomimic's `object`
    key is the task's object state in robosuite 1.4's layout, see env/suites/robomimic.py). Action (Da,) in
    [-1, 1] -> raw OSC_POSE input. Rewards, `terminated` and infos pass through (the raw env never terminates
    unless `terminate_on_success` is set; DPPO's wrapper forces done=False the same way).

    Args:
        env: a `RobosuiteEnv`.
        normalization_path: normalization.npz, or None for identity scaling.
        low_dim_keys: keys to concatenate, in order. None: the task's robomimic default
            (robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos [, robot1_...], object).
        clamp_obs: clip normalised observations to [-1, 1].
        normalization: the statistics as arrays (obs_min, obs_max, action_min, action_max), used instead of
            normalization_path (e.g. those a checkpoint carries).
    """

    def __init__(
        self,
        env: gym.Env,
        normalization_path: str | None = None,
        low_dim_keys: Sequence[str] | None = None,
        clamp_obs: bool = False,
        normalization: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(env)
        self.low_dim_keys = list(low_dim_keys) if low_dim_keys is not None else _default_low_dim_keys(env, True)
        _check_keys(env, self.low_dim_keys, "robomimic_lowdim.low_dim_keys")
        obs_space = cast(spaces.Dict, env.observation_space)  # robosuite: a Dict of Boxes
        obs_dim = sum(int(np.prod(cast(spaces.Box, obs_space[k]).shape)) for k in self.low_dim_keys)
        action_dim = cast(spaces.Box, env.action_space).shape[0]
        norm = _load_normalization(normalization_path, normalization, obs_dim, action_dim, "robomimic_lowdim")
        self._setup(norm, clamp_obs, self.low_dim_keys)


def image_request(kwargs: Mapping[str, Any]) -> tuple[list[str] | None, tuple[int, int] | None]:
    """Cameras and image size a `robomimic_image` config asks for.

    Args:
        kwargs: the wrapper's config kwargs (image_keys, shape_meta, image_size).

    Returns:
        (camera names, or None when the config leaves them to the env_meta file;
         (H, W), or None when the config leaves the size to the env_meta file).
    """
    image_keys = kwargs.get("image_keys")
    cameras = None
    if image_keys is not None:
        cameras = [k[: -len("_image")] if k.endswith("_image") else k for k in image_keys]
    size = kwargs.get("image_size")
    shape_meta = kwargs.get("shape_meta")
    if shape_meta is not None:
        try:
            rgb_shape = list(shape_meta["obs"]["rgb"]["shape"])
        except (KeyError, TypeError):
            raise EnvConfigError("robomimic_image.shape_meta must contain obs.rgb.shape = [C, H, W]") from None
        if len(rgb_shape) != 3 or rgb_shape[0] % 3 or (cameras is not None and rgb_shape[0] != 3 * len(cameras)):
            raise EnvConfigError(
                f"robomimic_image.shape_meta.obs.rgb.shape {rgb_shape} does not fit the camera(s) {image_keys}: "
                "expected [3 * n_cameras, H, W] (cameras are stacked on channels)"
            )
        meta_size = (int(rgb_shape[1]), int(rgb_shape[2]))
        if size is not None and tuple(size) != meta_size:
            raise EnvConfigError(f"robomimic_image: image_size {list(size)} disagrees with shape_meta {rgb_shape}")
        size = meta_size
    if size is not None:
        if len(size) != 2 or int(size[0]) % 2 or int(size[1]) % 2:
            raise EnvConfigError(f"robomimic_image: image size must be two even numbers [H, W], got {size}")
        size = (int(size[0]), int(size[1]))
    return cameras, size


@register_wrapper("robomimic_image", role="task", obs_kinds=("robosuite",), needs_gl=True)
class RobomimicImage(NormalizedTask):
    """Task wrapper for robosuite tasks with camera observations.

    Observation: {"state": concat(low_dim_keys) (Do,) float32 normalised, "rgb": (3 * n_cameras, H, W) uint8},
    the cameras stacked on channels in `image_keys` order, channels first, upright (robosuite renders upside
    down in its default OpenGL convention; the raw env flips). Action (Da,) in [-1, 1] -> raw OSC_POSE input.

    Args:
        env: a `RobosuiteEnv` built with these cameras (the factory passes this config to the suite).
        normalization_path: normalization.npz for the low-dim part (the "-img" dataset's), or None.
        low_dim_keys: low-dim keys; None: the robot proprioception without `object` (DPPO: 9 dims for can).
        image_keys: camera observation keys, e.g. ["robot0_eye_in_hand_image"] or ["agentview_image"];
            None: every camera of the env_meta file, in its order.
        shape_meta: DPPO's shape_meta ({obs: {rgb: {shape: [C, H, W]}, state: {shape: [Do]}}, ...}); sets the
            render size and is checked against the env.
        image_size: [H, W], an alternative to shape_meta.
        clamp_obs: clip the normalised state to [-1, 1].
        normalization: the statistics as arrays (obs_min, obs_max, action_min, action_max), used instead of
            normalization_path (e.g. those a checkpoint carries).
    """

    def __init__(
        self,
        env: gym.Env,
        normalization_path: str | None = None,
        low_dim_keys: Sequence[str] | None = None,
        image_keys: Sequence[str] | None = None,
        shape_meta: Mapping[str, Any] | None = None,
        image_size: Sequence[int] | None = None,
        clamp_obs: bool = False,
        normalization: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(env)
        self.low_dim_keys = list(low_dim_keys) if low_dim_keys is not None else _default_low_dim_keys(env, False)
        obs_space = cast(spaces.Dict, env.observation_space)  # robosuite: a Dict of Boxes
        if image_keys is None:
            image_keys = [k for k in obs_space.spaces if k.endswith("_image")]
        self.image_keys = list(image_keys)
        if not self.image_keys:
            raise EnvConfigError("robomimic_image: the env renders no camera; set image_keys")
        _check_keys(env, self.low_dim_keys, "robomimic_image.low_dim_keys")
        _check_keys(env, self.image_keys, "robomimic_image.image_keys")
        image_request({"image_keys": self.image_keys, "shape_meta": shape_meta, "image_size": image_size})
        shapes = [cast(spaces.Box, obs_space[k]).shape for k in self.image_keys]
        if len({s[1:] for s in shapes}) != 1:
            raise EnvConfigError(f"robomimic_image: cameras {self.image_keys} have different sizes {shapes}")
        rgb_shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        obs_dim = sum(int(np.prod(cast(spaces.Box, obs_space[k]).shape)) for k in self.low_dim_keys)
        if shape_meta is not None:
            meta_rgb = tuple(shape_meta["obs"]["rgb"]["shape"])
            if meta_rgb != rgb_shape:
                raise EnvConfigError(f"robomimic_image: env renders {rgb_shape}, shape_meta says {meta_rgb}")
            meta_state = shape_meta.get("obs", {}).get("state", {}).get("shape")
            if meta_state is not None and int(np.prod(meta_state)) != obs_dim:
                raise EnvConfigError(
                    f"robomimic_image: low_dim_keys {self.low_dim_keys} give {obs_dim} dims, "
                    f"shape_meta.obs.state says {list(meta_state)}"
                )
        action_dim = cast(spaces.Box, env.action_space).shape[0]
        norm = _load_normalization(normalization_path, normalization, obs_dim, action_dim, "robomimic_image")
        rgb_space = spaces.Box(0, 255, shape=rgb_shape, dtype=np.uint8)
        self._setup(norm, clamp_obs, self.low_dim_keys, self.image_keys, rgb_space)
