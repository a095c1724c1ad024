"""Chunking, normalisation, vector-env contract and error handling, on a tiny deterministic env."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from env import (
    EnvConfigError,
    EnvWorkerError,
    MissingDependencyError,
    MultiStep,
    Normalization,
    SubEnvError,
    make_vec_env,
    vectorize,
)
from env.wrappers.guard import SubEnvGuard
from env.wrappers.normalization import LowdimNormalization


class CountingEnv(gym.Env):
    """obs = [t, episode id, raw action of the last step (first coordinate), random start value]; reward = t.

    Terminates when t == terminate_at (if set). Never truncates by itself. `sleep` seconds per step (hang tests);
    `fail_at`: step t at which step() raises.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        terminate_at: int | None = None,
        sleep: float = 0.0,
        fail_at: int | None = None,
    ) -> None:
        self.terminate_at = terminate_at
        self.sleep = sleep
        self.fail_at = fail_at
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float64)
        self.t = 0
        self.episode = -1
        self.start = 0.0
        self.last_action = 0.0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode, self.last_action, self.start], dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.episode += 1
        self.last_action = 0.0
        self.start = float(self.np_random.uniform())
        return self._obs(), {}

    def step(self, action):
        if self.sleep:
            time.sleep(self.sleep)
        self.t += 1
        if self.fail_at is not None and self.t == self.fail_at:
            raise RuntimeError("boom")
        self.last_action = float(np.asarray(action)[0])
        terminated = self.terminate_at is not None and self.t == self.terminate_at
        return self._obs(), float(self.t), terminated, False, {"success": self.t == 3}


def chunked(
    To: int = 3,
    Te: int = 4,
    max_episode_steps: int | None = 100,
    normalization_path: str | None = None,
    label: str = "counting sub-env 0",
    **env_kwargs,
) -> gym.Env:
    env = LowdimNormalization(CountingEnv(**env_kwargs), normalization_path=normalization_path)
    env = MultiStep(env, n_obs_steps=To, n_action_steps=Te, max_episode_steps=max_episode_steps)
    return SubEnvGuard(env, label)


def make_vec(n: int = 2, asynchronous: bool = False, seed: int = 0, per_env=None, **kwargs):
    """Vector env of `chunked` sub-envs; per_env(i) -> extra kwargs for sub-env i."""
    vec_keys = ("action_clip", "action_tolerance", "step_timeout")
    vec_kwargs = {k: kwargs.pop(k) for k in vec_keys if k in kwargs}
    fns = []
    for i in range(n):
        extra = dict(kwargs, **(per_env(i) if per_env else {}))
        fns.append(lambda extra=extra, i=i: chunked(label=f"counting sub-env {i}", **extra))
    return vectorize(fns, name="counting", seed=seed, asynchronous=asynchronous, context="fork", **vec_kwargs)


def t_of(state: np.ndarray) -> np.ndarray:
    """The step counter column of a (.., To, 4) state."""
    return state[..., 0]


# ---------------------------------------------------------------------------------------------- MultiStep alone
def test_reset_pads_history_with_reset_obs() -> None:
    env = chunked(To=3)
    obs, info = env.reset(seed=0)
    assert obs["state"].shape == (3, 4) and obs["state"].dtype == np.float32
    assert np.all(obs["state"] == obs["state"][0])
    assert t_of(obs["state"]).tolist() == [0, 0, 0]


def test_chunk_executes_te_steps_sums_rewards_and_keeps_history() -> None:
    env = chunked(To=3, Te=4)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
    assert reward == 1 + 2 + 3 + 4
    assert t_of(obs["state"]).tolist() == [2, 3, 4]  # oldest first
    assert (terminated, truncated) == (False, False)
    assert info["chunk_steps"] == 4 and info["success"]  # success on t == 3
    assert "episode_return" not in info
    obs, reward, *_ = env.step(np.zeros((4, 2), np.float32))
    assert reward == 5 + 6 + 7 + 8
    assert t_of(obs["state"]).tolist() == [6, 7, 8]


def test_longer_chunk_is_cut_to_te_and_history_padding_mixes_with_new_obs() -> None:
    env = chunked(To=3, Te=1)
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.zeros((5, 2), np.float32))  # Ta = 5 > Te = 1
    assert reward == 1
    assert t_of(obs["state"]).tolist() == [0, 0, 1]


