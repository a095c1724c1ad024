"""Evaluation rollouts (`agent.rollout.run_episodes`): which episodes count, when the rollout stops, the
progress bar, and success_rate only where the env has a success signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from agent.rollout import run_episodes
from model.base import Sample


class FixedLengthEnvs:
    """E envs whose episodes last `lengths[i]` chunks; episode k of env i returns 100 i + k (a chunk reward of
    that value on its last chunk, 0 before). Success on env i's episodes when i is even. Counts `step` calls."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = np.asarray(lengths)
        self.num_envs = len(lengths)
        self.t = np.zeros(self.num_envs, np.int64)
        self.episode = np.zeros(self.num_envs, np.int64)
        self.steps = 0

    def reset(self, **_: object) -> tuple[dict[str, np.ndarray], dict]:
        self.t[:] = 0
        self.episode[:] = 0
        return {"state": np.zeros((self.num_envs, 1, 1), np.float32)}, {}

    def step(self, actions: np.ndarray) -> tuple:
        assert actions.shape == (self.num_envs, 1, 1)
        self.steps += 1
        self.t += 1
        done = self.t == self.lengths
        value = 100.0 * np.arange(self.num_envs) + self.episode
        info = {
            "episode_return": np.where(done, value, 0.0),
            "episode_length": np.where(done, self.t, 0),
            "episode_success": done & (np.arange(self.num_envs) % 2 == 0),
            "chunk_steps": np.ones(self.num_envs, np.int64),
        }
        reward = np.where(done, value, 0.0)
        self.episode += done
        self.t[done] = 0
        obs = {"state": np.zeros((self.num_envs, 1, 1), np.float32)}
        return obs, reward, done, np.zeros(self.num_envs, bool), info


class ZeroPolicy(nn.Module):
    def sample(self, cond: dict[str, torch.Tensor], deterministic: bool = False) -> Sample:
        return Sample(torch.zeros(len(cond["state"]), 1, 1), None)


def evaluate(env: FixedLengthEnvs, **kwargs) -> dict[str, float]:
    return run_episodes(env, ZeroPolicy(), act_steps=1, device=torch.device("cpu"), max_episode_steps=50, **kwargs)


@pytest.mark.parametrize(
    ("lengths", "n_episodes", "returns", "steps"),
    [
        # one episode per env: all 3 must finish (the longest takes 7 chunks)
        ([2, 7, 3], 3, [0, 100, 200], 7),
        # 2 of 3 envs: env 0's and env 1's first episodes count; env 2 (9 chunks) is not waited for
        ([2, 4, 9], 2, [0, 100], 4),
        # 5 over 3 envs, round-robin: envs 0 and 1 twice, env 2 once -> stop at max(2*3, 2*2, 1*5) = 6 chunks
        ([3, 2, 5], 5, [0, 100, 200, 1, 101], 6),
    ],
)
def test_counted_episodes_and_early_stop(lengths: list[int], n_episodes: int, returns: list[int], steps: int):
    env = FixedLengthEnvs(lengths)
    result = evaluate(env, n_episodes=n_episodes)
    assert result["n_episodes"] == n_episodes
    assert result["episode_return"] == pytest.approx(np.mean(returns))
    assert env.steps == steps  # stopped as soon as the counted episodes had finished
    assert result["env_steps"] == steps * len(lengths)


def test_n_steps_counts_every_finished_episode():
    env = FixedLengthEnvs([2, 3])
    result = evaluate(env, n_steps=6)
    assert env.steps == 6 and result["n_episodes"] == 3 + 2
    assert result["episode_return"] == pytest.approx(np.mean([0, 1, 2, 100, 101]))
    assert result["success_rate"] == pytest.approx(3 / 5)  # env 0's episodes succeed


@pytest.mark.parametrize(
    ("kwargs", "total", "unit"), [({"n_episodes": 5}, "5/5", "episode"), ({"n_steps": 4}, "4/4", "chunk")]
)
def test_progress_bar_on_stderr_only_when_asked(capsys, kwargs: dict, total: str, unit: str):
    evaluate(FixedLengthEnvs([3, 2, 5]), **kwargs)
    assert capsys.readouterr().err == ""
    evaluate(FixedLengthEnvs([3, 2, 5]), progress=True, **kwargs)
    err = capsys.readouterr().err
    assert "evaluate" in err and total in err and unit in err


@pytest.mark.parametrize(
    ("threshold", "reports_success", "expected"),
    [(None, True, 3 / 5), (None, False, None), (50.0, False, 2 / 5)],
)
def test_success_rate_only_with_a_success_signal(threshold: float | None, reports_success: bool, expected):
    """The env's flag (env 0's episodes), nothing where the env has no success notion (not a 0), or the reference's
    threshold rule (a chunk reward per env step >= 50: env 1's episodes (last chunk 100, 101) reach it, env 0's (0, 1,
    2) do not; env 2 finishes none in 6 chunks)."""
    env = FixedLengthEnvs([2, 3, 7])
    result = evaluate(env, n_steps=6, success_threshold=threshold, reports_success=reports_success)
    assert result["n_episodes"] == 5
    if expected is None:
        assert "success_rate" not in result
    else:
        assert result["success_rate"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("env_name", "reports"),
    [
        ("hopper-medium-v2", False),
        ("walker2d-v2", False),
        ("avoid_m1", True),
        ("kitchen-complete-v0", True),
        ("can", True),
    ],
)
def test_which_suites_have_a_success_signal(env_name: str, reports: bool):
    from agent.rollout import env_reports_success

    assert env_reports_success(env_name) is reports
