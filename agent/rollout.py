"""Rollout helpers shared by fine-tuning, evaluation and the scripts: observation/action conversion, stepping envs in
groups, episode bookkeeping, evaluation episodes, and building the vector env of a config.

    env = make_env(load_env_block(cfg), logdir, normalization, seed)  # the config's vector env
    result = run_episodes(env, policy, act_steps=Te, device=..., n_episodes=50, ...)   # evaluation episodes
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Mapping
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from agent.errors import ConfigError, DataError
from env.factory import EnvConfig
from env.pipeline import PipelinedVectorEnv, merge_step_results
from env.registry import resolve_env_name
from model.base import Policy

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# episode bookkeeping and evaluation rollouts


def obs_to_tensor(obs: Mapping[str, np.ndarray], device: torch.device) -> dict[str, Tensor]:
    """Env observation dict of numpy arrays -> dict of tensors on `device` (dtypes kept: state float32, rgb uint8)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True) for k, v in obs.items()}


def actions_to_numpy(actions: Tensor, act_steps: int) -> np.ndarray:
    """Policy chunk (E, Ta, Da) -> the executed part (E, Te, Da) as float32 numpy."""
    return actions[:, :act_steps].detach().to("cpu", torch.float32).numpy()


def cat_groups(parts: list[Any]) -> Any:
    """Per-group tensors, or tuples / dicts of them, concatenated along the env axis (one group: as is)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(cat_groups(list(field)) for field in zip(*parts))
    if isinstance(parts[0], dict):
        return {k: cat_groups([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts)


def step_env_groups(
    env: Any,
    obs: Mapping[str, np.ndarray],
    n_steps: int,
    act: Callable[[dict[str, np.ndarray]], tuple[np.ndarray, Any]],
    timing: dict[str, float] | None = None,
) -> Generator[tuple[list[Any], tuple], None, None]:
    """Step `env` `n_steps` times from `obs`, the actions chosen by `act`; yields each step's result.

    With a `PipelinedVectorEnv` (`env.pipeline` / `env.workers`) the envs step in groups in worker processes: each
    group's next chunk is chosen as soon as its step returns, while the workers step the other group, and torch
    keeps one thread fewer per worker meanwhile (at least one) so that the workers have their cores. A plain vector
    env is one group, chosen for and stepped in turn. The last step sends nothing further; a consumer that stops
    early leaves at most one step per group pending, which the env's next `reset` discards.

    Args:
        env: the vector env.
        obs: observations of all E envs.
        n_steps: steps to run.
        act: `group_obs -> (actions (n_g, Te, Da), extra)` for one group's observations.
        timing: if given, `timing["env_s"]` accumulates the seconds spent waiting for the envs.

    Yields:
        (the groups' `extra`s for this step, in group order; `env.step`'s result for all E envs).
    """
    pipelined = isinstance(env, PipelinedVectorEnv)
    groups = env.groups if pipelined else [slice(0, env.num_envs)]
    chosen: list[Any] = [None] * len(groups)

    def choose_and_send(i: int, group_obs: dict[str, np.ndarray]) -> Any:
        actions, extra = act(group_obs)
        if pipelined:
            env.step_async(i, actions)
        else:
            chosen[i] = actions
        return extra

    threads = torch.get_num_threads()
    if pipelined and threads > 1:  # leave the env workers their cores
        torch.set_num_threads(max(1, threads - env.n_workers))
    try:
        sent = [choose_and_send(i, {k: v[g] for k, v in obs.items()}) for i, g in enumerate(groups)]
        for t in range(n_steps):
            results, extras, sent = [], sent, []
            for i in range(len(groups)):
                start = time.perf_counter()
                results.append(env.step_wait(i) if pipelined else env.step(chosen[i]))
                if timing is not None:
                    timing["env_s"] = timing.get("env_s", 0.0) + time.perf_counter() - start
                if t + 1 < n_steps:
                    sent.append(choose_and_send(i, results[-1][0]))
            yield extras, merge_step_results(results)
    finally:
        torch.set_num_threads(threads)


class EpisodeStats:
    """Statistics of the episodes that finish while the envs are stepped.

    Every episode that ends is counted, whenever it started (the reference counts only episodes that start and end
    inside one iteration and drops one-chunk episodes; with long episodes and `reset_at_iteration: false` that
    hides most of them). Returns and lengths come from the env's own episode counters (raw rewards).

    Success: with `env.best_reward_threshold_for_success` set, the reference's rule: the best per-env-step reward
    of any chunk in the episode (chunk reward / env steps executed) reaches the threshold (robomimic: a chunk with
    every step successful). With it null, the env's own success flag (robomimic, kitchen, avoid set one); where
    the env has none (gym locomotion: `Suite.reports_success` False) there is no success rate at all.

    Args:
        n_envs: E.
        success_threshold: see above, or None.
        reports_success: whether the env sets a success flag (`env_reports_success`).
    """

    def __init__(self, n_envs: int, success_threshold: float | None = None, reports_success: bool = True) -> None:
        self.n_envs = int(n_envs)
        self.success_threshold = None if success_threshold is None else float(success_threshold)
        self.has_success = self.success_threshold is not None or bool(reports_success)
        self._best = np.full(self.n_envs, -np.inf)
        self.episodes: list[tuple[int, float, int, bool]] = []  # (env index, return, length, success)
        self.per_env = np.zeros(self.n_envs, dtype=np.int64)

    def restart(self) -> None:
        """Forget the episodes in progress (after the envs were reset)."""
        self._best.fill(-np.inf)

    def step(self, reward: np.ndarray, done: np.ndarray, info: Mapping[str, Any]) -> None:
        """Record one vector-env step.

        Args:
            reward: (E,) chunk rewards.
            done: (E,) bool, terminated | truncated.
            info: the vector env's info (episode_return, episode_length, episode_success, chunk_steps).
        """
        steps = np.maximum(np.asarray(info.get("chunk_steps", 1)), 1)
        np.maximum(self._best, np.asarray(reward, dtype=np.float64) / steps, out=self._best)
        for i in np.flatnonzero(done):
            if self.success_threshold is None:
                success = bool(info["episode_success"][i])
            else:
                success = bool(self._best[i] >= self.success_threshold)
            self.episodes.append((int(i), float(info["episode_return"][i]), int(info["episode_length"][i]), success))
            self.per_env[i] += 1
            self._best[i] = -np.inf

    def summary(self, per_env_quota: int | None = None, max_episodes: int | None = None) -> dict[str, float]:
        """Mean return, success rate (only with a success signal: `has_success`), mean length and count of the
        recorded episodes, then clear them.

        Args:
            per_env_quota: count only each env's first `per_env_quota` episodes, and of those at most
                `max_episodes`, taken round-robin over the envs (evaluation over a fixed number of episodes
                without favouring short ones, as "first n to finish" would).
            max_episodes: see above.
        """
        episodes = self.episodes
        if per_env_quota is not None:
            rank = np.zeros(self.n_envs, dtype=np.int64)
            ranked = []
            for ep in episodes:
                if rank[ep[0]] < per_env_quota:
                    ranked.append((int(rank[ep[0]]), ep[0], ep))
                    rank[ep[0]] += 1
            ranked.sort(key=lambda x: (x[0], x[1]))
            episodes = [x[2] for x in ranked[:max_episodes]]
        self.episodes = []
        self.per_env[:] = 0
        if not episodes:
            return {"n_episodes": 0}
        returns = np.array([e[1] for e in episodes])
        result = {"episode_return": float(returns.mean()), "episode_return_std": float(returns.std())}
        if self.has_success:
            result["success_rate"] = float(np.mean([e[3] for e in episodes]))
        result.update(episode_length=float(np.mean([e[2] for e in episodes])), n_episodes=len(episodes))
        return result


def env_reports_success(env_name: str) -> bool:
    """Whether the suite of env `env_name` has a notion of success (`Suite.reports_success`; gym locomotion not)."""
    return resolve_env_name(env_name)[1].reports_success


@torch.no_grad()
def run_episodes(
    env: Any,
    policy: Policy,
    *,
    act_steps: int,
    device: torch.device,
    n_steps: int | None = None,
    n_episodes: int | None = None,
    max_episode_steps: int | None = None,
    success_threshold: float | None = None,
    reports_success: bool = True,
    deterministic: bool = True,
    reset_options: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Reset the envs and roll the policy out; return the statistics of the finished episodes.

    Either `n_steps` chunks per env (all episodes that finish count), or, with `n_episodes`, until every env has
    finished the episodes that count: each env's first ones, taken round-robin over the envs (env 0's first, env
    1's first, ..., env 0's second, ...) up to `n_episodes`, so env i needs ceil((n_episodes - i) / E) of them.
    The rollout stops as soon as they have all finished.

    Args:
        env: the vector env (the contract in env/README.md).
        policy: anything with `sample(cond, deterministic) -> Sample`.
        act_steps: Te, executed steps per chunk.
        device: where the policy lives.
        n_steps: chunks per env (used when n_episodes is None).
        n_episodes: number of episodes to report.
        max_episode_steps: env steps per episode limit, for the safety cap on the `n_episodes` loop.
        success_threshold, reports_success: see `EpisodeStats`.
        deterministic: evaluation-mode sampling.
        reset_options: passed to `env.reset` (e.g. a video file prefix).
        progress: show a progress bar on stderr (episodes that count, or chunks with `n_steps`).

    Returns:
        `EpisodeStats.summary()` plus `env_steps` and `wall_s`.
    """
    start = time.perf_counter()
    n_envs = env.num_envs
    stats = EpisodeStats(n_envs, success_threshold, reports_success)
    quota = None
    if n_episodes is not None:
        quota = math.ceil(n_episodes / n_envs)
        needed = (n_episodes - np.arange(n_envs) + n_envs - 1) // n_envs  # (E,) episodes that count per env
        episode_chunks = math.ceil((max_episode_steps or 10_000) / act_steps) + 1
        limit = quota * episode_chunks
    else:
        if n_steps is None:
            raise ConfigError("evaluation needs n_steps or n_episodes")
        limit = int(n_steps)
    obs, _ = env.reset(options=dict(reset_options)) if reset_options else env.reset()
    env_steps = 0

    def act(group_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, None]:
        sample = policy.sample(obs_to_tensor(group_obs, device), deterministic=deterministic)
        return actions_to_numpy(sample.actions, act_steps), None

    total, unit = (n_episodes, "episode") if quota is not None else (limit, "chunk")
    bar = tqdm(total=total, unit=unit, desc="evaluate", dynamic_ncols=True, disable=not progress)
    with bar, closing(step_env_groups(env, obs, limit, act)) as steps:
        for _, (_obs, reward, terminated, truncated, info) in steps:
            stats.step(reward, terminated | truncated, info)
            env_steps += int(np.sum(info.get("chunk_steps", act_steps)))
            if quota is None:
                bar.update(1)
                bar.set_postfix(episodes=len(stats.episodes), refresh=False)
                continue
            bar.update(int(np.minimum(stats.per_env, needed).sum()) - bar.n)
            if bool((stats.per_env >= needed).all()):
                break
    if quota is not None and not bool((stats.per_env >= needed).all()):
        log.warning(
            "evaluation stopped after %d chunks with %d of %d episodes",
            limit,
            len(stats.episodes),
            n_episodes,
        )
    result = stats.summary(per_env_quota=quota, max_episodes=n_episodes)
    result["env_steps"] = env_steps
    result["wall_s"] = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------------------------