def test_termination_inside_chunk_stops_the_chunk() -> None:
    env = chunked(To=2, Te=4, terminate_at=6)
    env.reset(seed=0)
    env.step(np.zeros((4, 2), np.float32))
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
    assert (terminated, truncated) == (True, False)
    assert reward == 5 + 6 and info["chunk_steps"] == 2
    assert t_of(obs["state"]).tolist() == [5, 6]
    assert info["episode_return"] == sum(range(1, 7)) and info["episode_length"] == 6
    assert info["episode_success"]


def test_time_limit_truncates_and_never_terminates() -> None:
    env = chunked(To=1, Te=4, max_episode_steps=6)
    env.reset(seed=0)
    env.step(np.zeros((4, 2), np.float32))
    obs, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
    assert (terminated, truncated) == (False, True)
    assert info["chunk_steps"] == 2 and reward == 5 + 6 and info["episode_length"] == 6


def test_termination_at_the_time_limit_is_only_a_termination() -> None:
    env = chunked(To=1, Te=4, max_episode_steps=6, terminate_at=6)
    env.reset(seed=0)
    env.step(np.zeros((4, 2), np.float32))
    _, _, terminated, truncated, _ = env.step(np.zeros((4, 2), np.float32))
    assert (terminated, truncated) == (True, False)


def test_inner_truncation_is_passed_through() -> None:
    inner = gym.wrappers.TimeLimit(CountingEnv(), max_episode_steps=3)
    env = MultiStep(LowdimNormalization(inner), n_obs_steps=1, n_action_steps=4, max_episode_steps=None)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.zeros((4, 2), np.float32))
    assert (terminated, truncated, info["chunk_steps"], reward) == (False, True, 3, 6.0)


def test_reward_aggregation_max_and_full_observations() -> None:
    inner = LowdimNormalization(CountingEnv(terminate_at=3))
    env = MultiStep(inner, n_obs_steps=1, n_action_steps=4, reward_agg_method="max", pass_full_observations=True)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(np.zeros((4, 2), np.float32))
    assert terminated and reward == 3.0
    assert info["episode_return"] == 6.0  # episode statistics always sum the raw rewards
    assert info["full_state"].shape == (4, 4)
    assert t_of(info["full_state"]).tolist() == [1, 2, 3, 3]  # padded with the last executed state


def test_fused_fast_path_matches_wrapper_by_wrapper(tmp_path: Path) -> None:
    path = str(write_norm(tmp_path / "n.npz", [0, 0, -3, 0], [9, 9, 3, 1], [-2, 0], [2, 4]))

    def build(fused: bool) -> MultiStep:
        env = LowdimNormalization(CountingEnv(terminate_at=7), normalization_path=path)
        if not fused:
            env = gym.Wrapper(env)  # any wrapper in between disables the fusion
        return MultiStep(env, n_obs_steps=2, n_action_steps=3, pass_full_observations=True)

    fused, plain = build(True), build(False)
    assert fused._task is not None and plain._task is None
    np.testing.assert_array_equal(fused.reset(seed=1)[0]["state"], plain.reset(seed=1)[0]["state"])
    rng = np.random.default_rng(0)
    for _ in range(4):
        chunk = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
        out_f, out_p = fused.step(chunk), plain.step(chunk)
        np.testing.assert_array_equal(out_f[0]["state"], out_p[0]["state"])
        assert out_f[1:4] == out_p[1:4]
        assert out_f[4].keys() == out_p[4].keys()
        np.testing.assert_array_equal(out_f[4]["full_state"], out_p[4]["full_state"])
    assert fused.unwrapped.last_action == plain.unwrapped.last_action


def test_multi_step_rejects_bad_arguments() -> None:
    inner = LowdimNormalization(CountingEnv())
    with pytest.raises(EnvConfigError, match="reward_agg_method"):
        MultiStep(inner, reward_agg_method="median")
    with pytest.raises(EnvConfigError, match="n_obs_steps"):
        MultiStep(inner, n_obs_steps=0)
    with pytest.raises(EnvConfigError, match="task wrapper"):
        MultiStep(CountingEnv())


# ---------------------------------------------------------------------------------------------- normalisation
def write_norm(path: Path, obs_min, obs_max, action_min, action_max) -> Path:
    Normalization(*(np.asarray(x, dtype=np.float64) for x in (obs_min, obs_max, action_min, action_max))).save(path)
    return path


