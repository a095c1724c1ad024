"""Generate multi-route demonstrations for the planar avoid task (env/suites/avoid.py): avoid_m1, _m2, _m3.

The end effector crosses three obstacle rows to the goal line; a *route* picks one gap per row (left or right of
the first obstacle, then a gap in each following row). The three datasets differ only in how many routes their
demonstrations cover, which is what makes behaviour cloning of them uni- or multi-modal:

* avoid_m1: one route, (0, 1, 1): left of the first obstacle, the centre gap, then the left-centre gap.
* avoid_m2: that route and its mirror image (1, 1, 2), half of the demos each.
* avoid_m3: every collision-free route of the layout (8 with the default layout), in equal shares.

Each demo follows its route's waypoints with human-like variation: jittered waypoints, a per-demo speed and
corner-cutting radius, low-pass filtered actions and correlated noise, so trajectories are smooth but distinct.
Only demos that reach the goal line without a collision are kept.

    python script/dataset/generate_avoid.py                       # all three variants, 200 demos each
    python script/dataset/generate_avoid.py --variants m2 --num-episodes 50 --seed 1

Writes `<data>/d3il/avoid_m{1,2,3}/{train.npz, normalization.npz, routes.json}` (data = $DPPO_DATA_DIR or data/).
States are the raw observation (4,) [desired x, desired y, actual x, actual y], actions the desired-position
change (2,), both normalised to [-1, 1]; the last step of each demo has reward 1 and terminal True.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python script/dataset/generate_avoid.py` from a checkout
    sys.path.insert(0, str(REPO))

from env.suites.avoid import AvoidEnv, AvoidLayout  # noqa: E402
from script.dataset.common import DatasetSummary, setup_logging, task_dir, write_dataset  # noqa: E402

log = logging.getLogger("generate_avoid")

VARIANTS = ("m1", "m2", "m3")
PRIMARY_ROUTE = (0, 1, 1)
MAX_STEPS = 100  # the task's time limit


def mirror_route(layout: AvoidLayout, route: Sequence[int]) -> tuple[int, ...]:
    """The left-right mirror image of a route (gap g of a row with n gaps -> gap n - 1 - g)."""
    gaps = layout.row_gaps()
    return tuple(len(gaps[r]) - 1 - g for r, g in enumerate(route))


def variant_routes(layout: AvoidLayout, variant: str) -> list[tuple[int, ...]]:
    """Routes covered by a variant (m1: one, m2: the route and its mirror, m3: all feasible)."""
    feasible = layout.feasible_routes()
    if PRIMARY_ROUTE not in feasible:
        raise ValueError(f"route {PRIMARY_ROUTE} is not collision free in this layout; feasible: {feasible}")
    if variant == "m1":
        return [PRIMARY_ROUTE]
    if variant == "m2":
        return [PRIMARY_ROUTE, mirror_route(layout, PRIMARY_ROUTE)]
    if variant == "m3":
        return feasible
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def classify_route(layout: AvoidLayout, positions: np.ndarray) -> tuple[int, ...] | None:
    """The route a trajectory took: for each row, the gap nearest to where the actual position crossed it.

    Args:
        positions: (T, 2) actual positions.

    Returns:
        gap index per row, or None if the trajectory does not cross every row.
    """
    route = []
    for y_row, gaps in zip(layout.row_ys, layout.row_gaps()):
        above = np.flatnonzero(positions[:, 1] >= y_row)
        if len(above) == 0 or above[0] == 0:
            return None
        i = above[0]
        (x0, y0), (x1, y1) = positions[i - 1], positions[i]
        x = x0 + (x1 - x0) * (y_row - y0) / (y1 - y0) if y1 != y0 else x1
        route.append(int(np.argmin(np.abs(gaps - x))))
    return tuple(route)


class HumanRouteFollower:
    """Follows a route's waypoints like a person: jittered aim points, own speed, smoothed and noisy steps.

    Args:
        layout: task geometry.
        route: gap index per row.
        rng: randomness of this demo.
        variation: 0 = the plain waypoint follower, 1 = full variation.
    """

    def __init__(self, layout: AvoidLayout, route: Sequence[int], rng: np.random.Generator, variation: float = 1.0):
        v = float(np.clip(variation, 0.0, 1.0))
        points = layout.route_waypoints(route)
        jitter = np.clip(rng.normal(0.0, 0.01, size=points.shape), -0.02, 0.02) * v
        jitter[-1, 1] = abs(jitter[-1, 1])  # the last point stays beyond the goal line
        self.waypoints = points + jitter
        self.max_step = layout.max_step
        self.speed = layout.max_step * (1.0 - 0.4 * v * float(rng.random()))
        self.switch_radius = 0.03 + 0.04 * v * float(rng.random())
        self.smoothing = 0.6 * v * float(rng.uniform(0.3, 1.0))  # low-pass coefficient of the action
        self.noise_std = 0.15 * v * layout.max_step
        self.noise_corr = 0.7
        self.rng = rng
        self.index = 0
        self.prev = np.zeros(2)
        self.noise = np.zeros(2)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Raw action (2,) for the raw observation (4,) [desired xy, actual xy]."""
        desired, actual = obs[:2], obs[2:4]
        while (
            self.index < len(self.waypoints) - 1
            and np.linalg.norm(self.waypoints[self.index] - actual) < self.switch_radius
        ):
            self.index += 1
        delta = self.waypoints[self.index] - desired
        norm = float(np.linalg.norm(delta))
        if norm > self.speed:
            delta *= self.speed / norm
        self.noise = self.noise_corr * self.noise + np.sqrt(1 - self.noise_corr**2) * self.rng.normal(
            0.0, self.noise_std, size=2
        )
        action = self.smoothing * self.prev + (1.0 - self.smoothing) * delta + self.noise
        action = np.clip(action, -self.max_step, self.max_step)
        self.prev = action
        return action


