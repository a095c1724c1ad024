"""Scripted, human-like demonstrators for the robosuite tasks of robomimic (lift, can, square).

The policies command robosuite's OSC_POSE controller in *delta* mode with robomimic's settings (control_freq
20, inputs in [-1, 1] scaled to +-0.05 m and +-0.5 rad per step). An action is 7-D: `[dx, dy, dz, drx, dry,
drz, gripper]`, the rotation an axis-angle delta in the robot base frame (which robosuite places without
rotation, so base frame = world frame), gripper -1 = open, +1 = closed.

Each policy is a small phase machine (approach, descend, grasp, lift, ...) driven by a proportional controller
on the gripper site pose. Human-like variation is sampled per episode (see `HumanStyle`): temporally
correlated action noise, random pauses between phases, random approach heights, grasp offsets and speeds,
occasional slow segments. This keeps behaviour cloning easy but not trivial, as with robomimic's multi-human
("mh") data.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Controller scale (robomimic env_meta: output_max 0.05 m and 0.5 rad for an input of 1).
POS_SCALE = 0.05
ROT_SCALE = 0.5
GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0


@dataclass
class HumanStyle:
    """Per-episode style parameters of a scripted operator.

    Attributes:
        noise_std: std of the correlated noise added to the position command (normalised action units).
        noise_corr: AR(1) coefficient of that noise (0 = white, close to 1 = slowly drifting).
        pause_prob: probability of a pause when a phase ends.
        pause_steps: (low, high) inclusive range of a pause length in env steps.
        speed_range: (low, high) range of the per-phase speed cap (max |position action|).
        slow_prob: probability that a phase runs at a reduced speed (x0.5 - x0.75).
        gain: proportional gain from position error (in units of the 5 cm action scale) to action.
    """

    noise_std: float = 0.08
    noise_corr: float = 0.8
    pause_prob: float = 0.25
    pause_steps: tuple[int, int] = (2, 8)
    speed_range: tuple[float, float] = (0.6, 1.0)
    slow_prob: float = 0.15
    gain: float = 1.3

    @classmethod
    def sample(cls, rng: np.random.Generator, variation: float = 1.0) -> HumanStyle:
        """Draw an operator style; `variation` in [0, 1] scales all randomness (0 = clean scripted demos)."""
        v = float(np.clip(variation, 0.0, 1.0))
        return cls(
            noise_std=v * float(rng.uniform(0.03, 0.12)),
            noise_corr=float(rng.uniform(0.6, 0.9)),
            pause_prob=v * float(rng.uniform(0.1, 0.4)),
            speed_range=(1.0 - 0.5 * v * float(rng.uniform(0.5, 1.0)), 1.0),
            slow_prob=v * 0.2,
            gain=float(rng.uniform(1.0, 1.6)) if v > 0 else 1.3,
        )


@dataclass
class Phase:
    """One segment of a scripted demonstration.

    Attributes:
        name: for logging.
        target: callable returning the desired gripper-site position (3,) in the world frame.
        gripper: gripper command held during the phase.
        tol: position tolerance (m) that ends the phase.
        min_steps: the phase lasts at least this many steps (e.g. to let the gripper close).
        max_steps: the phase ends after this many steps even if the target was not reached.
        speed: cap on |position action| (normalised units), before noise.
        noise_scale: multiplier on the operator's noise (small near contact).
        done: optional extra condition that also ends the phase.
        rot: optional callable giving the gripper orientation (3, 3) to hold from this phase on; it is evaluated
            once, when the phase starts.
    """

    name: str
    target: Callable[[], np.ndarray]
    gripper: float
    tol: float = 0.01
    min_steps: int = 0
    max_steps: int = 80
    speed: float = 1.0
    noise_scale: float = 1.0
    done: Callable[[], bool] | None = None
    rot: Callable[[], np.ndarray] | None = None


def yaw_frame(yaw: float) -> np.ndarray:
    """Rotation matrix (3, 3) of a top-down grasp: site z axis pointing down, site x axis (the finger closing
    direction of the Panda gripper) at angle `yaw` in the horizontal plane."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle vector (3,) of the world-frame rotation taking `current` (3, 3) to `target` (3, 3)."""
    r = target @ current.T
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = float(np.arccos(cos))
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-8:  # angle close to pi: take the axis from the symmetric part
        w, v = np.linalg.eigh((r + r.T) / 2.0)
        axis = v[:, int(np.argmax(w))]
        norm = 1.0
    return axis / norm * angle


