"""Avoid: a fast planar obstacle-avoidance task in the spirit of D3IL's "Avoiding" (DPPO Fig. 7).

An end effector starts in a small region at the bottom of the workspace and must reach the goal line y = 0.8
through three rows of circular obstacles (1, 2 and 3 obstacles, staggered), which leaves many distinct routes
(left/right of the first obstacle, then one of the gaps in each following row). Plain numpy, tens of thousands of
steps per second.

* Observation (4,): [desired x, desired y, actual x, actual y].
* Action (2,): change of the *desired* position, each coordinate clipped to +-`max_step` (0.03). The desired
  position is clipped to the workspace; the actual position follows it with a first-order lag
  (p <- p + tracking_gain * (desired - p)), like a tracking controller.
* Reward: 1.0 on the step that crosses the goal line (success), `collision_penalty` (default 0) on a collision,
  0 otherwise. The episode terminates at the goal line or at a collision (the segment travelled this step comes
  within obstacle_radius + agent_radius of an obstacle centre); the time limit (default 100) truncates.

`avoid_m1`, `avoid_m2` and `avoid_m3` share these dynamics; they differ only in their demonstration data (which
routes the demonstrator uses). `AvoidLayout` and `WaypointFollower` make such a scripted demonstrator short:

    layout = AvoidLayout()
    routes = layout.feasible_routes()                  # tuples of gap indices, one per row
    follower = WaypointFollower(layout.route_waypoints(routes[0]))
    obs, _ = env.reset(seed=0)
    action = follower(obs)                              # raw action (2,)
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.registry import EnvConfigError, EnvSpec, register_suite

AVOID_TASKS = ("avoid_m1", "avoid_m2", "avoid_m3")


@dataclass(frozen=True)
class AvoidLayout:
    """Geometry of the avoid task. Units are metre-like; y points from the start towards the goal line.

    Attributes:
        obstacles: (N, 2) obstacle centres, grouped in rows of equal y.
        obstacle_radius: obstacle radius.
        agent_radius: end-effector radius (collision when centre distance < obstacle_radius + agent_radius).
        start_center: centre of the start region.
        start_half_extent: half sizes (x, y) of the uniform start region.
        goal_y: the goal line.
        x_limits, y_limits: workspace bounds for the desired position.
        max_step: bound on each coordinate of the action (desired-position change per step).
        tracking_gain: fraction of the desired-actual gap closed per step.
    """

    obstacles: tuple[tuple[float, float], ...] = (
        (0.0, 0.2),
        (-0.15, 0.4),
        (0.15, 0.4),
        (-0.3, 0.6),
        (0.0, 0.6),
        (0.3, 0.6),
    )
    obstacle_radius: float = 0.05
    agent_radius: float = 0.01
    start_center: tuple[float, float] = (0.0, 0.0)
    start_half_extent: tuple[float, float] = (0.03, 0.02)
    goal_y: float = 0.8
    x_limits: tuple[float, float] = (-0.5, 0.5)
    y_limits: tuple[float, float] = (-0.1, 0.9)
    max_step: float = 0.03
    tracking_gain: float = 0.5
    _centers: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_centers", np.asarray(self.obstacles, dtype=np.float64).reshape(-1, 2))

    @property
    def centers(self) -> np.ndarray:
        """(N, 2) obstacle centres."""
        return self._centers

    @property
    def collision_distance(self) -> float:
        return self.obstacle_radius + self.agent_radius

    @property
    def row_ys(self) -> list[float]:
        """y of each obstacle row, increasing."""
        return sorted({float(y) for _, y in self.obstacles})

    def collides(self, points: np.ndarray) -> np.ndarray:
        """Whether positions (..., 2) are in collision. Returns bool (...)."""
        p = np.asarray(points, dtype=np.float64)[..., None, :]
        dist = np.linalg.norm(p - self._centers, axis=-1)
        return (dist < self.collision_distance).any(axis=-1)

    def segment_collides(self, start: np.ndarray, end: np.ndarray) -> bool:
        """Whether the straight segment start (2,) -> end (2,) comes within the collision distance."""
        p0 = np.asarray(start, dtype=np.float64)
        d = np.asarray(end, dtype=np.float64) - p0
        dd = float(d @ d)
        rel = self._centers - p0
        t = np.clip(rel @ d / dd, 0.0, 1.0) if dd > 0 else np.zeros(len(rel))
        closest = p0 + t[:, None] * d
        return bool((np.linalg.norm(self._centers - closest, axis=-1) < self.collision_distance).any())

    def row_gaps(self, clearance: float = 0.04) -> list[np.ndarray]:
        """Aim points (x) for passing each row: the midpoint between neighbouring obstacles, and a point
        `clearance` beyond the collision distance outside the outermost obstacles (if it is inside the workspace).

        Returns:
            one array of x positions per row (increasing), rows ordered by y.
        """
        gaps = []
        margin = self.collision_distance + clearance
        for y in self.row_ys:
            xs = np.sort(self._centers[np.isclose(self._centers[:, 1], y), 0])
            aims = [xs[0] - margin] + [0.5 * (a + b) for a, b in zip(xs[:-1], xs[1:])] + [xs[-1] + margin]
            lo, hi = self.x_limits
            gaps.append(np.asarray([x for x in aims if lo + self.agent_radius < x < hi - self.agent_radius]))
        return gaps

    def route_waypoints(self, route: Sequence[int], clearance: float = 0.04, overshoot: float = 0.05) -> np.ndarray:
        """Waypoints (R + 1, 2) of a route: one aim point per row, then a point `overshoot` past the goal line.

        Args:
            route: gap index per row (into `row_gaps(clearance)`).
        """
        gaps = self.row_gaps(clearance)
        if len(route) != len(gaps):
            raise ValueError(f"a route has one gap index per row ({len(gaps)}), got {list(route)}")
        points = [(float(gaps[r][g]), y) for r, (g, y) in enumerate(zip(route, self.row_ys))]
        points.append((points[-1][0], self.goal_y + overshoot))
        return np.asarray(points)

    def feasible_routes(self, start: Sequence[float] | None = None, clearance: float = 0.04) -> list[tuple[int, ...]]:
        """Routes (gap index per row) whose straight-line waypoint path from `start` is collision free."""
        start_xy = np.asarray(self.start_center if start is None else start, dtype=np.float64)
        gaps = self.row_gaps(clearance)
        routes = []
        for route in itertools.product(*[range(len(g)) for g in gaps]):
            points = np.vstack([start_xy, self.route_waypoints(route, clearance)])
            if not any(self.segment_collides(a, b) for a, b in zip(points[:-1], points[1:])):
                routes.append(tuple(int(i) for i in route))
        return routes


class WaypointFollower:
    """Scripted controller: move the desired position towards the next waypoint at full speed.

    Args:
        waypoints: (K, 2) waypoints, visited in order.
        max_step: per-coordinate step bound (the env's action bound).
        switch_radius: distance of the *actual* position to a waypoint at which the next one becomes active.
    """

    def __init__(self, waypoints: np.ndarray, max_step: float = 0.03, switch_radius: float = 0.03) -> None:
        self.waypoints = np.asarray(waypoints, dtype=np.float64)
        self.max_step = float(max_step)
        self.switch_radius = float(switch_radius)
        self.index = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Raw action (2,) for the raw observation (4,) [desired xy, actual xy]."""
        desired, actual = np.asarray(obs[:2], dtype=np.float64), np.asarray(obs[2:4], dtype=np.float64)
        while (
            self.index < len(self.waypoints) - 1
            and np.linalg.norm(self.waypoints[self.index] - actual) < self.switch_radius
        ):
            self.index += 1
        delta = self.waypoints[self.index] - desired
        norm = float(np.abs(delta).max())
        if norm > self.max_step:
            delta *= self.max_step / norm
        return delta


class AvoidEnv(gym.Env):
    """The avoid task as a gymnasium env (see the module docstring).

    Args:
        layout: geometry; default `AvoidLayout()`.
        collision_penalty: reward on the colliding step (0 by default: reward only for reaching the goal line).
        render_mode: None or "rgb_array".
        render_size: (H, W) of rendered frames.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        layout: AvoidLayout | None = None,
        collision_penalty: float = 0.0,
        render_mode: str | None = None,
        render_size: tuple[int, int] = (256, 256),
    ) -> None:
        self.layout = layout or AvoidLayout()
        self.collision_penalty = float(collision_penalty)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"AvoidEnv: render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.render_size = (int(render_size[0]), int(render_size[1]))
        lay = self.layout
        low = np.array([lay.x_limits[0], lay.y_limits[0]] * 2)
        high = np.array([lay.x_limits[1], lay.y_limits[1]] * 2)
        self.observation_space = spaces.Box(low, high, dtype=np.float64)
        self.action_space = spaces.Box(-lay.max_step, lay.max_step, shape=(2,), dtype=np.float64)
        self._low = (float(lay.x_limits[0]), float(lay.y_limits[0]))
        self._high = (float(lay.x_limits[1]), float(lay.y_limits[1]))
        self._obstacle_list = [(float(x), float(y)) for x, y in lay.centers]
        self._collision_distance2 = lay.collision_distance**2
        self._desired = (0.0, 0.0)
        self._pos = (0.0, 0.0)
        self._background: np.ndarray | None = None

    def _obs(self) -> np.ndarray:
        return np.array([*self._desired, *self._pos])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start at a uniform point of the start region; desired = actual position. Returns (obs (4,), {})."""
        super().reset(seed=seed)
        lay = self.layout
        half = np.asarray(lay.start_half_extent)
        start = np.asarray(lay.start_center) + self.np_random.uniform(-half, half)
        self._pos = (float(start[0]), float(start[1]))
        self._desired = self._pos
        return self._obs(), {}

    def _segment_hits(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        # Scalar float maths: ~10x faster than numpy for a handful of obstacles (same test as
        # AvoidLayout.segment_collides).
        dx, dy = x1 - x0, y1 - y0
        dd = dx * dx + dy * dy
        r2 = self._collision_distance2
        for cx, cy in self._obstacle_list:
            t = ((cx - x0) * dx + (cy - y0) * dy) / dd if dd > 0.0 else 0.0
            t = 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
            ex, ey = x0 + t * dx - cx, y0 + t * dy - cy
            if ex * ex + ey * ey < r2:
                return True
        return False

    def step(self, action: np.ndarray):
        lay = self.layout
        a = np.asarray(action, dtype=np.float64).reshape(2)
        m = lay.max_step
        (xlo, ylo), (xhi, yhi) = self._low, self._high
        dx = min(max(float(a[0]), -m), m)
        dy = min(max(float(a[1]), -m), m)
        gx = min(max(self._desired[0] + dx, xlo), xhi)
        gy = min(max(self._desired[1] + dy, ylo), yhi)
        self._desired = (gx, gy)
        x0, y0 = self._pos
        k = lay.tracking_gain
        x1, y1 = x0 + k * (gx - x0), y0 + k * (gy - y0)
        self._pos = (x1, y1)
        collision = self._segment_hits(x0, y0, x1, y1)
        success = (not collision) and y1 >= lay.goal_y
        reward = 1.0 if success else (self.collision_penalty if collision else 0.0)
        return self._obs(), reward, bool(collision or success), False, {"success": success, "collision": collision}

    # ------------------------------------------------------------------ rendering
    def _to_pixels(self, xy: np.ndarray) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.layout.x_limits, self.layout.y_limits
        h, w = self.render_size
        return (y1 - xy[1]) / (y1 - y0) * (h - 1), (xy[0] - x0) / (x1 - x0) * (w - 1)

    def _disk(self, image: np.ndarray, xy: np.ndarray, radius_px: float, color: Sequence[int]) -> None:
        row, col = self._to_pixels(xy)
        h, w = self.render_size
        rr, cc = np.ogrid[:h, :w]
        image[(rr - row) ** 2 + (cc - col) ** 2 <= radius_px**2] = color

    def render(self) -> np.ndarray | None:
        """Top-down frame (H, W, 3) uint8: obstacles grey, goal line green, desired blue, actual red."""
        if self.render_mode != "rgb_array":
            return None
        h, w = self.render_size
        scale = (w - 1) / (self.layout.x_limits[1] - self.layout.x_limits[0])
        if self._background is None:
            bg = np.full((h, w, 3), 255, dtype=np.uint8)
            for center in self.layout.centers:
                self._disk(bg, center, self.layout.obstacle_radius * scale, (110, 110, 110))
            goal_row = int(round(self._to_pixels(np.array([0.0, self.layout.goal_y]))[0]))
            bg[max(goal_row - 1, 0) : goal_row + 1] = (40, 170, 40)
            self._background = bg
        frame = self._background.copy()
        self._disk(frame, np.asarray(self._desired), max(2.0, 0.6 * self.layout.agent_radius * scale), (40, 80, 220))
        self._disk(frame, np.asarray(self._pos), max(3.0, self.layout.agent_radius * scale), (220, 40, 40))
        return frame


def _validate_kwargs(name: str, env_kwargs: Mapping[str, Any]) -> None:
    accepted = {"collision_penalty", *[f.name for f in AvoidLayout.__dataclass_fields__.values() if f.init]}
    unknown = sorted(set(env_kwargs) - accepted)
    if unknown:
        raise EnvConfigError(f"env.env_kwargs: {unknown} not accepted by {name}; accepted: {sorted(accepted)}")


@register_suite(
    "avoid",
    max_episode_steps={name: 100 for name in AVOID_TASKS},
    extra=None,
    requires=(),
    obs_kind="box",
    default_wrapper="d3il_lowdim",
    uses_gl=False,
    validate_kwargs=_validate_kwargs,
)
def make_avoid_env(spec: EnvSpec) -> gym.Env:
    """Build `AvoidEnv` with its time limit. `env_kwargs`: collision_penalty and any AvoidLayout field."""
    kwargs = dict(spec.env_kwargs)
    penalty = kwargs.pop("collision_penalty", 0.0)
    layout_fields = set(inspect.signature(AvoidLayout).parameters)
    layout_kwargs: dict[str, Any] = {
        k: (tuple(map(tuple, v)) if k == "obstacles" else v) for k, v in kwargs.items() if k in layout_fields
    }
    layout = AvoidLayout(**layout_kwargs)
    env = AvoidEnv(
        layout,
        collision_penalty=penalty,
        render_mode="rgb_array" if spec.render else None,
        render_size=spec.render_size,
    )
    return gym.wrappers.TimeLimit(env, max_episode_steps=spec.max_episode_steps)
