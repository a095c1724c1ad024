"""Environment throughput: env steps/s of the raw env, the raw vector env and the fully wrapped vector env.

    python script/bench/envs.py [--quick] [--suites gym avoid kitchen robomimic robomimic_img] [--seconds 1.5]
    python script/bench/envs.py --rollout lift   # robomimic rollout vs the raw robosuite env on all cores

For each available suite (one representative task) it measures
  * raw env: one gymnasium env from the suite (time limit included), random actions, manual resets;
  * raw vector env: gymnasium Sync/AsyncVectorEnv of raw envs (SAME_STEP autoreset), one env step per call;
  * wrapped: `make_vec_env` with the task wrapper (a generated normalization.npz with [-1, 1] ranges, so the real
    affine maps run) and `multi_step` (To = 1, Te = the task's DPPO act_steps), one chunk per call;
and prints env steps/s and the wrapper overhead (time per env step, wrapped vs raw vector env; negative = the
wrapped env is faster, since a chunk crosses the vector-env/process boundary once per Te env steps).
No network and no datasets needed. Suites whose extra is missing are skipped. `--rollout lift|can` instead runs
script/bench/rollout.py (robomimic fine-tuning rollouts against N raw robosuite envs in N processes, N = cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv  # noqa: E402

from env import Normalization, make_vec_env  # noqa: E402
from env.registry import EnvSpec, get_wrapper, resolve_env_name  # noqa: E402

# suite -> (task, task wrapper, extra wrapper kwargs, Te, n_envs (full), n_envs (quick), module needed)
SUITES = {
    "gym": ("hopper-v2", "mujoco_locomotion_lowdim", {}, 4, (1, 2, 8, 40), (1, 8), "mujoco"),
    "avoid": ("avoid_m1", "d3il_lowdim", {}, 4, (1, 2, 8, 40), (1, 8), None),
    "kitchen": ("kitchen-complete-v0", "mujoco_locomotion_lowdim", {}, 4, (1, 8), (1, 2), "gymnasium_robotics"),
    "robomimic": ("can", "robomimic_lowdim", {}, 8, (1, 2), (1,), "robosuite"),
    "robomimic_img": (
        "can",
        "robomimic_image",
        {"image_keys": ["robot0_eye_in_hand_image"], "image_size": [96, 96], "low_dim_keys": None},
        8,
        (1, 2),
        (1,),
        "robosuite",
    ),
}
DEFAULT_SUITES = ("gym", "avoid", "kitchen", "robomimic")


def build_raw(spec: EnvSpec):
    _, suite = resolve_env_name(spec.name)
    return suite.builder(spec)


def raw_spec(task: str, wrapper: str, wrapper_kwargs: dict) -> EnvSpec:
    name, suite = resolve_env_name(task)
    return EnvSpec(name=name, max_episode_steps=suite.max_episode_steps[name], wrappers={wrapper: wrapper_kwargs})


def timed(step, seconds: float, warmup: int = 3) -> float:
    """Env steps per second of `step()` (which returns the env steps it executed) over about `seconds`."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(5):
            n += step()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return n / elapsed


def best_of(steppers: list, seconds: float, repeats: int = 3) -> list[float]:
    """Best rate of each stepper over `repeats` interleaved windows (robust to load from other processes)."""
    best = [0.0] * len(steppers)
    for _ in range(repeats):
        for i, step in enumerate(steppers):
            best[i] = max(best[i], timed(step, seconds / repeats))
    return best


def raw_env_stepper(spec: EnvSpec):
    env = build_raw(spec)
    env.reset(seed=0)
    space = env.action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high, (256, *space.shape))
    i = 0

    def step() -> int:
        nonlocal i
        _, _, terminated, truncated, _ = env.step(actions[i % 256])
        i += 1
        if terminated or truncated:
            env.reset()
        return 1

    return env, step


def raw_vec_stepper(spec: EnvSpec, n_envs: int, asynchronous: bool, context: str | None):
    fns = [partial(build_raw, spec) for _ in range(n_envs)]
    if asynchronous:
        vec = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context=context)
    else:
        vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    vec.reset(seed=0)
    space = vec.single_action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high, (64, n_envs, *space.shape))
    i = 0

    def step() -> int:
        nonlocal i
        vec.step(actions[i % 64])
        i += 1
        return n_envs

    return vec, step


def wrapped_stepper(
    task: str, wrapper: str, wrapper_kwargs: dict, norm_path: str, Te: int, n_envs: int, asynchronous: bool
):
    cfg = {
        "name": task,
        "n_envs": n_envs,
        "asynchronous": asynchronous,
        "wrappers": {
            wrapper: {"normalization_path": norm_path, **wrapper_kwargs},
            "multi_step": {"n_obs_steps": 1, "n_action_steps": Te},
        },
    }
    vec = make_vec_env(cfg, seed=0)
    vec.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (64, *vec.action_space.shape)).astype(np.float32)
    i = 0

    def step() -> int:
        nonlocal i
        _, _, _, _, info = vec.step(actions[i % 64])
        i += 1
        return int(info["chunk_steps"].sum())

    return vec, step


class NullEnv(gym.Env):
    """Costs nothing to step: isolates the vector-env and wrapper machinery (hopper-sized spaces)."""

    metadata: dict = {"render_modes": []}

    def __init__(self, obs_dim: int = 11, action_dim: int = 3) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self._obs = np.zeros(obs_dim)

    def reset(self, *, seed=None, options=None):
        return self._obs.copy(), {}

    def step(self, action):
        return self._obs.copy(), 0.0, False, False, {}