def test_normalization_formula_and_round_trip(tmp_path: Path) -> None:
    path = write_norm(tmp_path / "n.npz", [0, -2, 5, 0], [2, 2, 5, 1], [0, -4], [2, 4])
    norm = Normalization.from_npz(path)
    obs = np.array([1.0, 2.0, 5.0, 0.25])
    expected = 2 * ((obs - norm.obs_min) / (norm.obs_max - norm.obs_min + 1e-6) - 0.5)
    np.testing.assert_allclose(norm.normalize_obs(obs), expected)
    np.testing.assert_allclose(norm.normalize_obs(obs), [0.0, 1.0, -1.0, -0.5], atol=1e-5)
    np.testing.assert_allclose(norm.unnormalize_obs(norm.normalize_obs(obs)), obs, atol=1e-12)
    a = np.array([[-1.0, 1.0], [0.0, 0.5]])
    raw = norm.unnormalize_action(a)
    np.testing.assert_allclose(raw, [[0.0, 4.0], [1.0, 2.0]], atol=1e-5)
    np.testing.assert_allclose(norm.normalize_action(raw), a, atol=1e-12)  # exact inverse of the data formula


def test_wrapper_normalises_obs_and_unnormalises_actions(tmp_path: Path) -> None:
    path = write_norm(tmp_path / "n.npz", [0, 0, -10, 0], [10, 10, 10, 1], [0, 0], [2, 2])
    env = LowdimNormalization(CountingEnv(), normalization_path=str(path))
    obs, _ = env.reset(seed=0)
    assert obs["state"].dtype == np.float32
    assert obs["state"][0] == pytest.approx(-1.0)  # t = 0 = obs_min
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))  # normalised 1 -> raw action_max = 2
    assert env.unwrapped.last_action == pytest.approx(2.0, abs=1e-5)
    assert obs["state"][2] == pytest.approx(2 * ((2.0 + 10) / 20 - 0.5), abs=1e-5)


def test_normalization_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="normalization file not found"):
        LowdimNormalization(CountingEnv(), normalization_path=str(tmp_path / "missing.npz"))
    path = write_norm(tmp_path / "n.npz", [0, 0], [1, 1], [0, 0], [1, 1])
    with pytest.raises(EnvConfigError, match="obs dim 2"):
        LowdimNormalization(CountingEnv(), normalization_path=str(path))


def test_normalization_given_as_arrays_is_used_instead_of_the_file(tmp_path: Path) -> None:
    """A checkpoint's statistics reach the wrapper as arrays (no file in the run folder): the same obs and actions
    as from the file, and they win over a normalization_path."""
    stats = {"obs_min": [0, 0, -10, 0], "obs_max": [10, 10, 10, 1], "action_min": [0, 0], "action_max": [2, 2]}
    from_file = LowdimNormalization(
        CountingEnv(), normalization_path=str(write_norm(tmp_path / "n.npz", *stats.values()))
    )
    other = write_norm(tmp_path / "other.npz", [0, 0, 0, 0], [1, 1, 1, 1], [0, 0], [1, 1])
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
    from_arrays = LowdimNormalization(CountingEnv(), normalization_path=str(other), normalization=arrays)
    for env in (from_file, from_arrays):
        env.reset(seed=0)
    a = np.array([1.0, -0.5], np.float32)
    np.testing.assert_allclose(from_arrays.step(a)[0]["state"], from_file.step(a)[0]["state"], atol=1e-6)
    assert from_arrays.unwrapped.last_action == pytest.approx(from_file.unwrapped.last_action)
    with pytest.raises(EnvConfigError, match=r"normalization arrays: missing key\(s\) \['action_max'\]"):
        LowdimNormalization(CountingEnv(), normalization={k: v for k, v in arrays.items() if k != "action_max"})
    with pytest.raises(EnvConfigError, match="given normalization arrays has obs dim 2"):
        LowdimNormalization(CountingEnv(), normalization={**arrays, "obs_min": [0, 0], "obs_max": [1, 1]})