def quat_yaw(quat_xyzw: np.ndarray) -> float:
    """Yaw (rotation about world z) of a quaternion in robosuite's (x, y, z, w) order."""
    x, y, z, w = quat_xyzw
    return float(np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)))


def closest_symmetric_yaw(object_yaw: float, current_yaw: float, period: float) -> float:
    """The angle `object_yaw + k * period` nearest to `current_yaw` (grasping a symmetric object)."""
    k = np.round((current_yaw - object_yaw) / period)
    return float(object_yaw + k * period)


class ScriptedPolicy(ABC):
    """Base class: a phase machine over the gripper-site pose of a single-arm robosuite env.

    Subclasses implement `_build_phases()`; `act()` returns the next 7-D action and `finished` tells when the
    script has nothing left to do.
    """

    def __init__(self, env: Any, rng: np.random.Generator, variation: float = 1.0) -> None:
        self.env = env
        self.rng = rng
        self.variation = variation
        self.style = HumanStyle()  # drawn per episode in reset()
        self.phases: list[Phase] = []
        self.phase_idx = 0
        self.phase_steps = 0
        self.pause_left = 0
        self.noise = np.zeros(3)
        self.target_rot = np.eye(3)
        self.gripper = GRIPPER_OPEN
        self.phase_speed = 1.0

    # -- robot / object state -----------------------------------------------------------------------------
    @property
    def site_id(self) -> int:
        robot = self.env.robots[0]
        return int(robot.eef_site_id["right"])

    def site_pos(self) -> np.ndarray:
        """World position (3,) of the gripper site (the point between the fingertips)."""
        return np.array(self.env.sim.data.site_xpos[self.site_id])

    def site_rot(self) -> np.ndarray:
        """World rotation (3, 3) of the gripper site."""
        return np.array(self.env.sim.data.site_xmat[self.site_id]).reshape(3, 3)

    def body_pos(self, body_id: int) -> np.ndarray:
        return np.array(self.env.sim.data.body_xpos[body_id])

    def body_quat_xyzw(self, body_id: int) -> np.ndarray:
        wxyz = np.array(self.env.sim.data.body_xquat[body_id])
        return np.array([wxyz[1], wxyz[2], wxyz[3], wxyz[0]])

    def current_yaw(self) -> float:
        x_axis = self.site_rot()[:, 0]
        return float(np.arctan2(x_axis[1], x_axis[0]))

    # -- script ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Call after `env.reset()`: samples the episode's style and builds its phases."""
        self.style = HumanStyle.sample(self.rng, self.variation)
        self.phases = self._build_phases()
        self.phase_idx = 0
        self.phase_steps = 0
        self.pause_left = 0
        self.noise = np.zeros(3)
        self._start_phase()

    @abstractmethod
    def _build_phases(self) -> list[Phase]:
        """The episode's phases; called by `reset()` right after the env was reset."""

    @property
    def finished(self) -> bool:
        return self.phase_idx >= len(self.phases)

    @property
    def phase_name(self) -> str:
        return "done" if self.finished else self.phases[self.phase_idx].name

    def _start_phase(self) -> None:
        self.phase_steps = 0
        if self.finished:
            return
        phase = self.phases[self.phase_idx]
        if phase.rot is not None:
            self.target_rot = phase.rot()
        lo, hi = self.style.speed_range
        speed = float(self.rng.uniform(lo, hi))
        if self.rng.random() < self.style.slow_prob:
            speed *= float(self.rng.uniform(0.5, 0.75))
        self.phase_speed = speed

    def _phase_complete(self, phase: Phase) -> bool:
        if self.phase_steps >= phase.max_steps:
            log.debug("phase %s timed out", phase.name)
            return True
        if self.phase_steps < phase.min_steps:
            return False
        if phase.done is not None and phase.done():
            return True
        return bool(np.linalg.norm(phase.target() - self.site_pos()) < phase.tol)

    def act(self) -> np.ndarray:
        """Next action (7,) float64 in [-1, 1]."""
        while not self.finished and self._phase_complete(self.phases[self.phase_idx]):
            self.phase_idx += 1
            self._start_phase()
            if self.rng.random() < self.style.pause_prob:
                self.pause_left = int(self.rng.integers(self.style.pause_steps[0], self.style.pause_steps[1] + 1))
        action = np.zeros(7)
        if self.finished:
            action[6] = self.gripper
            return action
        phase = self.phases[self.phase_idx]
        self.gripper = phase.gripper
        self.noise = self.style.noise_corr * self.noise + self.style.noise_std * np.sqrt(
            1.0 - self.style.noise_corr**2
        ) * self.rng.standard_normal(3)
        if self.pause_left > 0:  # the operator hesitates: hold the pose, small tremor only
            self.pause_left -= 1
            action[:3] = 0.3 * self.noise
        else:
            self.phase_steps += 1
            err = (phase.target() - self.site_pos()) / POS_SCALE
            cmd = self.style.gain * err
            cap = phase.speed * self.phase_speed
            norm = np.linalg.norm(cmd)
            if norm > cap:
                cmd *= cap / norm
            action[:3] = cmd + phase.noise_scale * self.noise
        rot_err = rotation_error(self.target_rot, self.site_rot()) / ROT_SCALE
        action[3:6] = np.clip(1.5 * rot_err, -0.6, 0.6)
        action[6] = self.gripper
        return np.clip(action, -1.0, 1.0)