def machinery_cost(n_envs: int, Te: int, seconds: float, norm_path: str) -> tuple[float, float]:
    """Microseconds per env step of the machinery alone: (raw SyncVectorEnv, wrapped chunked env)."""
    from env import MultiStep, vectorize
    from env.wrappers.normalization import LowdimNormalization

    raw = SyncVectorEnv([NullEnv for _ in range(n_envs)], autoreset_mode=AutoresetMode.SAME_STEP)
    raw.reset(seed=0)
    raw_actions = np.zeros((n_envs, 3), np.float32)

    def make():
        return MultiStep(LowdimNormalization(NullEnv(), norm_path), n_obs_steps=1, n_action_steps=Te)

    wrapped = vectorize([make for _ in range(n_envs)], name="null")
    wrapped.reset()
    chunk = np.zeros((n_envs, Te, 3), np.float32)

    def raw_step() -> int:
        raw.step(raw_actions)
        return n_envs

    def wrapped_step() -> int:
        wrapped.step(chunk)
        return n_envs * Te

    r, w = best_of([raw_step, wrapped_step], seconds)
    return 1e6 / r, 1e6 / w


def write_normalization(spec: EnvSpec, wrapper: str, wrapper_kwargs: dict, folder: Path) -> str:
    """A normalization.npz with [-1, 1] ranges of the right dims (not the exact-identity shortcut)."""
    env = get_wrapper(wrapper).factory(build_raw(spec), normalization_path=None, **wrapper_kwargs)
    ident = Normalization.identity(env.normalization.obs_dim, env.normalization.action_dim)
    path = folder / f"{spec.name}_{wrapper}.npz"
    Normalization(ident.obs_min, ident.obs_max, ident.action_min, ident.action_max).save(path)
    env.close()
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES), choices=list(SUITES))
    parser.add_argument("--quick", action="store_true", help="fewer n_envs and shorter timings")
    parser.add_argument("--seconds", type=float, default=None, help="timing window per measurement")
    parser.add_argument("--no-async", action="store_true", help="skip AsyncVectorEnv measurements")
    parser.add_argument(
        "--rollout", choices=["lift", "can"], help="robomimic rollout / raw env on all cores (script/bench/rollout.py)"
    )
    args = parser.parse_args(argv)
    if args.rollout:
        from script.bench.rollout import main as rollout_main

        return rollout_main(["--task", args.rollout])
    logging.basicConfig(level=logging.WARNING)
    seconds = args.seconds or (0.6 if args.quick else 1.0)
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for suite in args.suites:
            task, wrapper, wkw, Te, n_full, n_quick, module = SUITES[suite]
            if module is not None and importlib.util.find_spec(module) is None:
                print(f"skip {suite}: {module} not installed")
                continue
            spec = raw_spec(task, wrapper, wkw)
            norm_path = write_normalization(spec, wrapper, wkw, Path(tmp))
            env, step = raw_env_stepper(spec)
            (raw,) = best_of([step], seconds)
            env.close()
            for asynchronous in (False,) if args.no_async else (False, True):
                for n in n_quick if args.quick else n_full:
                    if asynchronous and n == 1:
                        continue
                    context = "spawn" if suite == "robomimic_img" else None  # rendering workers need spawn
                    if asynchronous:  # one set of worker processes at a time
                        venv, step = raw_vec_stepper(spec, n, True, context)
                        (vec,) = best_of([step], seconds)
                        venv.close()
                        wenv, step = wrapped_stepper(task, wrapper, wkw, norm_path, Te, n, True)
                        (wrapped,) = best_of([step], seconds)
                        wenv.close()
                    else:  # interleaved timing windows
                        venv, vstep = raw_vec_stepper(spec, n, False, context)
                        wenv, wstep = wrapped_stepper(task, wrapper, wkw, norm_path, Te, n, False)
                        vec, wrapped = best_of([vstep, wstep], seconds)
                        venv.close()
                        wenv.close()
                    mode = "async" if asynchronous else "sync"
                    rows.append((suite, task, mode, n, Te, raw, vec, wrapped, vec / wrapped - 1))
                    print(
                        f"{suite:13s} {mode:5s} n_envs={n:3d}  raw {raw:8.0f}  vec {vec:8.0f}  wrapped {wrapped:8.0f}"
                    )
        null_norm = str(Path(tmp) / "null.npz")
        Normalization(-np.ones(11), np.ones(11), -np.ones(3), np.ones(3)).save(null_norm)
        machinery = [(n, *machinery_cost(n, 4, seconds, null_norm)) for n in (1, 8, 40)]
    header = "| suite | task | vector | n_envs | Te | raw env steps/s | raw vec steps/s | wrapped steps/s | overhead |"
    print(f"\n{header}\n|" + "---|" * 9)
    for suite, task, mode, n, Te, raw, vec, wrapped, overhead in rows:
        print(f"| {suite} | {task} | {mode} | {n} | {Te} | {raw:.0f} | {vec:.0f} | {wrapped:.0f} | {overhead:+.0%} |")
    print("\nMachinery alone (zero-cost env, hopper-sized spaces, Te = 4), microseconds per env step:")
    print("| n_envs | raw SyncVectorEnv | wrapped (normalisation + multi_step + checks + info) |\n|---|---|---|")
    for n, raw_us, wrapped_us in machinery:
        print(f"| {n} | {raw_us:.1f} | {wrapped_us:.1f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