# environment


def load_env_block(cfg: DictConfig) -> EnvConfig:
    """The config's `env` block as a checked `EnvConfig` (env/factory.py); a missing block, an unknown key or a bad
    value is one `ConfigError` line."""
    from env.factory import EnvConfig
    from env.registry import EnvConfigError

    node = cfg.get("env")
    if not isinstance(node, DictConfig | Mapping) or not node.get("name"):
        raise ConfigError("this run needs an `env` block with env.name")
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return EnvConfig.from_config(plain)  # type: ignore[arg-type]
    except (EnvConfigError, TypeError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc


def env_config(env_cfg: EnvConfig, logdir: Path, normalization: Mapping[str, np.ndarray] | None) -> EnvConfig:
    """`env_cfg` made ready for `make_vec_env` (a copy; `env_cfg` is left as it is).

    * A task wrapper's `normalization_path` that does not exist falls back to the statistics carried by the
      checkpoint (handed to the wrapper as arrays, its `normalization` argument); if both exist and differ, a
      warning is logged.
    * With `save_video` and no `video_dir`, videos go to `<logdir>/videos`.
    """
    wrappers = {name: dict(kwargs) for name, kwargs in env_cfg.wrappers.items()}
    for name, kwargs in wrappers.items():
        path = kwargs.get("normalization_path")
        if not path:
            continue
        if not Path(path).is_file():
            if normalization is None:
                raise DataError(
                    f"env.wrappers.{name}.normalization_path={path} not found and the checkpoint carries no "
                    "normalization; set normalization_path (it is written next to the dataset)"
                )
            kwargs["normalization_path"] = None
            kwargs["normalization"] = {k: np.asarray(v) for k, v in normalization.items()}
            log.warning("%s not found: using the normalization stored in the checkpoint", path)
        elif normalization is not None:
            with np.load(path) as f:
                same = all(k in f.files and np.allclose(f[k], v) for k, v in normalization.items())
            if not same:
                log.warning("%s differs from the normalization the checkpoint was trained with", path)
    video_dir = str(logdir / "videos") if env_cfg.save_video and not env_cfg.video_dir else env_cfg.video_dir
    return replace(env_cfg, wrappers=wrappers, video_dir=video_dir)


def make_env(
    env_cfg: EnvConfig,
    logdir: Path,
    normalization: Mapping[str, np.ndarray] | None,
    seed: int,
    env_meta_path: str | None = None,
) -> Any:
    """Build the vector env of `env_cfg` (env.factory.make_vec_env), turning env config errors into ConfigError.

    `env_meta_path`: robomimic's env_meta JSON (DPPO's top-level `robomimic_env_cfg_path`), or None.
    """
    from env.factory import make_vec_env
    from env.registry import EnvConfigError, MissingDependencyError

    try:
        return make_vec_env(env_config(env_cfg, logdir, normalization), seed=seed, env_meta_path=env_meta_path)
    except (EnvConfigError, MissingDependencyError, FileNotFoundError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from exc