class LiftPolicy(ScriptedPolicy):
    """Lift: grasp the cube from above (yaw aligned to a cube face) and raise it."""

    def _build_phases(self) -> list[Phase]:
        env, rng, v = self.env, self.rng, self.variation
        cube_id = int(env.cube_body_id)
        cube_yaw = quat_yaw(self.body_quat_xyzw(cube_id))
        self.target_rot = yaw_frame(closest_symmetric_yaw(cube_yaw, self.current_yaw(), np.pi / 2))
        offset = np.array([*(v * rng.uniform(-0.008, 0.008, size=2)), v * rng.uniform(-0.008, 0.004)])
        pre_h = float(rng.uniform(0.05, 0.12)) if v > 0 else 0.08
        lift_h = float(rng.uniform(0.12, 0.2)) if v > 0 else 0.15
        hover_z = float(rng.uniform(0.0, 0.03))
        start = self.body_pos(cube_id)

        def above() -> np.ndarray:
            return self.body_pos(cube_id) + offset + np.array([0.0, 0.0, pre_h])

        def grasp() -> np.ndarray:
            return self.body_pos(cube_id) + offset

        def lifted() -> np.ndarray:
            return np.array([start[0], start[1], start[2] + lift_h]) + offset

        closed_steps = int(rng.integers(6, 11))
        return [
            Phase("approach", above, GRIPPER_OPEN, tol=0.015, max_steps=90),
            Phase("descend", grasp, GRIPPER_OPEN, tol=0.006, max_steps=60, speed=0.7, noise_scale=0.4),
            Phase(
                "close",
                grasp,
                GRIPPER_CLOSED,
                tol=-1.0,
                min_steps=closed_steps,
                max_steps=closed_steps,
                noise_scale=0.2,
            ),
            Phase("lift", lifted, GRIPPER_CLOSED, tol=0.02 + hover_z, max_steps=80, speed=0.8, noise_scale=0.6),
        ]


