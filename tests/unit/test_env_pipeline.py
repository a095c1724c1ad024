"""`PipelinedVectorEnv` (env/pipeline.py): the same results as the plain vector env (one or several workers), group
stepping, and errors."""

from __future__ import annotations

import importlib.util
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from env import make_vec_env
from env.pipeline import PipelinedVectorEnv, group_slices, merge_step_results
from env.registry import EnvConfigError
from env.vector import EnvWorkerError

GYM = pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason='needs the gym extra: pip install ".[gym]"')


def cfg(name: str, wrapper: str, n_envs: int, **extra) -> dict:
    return {
        "name": name,
        "n_envs": n_envs,
        "wrappers": {wrapper: {"normalization_path": None}, "multi_step": {"n_obs_steps": 2, "n_action_steps": 4}},
        **extra,
    }


def test_group_slices_cover_the_envs_in_order():
    assert group_slices(5, 2) == [slice(0, 3), slice(3, 5)]
    assert group_slices(4, 4) == [slice(i, i + 1) for i in range(4)]
    assert group_slices(3, 1) == [slice(0, 3)]
    with pytest.raises(ValueError, match="n_groups must be in"):
        group_slices(2, 3)


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype


def assert_same_episodes(plain, piped, n_envs: int, da: int, groups: list[slice]) -> None:
    """Same seed, same actions: identical observations, rewards, flags and infos, through episode ends; the group
    interface and `step` alike."""
    for key in ("single_observation_space", "single_action_space", "action_space", "observation_space"):
        assert getattr(piped, key) == getattr(plain, key), key
    for key in ("n_envs", "n_obs_steps", "obs_dim", "n_action_steps", "action_dim", "image_shape"):
        assert getattr(piped, key) == getattr(plain, key), key
    assert_same(piped.reset()[0], plain.reset()[0])
    rng = np.random.default_rng(0)
    ended = 0
    for t in range(12):
        actions = rng.uniform(-1, 1, (n_envs, 4, da)).astype(np.float32)
        if t % 2:  # the group interface, as a rollout uses it
            for i, g in enumerate(groups):
                piped.step_async(i, actions[g])
            result = merge_step_results([piped.step_wait(i) for i in range(len(groups))])
        else:
            result = piped.step(actions)
        expected = plain.step(actions)
        for got, want in zip(result, expected):
            assert_same(got, want)
        ended += int((expected[2] | expected[3]).sum())
    assert ended > 0  # episode ends (final_obs, episode stats, autoreset) were compared too
    assert_same(piped.reset(seed=11)[0], plain.reset(seed=11)[0])
    assert_same(piped.reset(seed=list(range(20, 20 + n_envs)))[0], plain.reset(seed=list(range(20, 20 + n_envs)))[0])


@pytest.mark.parametrize(
    ("pipeline", "workers", "groups", "parts"),
    [
        (False, 2, [slice(0, 5)], [[slice(0, 3), slice(3, 5)]]),
        (True, 2, [slice(0, 3), slice(3, 5)], [[slice(0, 2), slice(2, 3)], [slice(3, 4), slice(4, 5)]]),
        (False, 9, [slice(0, 5)], [[slice(i, i + 1) for i in range(5)]]),  # lowered to one worker per sub-env
    ],
)
@GYM
def test_several_workers_give_the_plain_env_results(pipeline: bool, workers: int, groups: list, parts: list):
    """Each worker steps a contiguous part of every group, seeded as the plain env's sub-envs (hopper: the reset
    state depends on the seed)."""
    name, wrapper = "hopper-v2", "mujoco_locomotion_lowdim"
    plain = make_vec_env(cfg(name, wrapper, 5, max_episode_steps=24), seed=5)
    piped = make_vec_env(cfg(name, wrapper, 5, max_episode_steps=24, pipeline=pipeline, workers=workers), seed=5)
    try:
        assert isinstance(piped, PipelinedVectorEnv) and piped.groups == groups and piped.parts == parts
        assert piped.n_workers == len(parts[0]) and len({p.pid for p in piped._processes}) == piped.n_workers
        assert_same_episodes(plain, piped, 5, 3, groups)
    finally:
        plain.close()
        piped.close()