def test_a_missing_normalization_file_falls_back_to_the_checkpoints_arrays(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from agent.errors import DataError
    from agent.rollout import env_config, load_env_block

    wrappers = {"d3il_lowdim": {"normalization_path": str(tmp_path / "gone.npz")}}
    cfg = load_env_block(OmegaConf.create({"env": {"name": "avoid_m1", "wrappers": wrappers}}))
    stats = {"obs_min": np.zeros(4), "obs_max": np.ones(4), "action_min": -np.ones(2), "action_max": np.ones(2)}
    kwargs = env_config(cfg, tmp_path, stats).wrappers["d3il_lowdim"]
    assert kwargs["normalization_path"] is None
    assert kwargs["normalization"].keys() == stats.keys()
    np.testing.assert_array_equal(kwargs["normalization"]["obs_max"], np.ones(4))
    assert list(tmp_path.iterdir()) == []  # nothing written to the run folder
    assert cfg.wrappers["d3il_lowdim"]["normalization_path"] == wrappers["d3il_lowdim"]["normalization_path"]
    with pytest.raises(DataError, match="checkpoint carries no normalization"):
        env_config(cfg, tmp_path, None)


# ---------------------------------------------------------------------------------------------- vector env
@pytest.mark.parametrize("asynchronous", [False, True])
def test_vector_autoreset_final_obs_and_episode_stats(asynchronous: bool) -> None:
    # sub-env 0 terminates at t = 6, sub-env 1 only hits the time limit at t = 12
    vec = make_vec(
        2, asynchronous, To=2, Te=4, max_episode_steps=12, per_env=lambda i: {"terminate_at": 6 if i == 0 else None}
    )
    try:
        obs, info = vec.reset()
        assert obs["state"].shape == (2, 2, 4) and info == {}
        chunk = np.zeros((2, 4, 2), np.float32)
        obs, reward, terminated, truncated, info = vec.step(chunk)
        assert reward.tolist() == [10.0, 10.0] and not (terminated | truncated).any()
        np.testing.assert_array_equal(info["final_obs"]["state"], obs["state"])
        assert info["episode_length"].tolist() == [0, 0]
        obs, reward, terminated, truncated, info = vec.step(chunk)
        assert terminated.tolist() == [True, False] and truncated.tolist() == [False, False]
        assert reward.tolist() == [11.0, 26.0] and info["chunk_steps"].tolist() == [2, 4]
        # sub-env 0 was reset in the same step: new episode, history padded with its first obs
        assert t_of(obs["state"][0]).tolist() == [0, 0] and obs["state"][0, 0, 1] == 1
        assert t_of(info["final_obs"]["state"][0]).tolist() == [5, 6]
        assert t_of(obs["state"][1]).tolist() == [7, 8]
        assert info["episode_return"].tolist() == [21.0, 0.0]
        assert info["episode_length"].tolist() == [6, 0]
        assert info["episode_success"].tolist() == [True, False]
        assert info["success"].tolist() == [False, False]
        obs, reward, terminated, truncated, info = vec.step(chunk)
        assert terminated.tolist() == [False, False] and truncated.tolist() == [False, True]
        assert info["episode_length"].tolist() == [0, 12] and info["episode_return"][1] == sum(range(1, 13))
        assert t_of(info["final_obs"]["state"][1]).tolist() == [11, 12]
        assert t_of(obs["state"][0]).tolist() == [3, 4]
        assert t_of(obs["state"][1]).tolist() == [0, 0]
    finally:
        vec.close()


def test_vector_seeding_is_seed_plus_index() -> None:
    a, b, c = make_vec(3, seed=7), make_vec(3, seed=7), make_vec(3, seed=8)
    sa, sb, sc = (v.reset()[0]["state"][:, 0, 3] for v in (a, b, c))
    np.testing.assert_array_equal(sa, sb)
    assert len(set(sa.tolist())) == 3
    np.testing.assert_array_equal(sa[1:], sc[:2])  # seed 7 + 1 == seed 8 + 0
    # the factory seed applies to the first reset only; later resets continue the RNG streams
    assert not np.array_equal(a.reset()[0]["state"][:, 0, 3], sa)


def test_vector_action_validation() -> None:
    vec = make_vec(2)
    vec.reset()
    with pytest.raises(ValueError, match=r"counting: actions must have shape \(n_envs=2, act_steps=4, action_dim=2\)"):
        vec.step(np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="counting: actions must have shape"):
        vec.step(np.zeros((2, 3, 2)))
    bad = np.zeros((2, 4, 2))
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match=r"non-finite action .* sub-env\(s\) \[1\]"):
        vec.step(bad)
    big = np.zeros((2, 4, 2))
    big[0, :, 0] = 3.0
    vec.step(big)  # clipped by default: the raw env sees the action_max of the identity normalisation (1)
    assert vec.env.envs[0].unwrapped.last_action == pytest.approx(1.0, abs=1e-5)
    vec.step(np.zeros((2, 6, 2)))  # a longer horizon is cut to Te


def test_vector_rejects_out_of_range_without_clipping() -> None:
    vec = make_vec(2, action_clip=False, action_tolerance=0.01)
    vec.reset()
    a = np.zeros((2, 4, 2))
    a[1, 0, 1] = 1.005
    vec.step(a)  # within tolerance
    a[1, 0, 1] = 1.5
    with pytest.raises(ValueError, match=r"sub-env\(s\) \[1\] reach \|a\| = 1.5"):
        vec.step(a)