class CanPolicy(ScriptedPolicy):
    """PickPlaceCan: pick the can from bin 1 and drop it into its quadrant of bin 2."""

    def _build_phases(self) -> list[Phase]:
        env, rng, v = self.env, self.rng, self.variation
        can_id = int(env.obj_body_id["Can"])
        self.target_rot = yaw_frame(self.current_yaw() + v * float(rng.uniform(-0.3, 0.3)))
        goal_xy = np.array(env.target_bin_placements[env.object_to_id["can"]][:2], dtype=float)
        # aim at the part of the quadrant nearer the robot (the far corner is at the edge of the arm's reach)
        goal_xy += np.array([-0.035, -0.045]) + v * rng.uniform(-0.025, 0.025, size=2)
        bin_z = float(env.bin2_pos[2])
        offset = np.array([*(v * rng.uniform(-0.006, 0.006, size=2)), v * rng.uniform(-0.01, 0.01)])
        pre_h = float(rng.uniform(0.06, 0.12)) if v > 0 else 0.08
        carry_z = bin_z + (float(rng.uniform(0.22, 0.28)) if v > 0 else 0.25)
        release_z = bin_z + (float(rng.uniform(0.14, 0.19)) if v > 0 else 0.16)
        mid = float(rng.uniform(0.3, 0.7))

        def above() -> np.ndarray:
            return self.body_pos(can_id) + offset + np.array([0.0, 0.0, pre_h])

        def grasp() -> np.ndarray:
            return self.body_pos(can_id) + offset

        pick_xy: list[np.ndarray] = []

        def lift() -> np.ndarray:
            if not pick_xy:
                pick_xy.append(self.site_pos()[:2].copy())
            return np.array([*pick_xy[0], carry_z])

        def via() -> np.ndarray:
            xy = pick_xy[0] + mid * (goal_xy - pick_xy[0]) if pick_xy else goal_xy
            return np.array([*xy, carry_z + 0.02])

        def over_goal() -> np.ndarray:
            return np.array([*goal_xy, carry_z])

        def lower() -> np.ndarray:
            return np.array([*goal_xy, release_z])

        closed_steps = int(rng.integers(6, 11))
        open_steps = int(rng.integers(4, 9))
        return [
            Phase("approach", above, GRIPPER_OPEN, tol=0.015, max_steps=100),
            Phase("descend", grasp, GRIPPER_OPEN, tol=0.008, max_steps=60, speed=0.7, noise_scale=0.4),
            Phase(
                "close",
                grasp,
                GRIPPER_CLOSED,
                tol=-1.0,
                min_steps=closed_steps,
                max_steps=closed_steps,
                noise_scale=0.2,
            ),
            Phase("lift", lift, GRIPPER_CLOSED, tol=0.03, max_steps=60, speed=0.8, noise_scale=0.5),
            Phase("transport", via, GRIPPER_CLOSED, tol=0.05, max_steps=80),
            Phase("over_goal", over_goal, GRIPPER_CLOSED, tol=0.02, max_steps=80),
            Phase("lower", lower, GRIPPER_CLOSED, tol=0.02, max_steps=40, speed=0.6, noise_scale=0.5),
            Phase(
                "release",
                lower,
                GRIPPER_OPEN,
                tol=-1.0,
                min_steps=open_steps,
                max_steps=open_steps,
                noise_scale=0.3,
            ),
        ]