def test_workers_auto_is_one_per_available_core(monkeypatch):
    from env.factory import available_cores, resolve_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cores() == 3
    assert resolve_workers("auto", False) == 3 and resolve_workers("auto", True) == 3
    assert resolve_workers(None, True) == 1 and resolve_workers(None, False) is None and resolve_workers(2, False) == 2
    env = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 8, workers="auto"), seed=0)
    try:
        assert env.n_workers == 3 and env.groups == [slice(0, 8)]
        assert env.parts == [[slice(0, 3), slice(3, 6), slice(6, 8)]]
    finally:
        env.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"workers": 0}, "env.workers must be a positive integer, auto or null, got 0"),
        ({"workers": "all"}, "env.workers must be a positive integer, auto or null, got 'all'"),
        ({"workers": True}, "env.workers must be a positive integer, auto or null, got True"),
        ({"workers": 2, "asynchronous": True}, "env.workers and env.asynchronous exclude each other"),
    ],
)
def test_bad_workers_values_are_one_line_errors(extra: dict, message: str):
    with pytest.raises(EnvConfigError, match=message):
        make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, **extra), seed=0)


@pytest.mark.parametrize(
    ("name", "wrapper", "da"),
    [pytest.param("hopper-v2", "mujoco_locomotion_lowdim", 3, marks=GYM), ("avoid_m1", "d3il_lowdim", 2)],
)
def test_pipelined_env_gives_the_plain_env_results(name: str, wrapper: str, da: int):
    """Same seed, same actions: identical observations, rewards, flags and infos, through episode ends."""
    plain = make_vec_env(cfg(name, wrapper, 3, max_episode_steps=24), seed=5)
    piped = make_vec_env(cfg(name, wrapper, 3, max_episode_steps=24, pipeline=True), seed=5)
    try:
        assert isinstance(piped, PipelinedVectorEnv) and piped.groups == [slice(0, 2), slice(2, 3)]
        assert piped.n_workers == 1
        assert_same_episodes(plain, piped, 3, da, piped.groups)
    finally:
        plain.close()
        piped.close()


def test_bad_actions_and_wrong_group_order_are_clear_errors():
    env = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline=True), seed=0)
    try:
        env.reset()
        with pytest.raises(ValueError, match=r"avoid_m1: actions must have shape \(n_envs=2"):
            env.step(np.zeros((3, 4, 2)))
        with pytest.raises(ValueError, match="non-finite action"):
            env.step(np.full((2, 4, 2), np.nan))
        env.step_async(1, np.zeros((1, 4, 2)))
        with pytest.raises(RuntimeError, match=r"step_wait\(0\) but the pending group steps are \[1\]"):
            env.step_wait(0)
        env.step_wait(1)
        env.step(np.zeros((2, 4, 2)))  # still usable after the errors
    finally:
        env.close()


def test_dead_worker_is_reported_with_its_exit():
    env = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline=True, step_timeout=20), seed=0)
    env.reset()
    os.kill(env._processes[0].pid, signal.SIGKILL)
    env._processes[0].join(10)
    with pytest.raises(EnvWorkerError, match="avoid_m1: step failed: the env worker .* killed by signal SIGKILL"):
        env.step(np.zeros((2, 4, 2)))
    env.close()


def test_stopped_worker_is_killed_and_reported():
    env = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline=True, step_timeout=1), seed=0)
    env.reset()
    victim = env._processes[0]
    os.kill(victim.pid, signal.SIGSTOP)
    start = time.perf_counter()
    with pytest.raises(EnvWorkerError, match=r"avoid_m1: step failed: the env worker \(pid \d+\) is stopped"):
        env.step(np.zeros((2, 4, 2)))
    assert time.perf_counter() - start < 1 + 10
    assert not any(p.is_alive() for p in env._processes)