def test_sub_env_exception_names_the_env() -> None:
    vec = make_vec(2, per_env=lambda i: {"fail_at": 2 if i == 1 else None})
    vec.reset()
    with pytest.raises(SubEnvError, match="counting sub-env 1: step failed: RuntimeError: boom"):
        vec.step(np.zeros((2, 4, 2)))


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium logs the worker's traceback as warnings
def test_async_sub_env_exception_names_the_env() -> None:
    vec = make_vec(2, asynchronous=True, per_env=lambda i: {"fail_at": 2 if i == 1 else None})
    try:
        vec.reset()
        with pytest.raises(SubEnvError, match="counting sub-env 1: step failed"):
            vec.step(np.zeros((2, 4, 2)))
    finally:
        vec.close(terminate=True)


def test_async_dead_worker_is_reported() -> None:
    vec = make_vec(2, asynchronous=True, step_timeout=10)
    vec.reset()
    victim = vec.env.processes[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    with pytest.raises(EnvWorkerError, match=r"counting: step failed: sub-env 1 \(pid \d+\) killed by signal SIGKILL"):
        vec.step(np.zeros((2, 4, 2)))
    assert vec.env.closed


def test_async_stopped_worker_is_killed_and_reported() -> None:
    """A SIGSTOPped worker: the step times out, the cleanup does not wait for it, and every worker is gone."""
    vec = make_vec(2, asynchronous=True, step_timeout=1.0)
    vec.reset()
    victim = vec.env.processes[0]
    os.kill(victim.pid, signal.SIGSTOP)
    start = time.perf_counter()
    with pytest.raises(EnvWorkerError, match=r"sub-env 0 \(pid \d+\) is stopped \(SIGSTOP"):
        vec.step(np.zeros((2, 4, 2)))
    assert time.perf_counter() - start < 1.0 + 10
    assert not any(p.is_alive() for p in vec.env.processes)


def test_async_hung_worker_times_out() -> None:
    vec = make_vec(2, asynchronous=True, step_timeout=0.5, per_env=lambda i: {"sleep": 2.0 if i == 0 else 0.0})
    vec.reset()
    start = time.perf_counter()
    with pytest.raises(EnvWorkerError, match=r"sub-env 0 \(pid \d+\) did not answer within 0.5 s"):
        vec.step(np.zeros((2, 4, 2)))
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------- factory config
def avoid_cfg(**overrides):
    cfg = {"name": "avoid_m1", "n_envs": 1, "wrappers": {"multi_step": {"n_obs_steps": 1, "n_action_steps": 1}}}
    cfg.update(overrides)
    return cfg


def test_unknown_env_name_lists_known_ones() -> None:
    with pytest.raises(EnvConfigError, match="unknown env 'hoppr-v2' \\(did you mean 'hopper-v2'\\?\\)") as err:
        make_vec_env(avoid_cfg(name="hoppr-v2"), seed=0)
    for known in ("avoid: avoid_m1", "hopper-medium-v2", "robomimic: can, lift, square, transport", "kitchen-mixed-v0"):
        assert known in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"n_env": 2}, r"unknown key\(s\) \['n_env'\]"),
        ({"n_envs": 0}, "env.n_envs must be a positive integer"),
        ({"wrappers": {"multi_stepp": {}}}, "unknown wrapper 'multi_stepp'"),
        ({"wrappers": {"multi_step": {"n_obs_step": 1}}}, r"multi_step: unknown key\(s\) \['n_obs_step'\]"),
        ({"wrappers": {"multi_step": {}, "d3il_lowdim": {}}}, "multi_step must be listed once, as the last"),
        ({"wrappers": {"robomimic_lowdim": {}}}, "robomimic_lowdim does not apply to env 'avoid_m1'"),
        ({"env_kwargs": {"gravity": 1}}, r"\['gravity'\] not accepted by avoid_m1"),
        ({"use_image_obs": True}, "use_image_obs=True"),
    ],
)
def test_config_errors(overrides: dict, match: str) -> None:
    with pytest.raises(EnvConfigError, match=match):
        make_vec_env(avoid_cfg(**overrides), seed=0)


def test_loop_keys_are_accepted() -> None:
    cfg = avoid_cfg(reset_at_iteration=True, best_reward_threshold_for_success=1, save_full_observations=False)
    vec = make_vec_env(cfg, seed=0)
    assert vec.reset()[0]["state"].shape == (1, 1, 4)


def test_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import env.registry as registry

    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda m, *a: None if m == "robosuite" else real(m))
    with pytest.raises(MissingDependencyError, match=r'needs robosuite: pip install -e "\.\[robomimic\]"$'):
        make_vec_env({"name": "can"}, seed=0)