@dataclass
class AvoidDemos:
    """Concatenated demos of one variant: states (N, 4), actions (N, 2), rewards (N,), terminals (N,),
    traj_lengths (n,), routes (one tuple per demo), attempts (rollouts tried)."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    traj_lengths: np.ndarray
    routes: list[tuple[int, ...]]
    attempts: int

    def route_counts(self) -> dict[str, int]:
        return {str(list(k)): v for k, v in sorted(Counter(self.routes).items())}


def generate_avoid_demos(
    variant: str,
    num_episodes: int,
    seed: int = 0,
    variation: float = 1.0,
    layout: AvoidLayout | None = None,
    max_attempts: int | None = None,
) -> AvoidDemos:
    """Roll out `num_episodes` successful demos of a variant, the routes assigned round-robin (equal shares).

    A rollout that collides, times out or ends on another route than intended is discarded and retried.
    """
    layout = layout or AvoidLayout()
    routes = variant_routes(layout, variant)
    env = AvoidEnv(layout)
    rng = np.random.default_rng(seed)
    max_attempts = max_attempts or 5 * num_episodes + 20
    states, actions, lengths, taken = [], [], [], []
    attempts = 0
    with tqdm(total=num_episodes, desc=f"avoid_{variant}", unit="demo", leave=False) as bar:
        while len(lengths) < num_episodes and attempts < max_attempts:
            route = routes[len(lengths) % len(routes)]
            attempts += 1
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            follower = HumanRouteFollower(layout, route, rng, variation)
            ep_s, ep_a, pos = [], [], [obs[2:4].copy()]
            success = False
            for _ in range(MAX_STEPS):
                action = follower(obs)
                ep_s.append(obs)
                ep_a.append(action)
                obs, _, terminated, _, info = env.step(action)
                pos.append(obs[2:4].copy())
                if terminated:
                    success = bool(info["success"])
                    break
            if not success or classify_route(layout, np.asarray(pos)) != route:
                continue
            states.append(np.asarray(ep_s))
            actions.append(np.asarray(ep_a))
            lengths.append(len(ep_s))
            taken.append(route)
            bar.update(1)
    if len(lengths) < num_episodes:
        log.warning("avoid_%s: only %d of %d demos in %d attempts", variant, len(lengths), num_episodes, attempts)
    n = int(sum(lengths))
    ends = np.cumsum(lengths) - 1
    rewards = np.zeros(n, np.float32)
    terminals = np.zeros(n, bool)
    rewards[ends] = 1.0  # the last action reaches the goal line (the env's success reward)
    terminals[ends] = True
    return AvoidDemos(
        np.concatenate(states),
        np.concatenate(actions),
        rewards,
        terminals,
        np.asarray(lengths, np.int64),
        taken,
        attempts,
    )


def write_avoid_variant(
    variant: str,
    num_episodes: int,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    variation: float = 1.0,
    val_split: float = 0.0,
) -> tuple[DatasetSummary, AvoidDemos]:
    """Generate one variant and write `<root>/d3il/avoid_<variant>/` (train/val/normalization npz, routes.json)."""
    demos = generate_avoid_demos(variant, num_episodes, seed=seed, variation=variation)
    out = task_dir("d3il", f"avoid_{variant}", root)
    summary = write_dataset(
        out,
        demos.states,
        demos.actions,
        demos.traj_lengths,
        rewards=demos.rewards,
        terminals=demos.terminals,
        val_split=val_split,
        seed=seed,
    )
    info: dict[str, Any] = {
        "variant": variant,
        "routes": demos.route_counts(),
        "demos": len(demos.traj_lengths),
        "attempts": demos.attempts,
        "seed": seed,
        "variation": variation,
    }
    (out / "routes.json").write_text(json.dumps(info, indent=2))
    return summary, demos


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="which datasets")
    p.add_argument("--num-episodes", type=int, default=200, help="demos per variant (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variation", type=float, default=1.0, help="human-like variation, 0 (clean) .. 1 (default)")
    p.add_argument("--val-split", type=float, default=0.0, help="fraction of demos for val.npz (default 0)")
    p.add_argument("--data-dir", help="dataset root (default: $DPPO_DATA_DIR or data/)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    for variant in args.variants:
        t0 = time.time()
        summary, demos = write_avoid_variant(
            variant, args.num_episodes, args.data_dir, args.seed, args.variation, args.val_split
        )
        rate = len(demos.traj_lengths) / max(demos.attempts, 1)
        # final summary for the user
        print(
            f"avoid_{variant}: {len(demos.traj_lengths)} demos ({100 * rate:.0f}% of rollouts kept), "
            f"{len(demos.states)} steps, routes {demos.route_counts()}, {time.time() - t0:.1f} s"
        )
        print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