class SquarePolicy(ScriptedPolicy):
    """NutAssemblySquare: grasp the square nut by its handle, turn it square to the peg and drop it over the peg.

    The nut's hole only slides down the peg when the nut's yaw matches the peg's (modulo 90 degrees) and its
    centre is within about a centimetre of the peg axis, so the carry phase turns the wrist by the measured yaw
    mismatch and the alignment phases track the nut centre (not the gripper) over the peg. Success also needs
    the gripper at least 7 cm from the nut, hence the final retreat.
    """

    def _build_phases(self) -> list[Phase]:
        env, rng, v = self.env, self.rng, self.variation
        nut = env.nuts[0]
        nut_id = int(env.obj_body_id[nut.name])
        handle_site = env.sim.model.site_name2id(nut.important_sites["handle"])
        peg_id = int(env.peg1_body_id)
        table_z = float(env.table_offset[2])

        def handle() -> np.ndarray:
            return np.array(env.sim.data.site_xpos[handle_site])

        def nut_yaw() -> float:
            return quat_yaw(self.body_quat_xyzw(nut_id))

        def peg_yaw() -> float:
            return quat_yaw(self.body_quat_xyzw(peg_id))

        # fingers close across the handle, which runs along the nut's local x axis
        self.target_rot = yaw_frame(closest_symmetric_yaw(nut_yaw() + np.pi / 2, self.current_yaw(), np.pi))

        def squared_up() -> np.ndarray:
            # Turn the wrist so the nut is square to the peg (any multiple of 90 degrees fits). Among those turns
            # prefer one that leaves the handle (the gripper) on the robot's side of the nut: the peg is near
            # the edge of the arm's reach, so a handle on the far side cannot get the nut over it.
            base = closest_symmetric_yaw(peg_yaw() - nut_yaw(), 0.0, np.pi / 2)
            d = handle() - self.body_pos(nut_id)
            handle_dir = float(np.arctan2(d[1], d[0]))
            turns = [base + k * np.pi / 2 for k in range(-2, 3) if abs(base + k * np.pi / 2) <= 0.6 * np.pi]
            turn = min(turns, key=lambda a: max(0.0, np.cos(handle_dir + a)) + 0.2 * abs(a))
            return yaw_frame(self.current_yaw() + turn)

        offset = np.array([*(v * rng.uniform(-0.004, 0.004, size=2)), v * rng.uniform(-0.004, 0.003)])
        pre_h = float(rng.uniform(0.06, 0.1)) if v > 0 else 0.08
        carry_z = table_z + (float(rng.uniform(0.17, 0.21)) if v > 0 else 0.19)
        drop_z = table_z + (float(rng.uniform(0.05, 0.07)) if v > 0 else 0.06)
        retreat_h = float(rng.uniform(0.08, 0.12))

        def above() -> np.ndarray:
            return handle() + offset + np.array([0.0, 0.0, pre_h])

        def grasp() -> np.ndarray:
            return handle() + offset

        def lift() -> np.ndarray:
            return np.array([*self.site_pos()[:2], carry_z])

        def nut_over_peg(z: float) -> np.ndarray:
            # gripper target that puts the nut centre over the peg axis
            xy = self.body_pos(peg_id)[:2] - (self.body_pos(nut_id) - self.site_pos())[:2]
            return np.array([*xy, z])

        released_at: list[np.ndarray] = []

        def retreat() -> np.ndarray:
            if not released_at:
                released_at.append(self.site_pos().copy())
            return released_at[0] + np.array([0.0, 0.0, retreat_h])

        closed_steps = int(rng.integers(6, 10))
        open_steps = int(rng.integers(4, 8))
        return [
            Phase("approach", above, GRIPPER_OPEN, tol=0.012, max_steps=100),
            Phase("descend", grasp, GRIPPER_OPEN, tol=0.007, max_steps=60, speed=0.6, noise_scale=0.3),
            Phase(
                "close",
                grasp,
                GRIPPER_CLOSED,
                tol=-1.0,
                min_steps=closed_steps,
                max_steps=closed_steps,
                noise_scale=0.1,
            ),
            Phase("lift", lift, GRIPPER_CLOSED, tol=0.02, max_steps=50, speed=0.8, noise_scale=0.4, rot=squared_up),
            Phase("over_peg", lambda: nut_over_peg(carry_z), GRIPPER_CLOSED, tol=0.015, max_steps=120),
            Phase(
                "align",
                lambda: nut_over_peg(carry_z - 0.03),
                GRIPPER_CLOSED,
                tol=0.004,
                min_steps=4,
                max_steps=60,
                speed=0.4,
                noise_scale=0.15,
            ),
            Phase(
                "down", lambda: nut_over_peg(drop_z), GRIPPER_CLOSED, tol=0.01, max_steps=50, speed=0.5, noise_scale=0.1
            ),
            Phase(
                "release",
                lambda: nut_over_peg(drop_z),
                GRIPPER_OPEN,
                tol=-1.0,
                min_steps=open_steps,
                max_steps=open_steps,
                noise_scale=0.1,
            ),
            Phase("retreat", retreat, GRIPPER_OPEN, tol=0.02, max_steps=40, speed=0.7, noise_scale=0.5),
        ]


POLICIES: dict[str, type[ScriptedPolicy]] = {"lift": LiftPolicy, "can": CanPolicy, "square": SquarePolicy}


@dataclass
class EpisodeLog:
    """What a scripted rollout produced. Arrays have one row per env step T.

    Attributes:
        obs: per observation key, (T, ...) arrays (the observation the action was taken from).
        actions: (T, 7) float64.
        rewards: (T,) float64 (robosuite sparse reward).
        states: (T, S) flattened MuJoCo states, each taken before the step.
        success: whether the task was solved by the end.
        model_xml: the MuJoCo model XML (robomimic stores it per demo).
    """

    obs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    success: bool = False
    model_xml: str = ""

    def __len__(self) -> int:
        return len(self.actions)