def test_pipeline_and_asynchronous_exclude_each_other():
    with pytest.raises(EnvConfigError, match="env.pipeline must be true or false, got 'maybe'"):
        make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline="maybe"), seed=0)
    with pytest.raises(EnvConfigError, match="env.pipeline and env.asynchronous exclude each other"):
        make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline=True, asynchronous=True), seed=0)


def test_reset_drops_the_answers_of_abandoned_steps():
    env = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 2, pipeline=True), seed=0)
    try:
        first = env.reset(seed=3)[0]
        env.step_async(0, np.zeros((1, 4, 2)))  # an interrupted rollout: sent, never waited for
        assert_same(env.reset(seed=3)[0], first)
        env.step(np.zeros((2, 4, 2)))
    finally:
        env.close()


def test_step_env_groups_overlaps_groups_with_the_plain_env_results():
    import torch

    from agent.rollout import step_env_groups

    plain = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 3, max_episode_steps=12), seed=2)
    piped = make_vec_env(cfg("avoid_m1", "d3il_lowdim", 3, max_episode_steps=12, pipeline=True), seed=2)
    seen: list[int] = []

    def act(group_obs):  # a deterministic "policy" of the observation; extra = the group's size
        seen.append(len(group_obs["state"]))
        return np.tanh(group_obs["state"][:, -1:, :2].repeat(4, axis=1) * 3), len(group_obs["state"])

    try:
        threads = torch.get_num_threads()
        results = {}
        for name, env in (("plain", plain), ("piped", piped)):
            timing: dict[str, float] = {}
            seen.clear()
            steps = list(step_env_groups(env, env.reset()[0], 6, act, timing))
            results[name] = steps
            assert timing["env_s"] > 0 and torch.get_num_threads() == threads
            assert seen == ([3] * 6 if name == "plain" else [2, 1] * 6)  # each step chosen per group, in order
        for (extra_a, step_a), (extra_b, step_b) in zip(results["plain"], results["piped"]):
            assert extra_a == [3] and extra_b == [2, 1]
            for a, b in zip(step_a, step_b):
                assert_same(a, b)
        with torch.no_grad():  # a consumer that stops early: threads restored, the env usable after a reset
            gen = step_env_groups(piped, piped.reset()[0], 5, act)
            next(gen)
            gen.close()
        assert torch.get_num_threads() == threads
        piped.reset()
        piped.step(np.zeros((3, 4, 2)))
    finally:
        plain.close()
        piped.close()


def test_worker_exits_when_its_parent_is_killed():
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    code = (
        "from env import make_vec_env; import time; "
        "env = make_vec_env({'name': 'avoid_m1', 'n_envs': 2, 'pipeline': True}, seed=0); env.reset(); "
        "print(env._processes[0].pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        parent.kill()  # no chance to close the env
        parent.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline:
            stat = Path(f"/proc/{worker}/stat")
            try:  # gone, or a zombie waiting for whoever adopted it
                if stat.read_text().split(")")[-1].split()[0] == "Z":
                    break
            except FileNotFoundError:
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail("the env worker outlived its killed parent")
    finally:
        parent.kill()


def test_a_sub_env_that_fails_to_build_raises_its_own_error_in_the_parent():
    bad = {"name": "avoid_m1", "n_envs": 2, "wrappers": {"d3il_lowdim": {"normalization_path": "/nowhere/n.npz"}}}
    errors = []
    for pipeline in (False, True):
        with pytest.raises(FileNotFoundError, match="normalization file not found: /nowhere/n.npz") as info:
            make_vec_env({**bad, "pipeline": pipeline}, seed=0)
        errors.append(str(info.value))
    assert errors[0] == errors[1]
