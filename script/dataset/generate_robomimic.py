"""Generate robomimic-style demos (lift, can, square) with scripted human-like operators on robosuite 1.5.

Writes a robomimic hdf5 (`data/demo_<i>/{obs/<key>, actions, rewards, dones, states}`,
`data.attrs["env_args"]`, `data.attrs["total"]`), then converts it into the toolkit's datasets:

    python script/dataset/generate_robomimic.py --task lift --num-episodes 200
    # also the pixel variant data/robomimic/can-img/ (eye-in-hand camera, 96x96; rendered with MUJOCO_GL=egl)
    python script/dataset/generate_robomimic.py --task can --num-episodes 200 --cameras robot0_eye_in_hand

Outputs (data dir = $DPPO_DATA_DIR or data/): `<data>/robomimic/<task>/demos.hdf5`, `<data>/robomimic/<task>/
{train,normalization}.npz` (low-dim, DPPO's keys) and, with `--cameras`, `<data>/robomimic/<task>-img/`
(proprioception + images). Control matches the env_meta: OSC_POSE delta, control_freq 20, +-0.05 m / +-0.5
rad. Only successful episodes are recorded unless `--keep-failures` is given. Images are rendered by replaying
each recorded episode's MuJoCo states and are stored upright, HWC uint8, under `obs/<camera>_image`
(robomimic's layout).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python script/dataset/generate_robomimic.py` from a checkout
    sys.path.insert(0, str(REPO))

from script.dataset.common import setup_logging, task_dir  # noqa: E402
from script.dataset.convert_robomimic import convert_robomimic  # noqa: E402
from script.dataset.scripted_robomimic import POLICIES, EpisodeLog, ScriptedPolicy  # noqa: E402

log = logging.getLogger("generate_robomimic")

TASKS = ("lift", "can", "square")
# Recorded demos must fit the fine-tuning horizon (max_episode_steps lift/can 300, square 400).
MAX_DEMO_STEPS = {"lift": 200, "can": 280, "square": 380}
# Pixel datasets use one camera per task (as DPPO's): eye-in-hand for lift/can, agentview for square.
DEFAULT_CAMERAS = {"lift": ["robot0_eye_in_hand"], "can": ["robot0_eye_in_hand"], "square": ["agentview"]}


def make_env(task: str, render: bool = False, env_meta: dict[str, Any] | None = None) -> Any:
    """The fine-tuning env layer's robosuite env for a task (`env.suites.robomimic.RobosuiteEnv`).

    Using the env layer keeps demonstrations and fine-tuning on identical settings: the env_meta JSON
    (cfg/robomimic/env_meta/<task>.json: OSC_POSE delta, control_freq 20, +-0.05 m / +-0.5 rad), physics options,
    seeding, and the robomimic observation keys (`object` in robosuite 1.4's order).

    Args:
        task: lift, can or square.
        render: create the offscreen renderer (for `render_episode`); sets MUJOCO_GL=egl unless set.
        env_meta: robomimic env metadata (default: the task's JSON).
    """
    if render:
        os.environ.setdefault("MUJOCO_GL", "egl")
    from env.suites.robomimic import RobosuiteEnv, load_env_meta

    return RobosuiteEnv(env_meta or load_env_meta(task), render=render)


def run_episode(env: Any, policy: ScriptedPolicy, seed: int, max_steps: int, rng: np.random.Generator) -> EpisodeLog:
    """Roll out one scripted episode from a seeded reset; ends a few steps after success or at max_steps.

    Args:
        env: a `RobosuiteEnv` (the policy drives `env.robosuite_env`).
        policy: the task's scripted operator, built on `env.robosuite_env`.
        seed: reset seed (object placement, robot initial joint noise).
        max_steps: episode length limit.
        rng: draws the number of steps kept after success.
    """
    obs, _ = env.reset(seed=seed)
    sim = env.robosuite_env.sim
    policy.reset()
    ep = EpisodeLog(model_xml=sim.model.get_xml())
    extra_after_success = int(rng.integers(1, 9))
    idle_after_script = 20
    success_steps = 0
    success = False
    for _ in range(max_steps):
        ep.states.append(np.asarray(sim.get_state().flatten()))
        for k, v in obs.items():
            ep.obs.setdefault(k, []).append(v)
        action = policy.act()
        ep.actions.append(action)
        obs, reward, _, _, info = env.step(action)
        ep.rewards.append(float(reward))
        success = bool(info["success"])
        if success:
            success_steps += 1
            if success_steps > extra_after_success:
                break
        elif policy.finished:
            idle_after_script -= 1
            if idle_after_script <= 0:
                break
    ep.success = success
    return ep


def demonstrator_success(
    task: str, seeds: Sequence[int], variation: float = 1.0, env_meta: dict[str, Any] | None = None
) -> list[EpisodeLog]:
    """Run the scripted operator once per seed (nothing written) and return the episodes (`.success`, length)."""
    env = make_env(task, env_meta=env_meta)
    try:
        out = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            policy = POLICIES[task](env.robosuite_env, rng, variation)
            out.append(run_episode(env, policy, seed, MAX_DEMO_STEPS[task], rng))
        return out
    finally:
        env.close()


def render_episode(env: Any, states: Sequence[np.ndarray], cameras: Sequence[str], size: int) -> dict[str, np.ndarray]:
    """Replay MuJoCo states (T, S) and render each camera: {camera: (T, size, size, 3) uint8, upright}."""
    frames: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    for s in states:
        env.sim.set_state_from_flattened(s)
        env.sim.forward()
        for cam in cameras:
            # MuJoCo's offscreen buffer is bottom-up (OpenGL); flip to the usual top-down image
            frames[cam].append(np.asarray(env.sim.render(size, size, camera_name=cam))[::-1])
    return {c: np.stack(f).astype(np.uint8) for c, f in frames.items()}


def render_hdf5_images(
    task: str,
    hdf5_path: str | os.PathLike,
    cameras: Sequence[str],
    image_size: int = 96,
    max_episodes: int | None = None,
) -> tuple[int, int, float]:
    """Add `obs/<camera>_image` (T, size, size, 3) uint8 to the demos of an existing robomimic hdf5.

    The images are rendered by replaying each demo's stored MuJoCo states in the demo's own model (its
    `model_file` attribute), so low-dim demos can be generated first and rendered later (or elsewhere).
    Existing image datasets of the same name are replaced.

    Returns:
        (demos rendered, frames rendered, seconds).
    """
    import h5py

    from script.dataset.convert_robomimic import sorted_demo_names

    t0 = time.time()
    env = make_env(task, render=True)
    rs_env = env.robosuite_env
    n_demos = n_frames = 0
    try:
        with h5py.File(hdf5_path, "r+") as f:
            names = sorted_demo_names(list(f["data"].keys()))[:max_episodes]
            loaded_xml = None
            for name in tqdm(names, desc="rendering", unit="demo"):
                demo = f["data"][name]
                xml = demo.attrs.get("model_file")
                if xml and xml != loaded_xml:
                    rs_env.reset_from_xml_string(xml)
                    loaded_xml = xml
                images = render_episode(rs_env, demo["states"][()], cameras, image_size)
                for cam, img in images.items():
                    key = f"{cam}_image"
                    if key in demo["obs"]:
                        del demo["obs"][key]
                    demo["obs"].create_dataset(key, data=img, compression="gzip", compression_opts=4)
                n_demos += 1
                n_frames += len(demo["states"]) * len(cameras)
    finally:
        env.close()
    return n_demos, n_frames, time.time() - t0


class DemoWriter:
    """Incremental writer of a robomimic hdf5 file (written to a temporary path, renamed on `close`)."""

    def __init__(self, path: str | os.PathLike, env_meta: dict[str, Any]) -> None:
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.file = h5py.File(self.tmp, "w")
        self.data = self.file.create_group("data")
        self.data.attrs["env_args"] = json.dumps(env_meta)
        self.n_demos = 0
        self.n_steps = 0

    def add(self, ep: EpisodeLog, images: dict[str, np.ndarray] | None = None) -> None:
        """Append one episode as data/demo_<n>."""
        g = self.data.create_group(f"demo_{self.n_demos}")
        t = len(ep)
        g.attrs["num_samples"] = t
        g.attrs["model_file"] = ep.model_xml
        g.attrs["success"] = bool(ep.success)
        og = g.create_group("obs")
        for k, v in ep.obs.items():
            og.create_dataset(k, data=np.stack(v))
        for cam, img in (images or {}).items():
            og.create_dataset(f"{cam}_image", data=img, compression="gzip", compression_opts=4)
        g.create_dataset("actions", data=np.stack(ep.actions))
        g.create_dataset("rewards", data=np.asarray(ep.rewards))
        dones = np.zeros(t, dtype=np.int64)
        dones[-1] = 1
        g.create_dataset("dones", data=dones)
        g.create_dataset("states", data=np.stack(ep.states))
        self.n_demos += 1
        self.n_steps += t

    def close(self) -> None:
        self.data.attrs["total"] = self.n_steps
        self.file.close()
        os.replace(self.tmp, self.path)


@dataclass
class GenerationStats:
    """Outcome of `generate_demos`."""

    task: str
    n_recorded: int
    n_attempts: int
    n_success: int
    n_steps: int
    seconds: float
    hdf5_path: Path

    @property
    def success_rate(self) -> float:
        return self.n_success / max(self.n_attempts, 1)

    def line(self) -> str:
        return (
            f"{self.task}: {self.n_recorded} demos / {self.n_steps} steps recorded, scripted success "
            f"{self.n_success}/{self.n_attempts} ({100 * self.success_rate:.0f}%), {self.seconds:.0f} s "
            f"({self.n_steps / max(self.seconds, 1e-9):.0f} steps/s) -> {self.hdf5_path}"
        )


def generate_demos(
    task: str,
    num_episodes: int,
    hdf5_path: str | os.PathLike,
    seed: int = 0,
    variation: float = 1.0,
    keep_failures: bool = False,
    cameras: Sequence[str] = (),
    image_size: int = 96,
    max_attempts: int | None = None,
    env_meta: dict[str, Any] | None = None,
) -> GenerationStats:
    """Roll out the scripted operator until `num_episodes` demos are recorded; write them to `hdf5_path`.

    Args:
        task: lift, can or square.
        num_episodes: demos to record.
        hdf5_path: output robomimic hdf5.
        seed: base seed; attempt i resets the env with seed `seed * 1_000_003 + i`.
        variation: 0 = clean scripted demos, 1 = full human-like variation.
        keep_failures: also record unsuccessful attempts.
        cameras: cameras to render into `obs/<camera>_image` (empty: low-dim only).
        image_size: rendered image height = width.
        max_attempts: give up after this many attempts (default 3 * num_episodes + 10).
        env_meta: env metadata (default: the task's cfg/robomimic/env_meta JSON).
    """
    if task not in POLICIES:
        raise ValueError(f"no scripted demonstrator for {task!r}; choose from {sorted(POLICIES)}")
    from env.suites.robomimic import load_env_meta

    env_meta = env_meta or load_env_meta(task)
    env = make_env(task, render=bool(cameras), env_meta=env_meta)
    max_attempts = max_attempts or 3 * num_episodes + 10
    writer = DemoWriter(hdf5_path, env_meta)
    t0 = time.time()
    attempts = successes = 0
    try:
        with tqdm(total=num_episodes, desc=f"{task} demos", unit="demo") as bar:
            while writer.n_demos < num_episodes and attempts < max_attempts:
                ep_seed = seed * 1_000_003 + attempts
                rng = np.random.default_rng(ep_seed)
                policy = POLICIES[task](env.robosuite_env, rng, variation)
                ep = run_episode(env, policy, ep_seed, MAX_DEMO_STEPS[task], rng)
                attempts += 1
                successes += ep.success
                if ep.success or keep_failures:
                    images = render_episode(env.robosuite_env, ep.states, cameras, image_size) if cameras else None
                    writer.add(ep, images)
                    bar.update(1)
                else:
                    log.debug("attempt %d failed (len %d)", attempts, len(ep))
                bar.set_postfix(success=f"{successes}/{attempts}")
    finally:
        writer.close()
        env.close()
    if writer.n_demos < num_episodes:
        log.warning("recorded only %d of %d demos in %d attempts", writer.n_demos, num_episodes, attempts)
    return GenerationStats(task, writer.n_demos, attempts, successes, writer.n_steps, time.time() - t0, Path(hdf5_path))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", required=True, choices=TASKS, help="robomimic task")
    p.add_argument("--num-episodes", type=int, default=200, help="demos to record (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variation", type=float, default=1.0, help="human-like variation, 0 (clean) .. 1 (default)")
    p.add_argument("--keep-failures", action="store_true", help="also record unsuccessful episodes")
    p.add_argument(
        "--cameras",
        "--images",
        nargs="*",
        default=None,
        help="render these cameras and also write <task>-img (no names: the task's default camera)",
    )
    p.add_argument("--image-size", type=int, default=96, help="image height = width (default 96)")
    p.add_argument("--hdf5", help="output hdf5 (default: <data>/robomimic/<task>/demos.hdf5)")
    p.add_argument("--data-dir", help="dataset root (default: $DPPO_DATA_DIR or data/)")
    p.add_argument("--val-split", type=float, default=0.0, help="fraction of demos for val.npz (default 0)")
    p.add_argument("--no-convert", action="store_true", help="only write the hdf5")
    p.add_argument(
        "--render-existing",
        action="store_true",
        help="do not generate: render --cameras into the existing hdf5 (replaying its states), then convert",
    )
    p.add_argument("--max-episodes", type=int, default=None, help="with --render-existing: render/convert only N")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cameras = None if args.cameras is None else (args.cameras or DEFAULT_CAMERAS[args.task])
    out_dir = task_dir("robomimic", args.task, args.data_dir)
    hdf5 = Path(args.hdf5) if args.hdf5 else out_dir / "demos.hdf5"
    if args.render_existing:
        cameras = cameras or DEFAULT_CAMERAS[args.task]
        n_demos, n_frames, secs = render_hdf5_images(args.task, hdf5, cameras, args.image_size, args.max_episodes)
        print(f"{args.task}: rendered {n_frames} frames of {n_demos} demos in {secs:.0f} s ({n_frames / secs:.1f} fps)")
        img_dir = task_dir("robomimic", f"{args.task}-img", args.data_dir)
        summary = convert_robomimic(
            hdf5,
            img_dir,
            cameras=cameras,
            image_size=args.image_size,
            max_episodes=args.max_episodes,
            val_split=args.val_split,
            seed=args.seed,
        )
        print(summary.line())
        return 0
    stats = generate_demos(
        args.task,
        args.num_episodes,
        hdf5,
        seed=args.seed,
        variation=args.variation,
        keep_failures=args.keep_failures,
        cameras=cameras or (),
        image_size=args.image_size,
    )
    print(stats.line())  # final summary for the user
    if args.no_convert or stats.n_recorded == 0:
        return 0 if stats.n_recorded else 1
    summary = convert_robomimic(hdf5, out_dir, val_split=args.val_split, seed=args.seed)
    print(summary.line())
    if cameras:
        img_dir = task_dir("robomimic", f"{args.task}-img", args.data_dir)
        summary = convert_robomimic(
            hdf5,
            img_dir,
            cameras=cameras,
            image_size=args.image_size,
            val_split=args.val_split,
            seed=args.seed,
        )
        print(summary.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
