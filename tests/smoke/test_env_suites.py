"""Every suite builds through the factory and steps, sync and async; suite-specific semantics are checked.

Suites whose pip extra is missing are skipped with the extra's name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from env import make_vec_env
from env.suites.avoid import AvoidLayout, WaypointFollower


def needs(module: str, extra: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f'needs the {extra} extra: pip install -e ".[{extra}]"'
    )


GYM = needs("mujoco", "gym")
ROBOMIMIC = needs("robosuite", "robomimic")
KITCHEN = needs("gymnasium_robotics", "kitchen")

# name, task wrapper, (Do, Da), marks
TASKS = [
    pytest.param("hopper-v2", "mujoco_locomotion_lowdim", (11, 3), marks=GYM),
    pytest.param("walker2d-medium-v2", "mujoco_locomotion_lowdim", (17, 6), marks=GYM),
    pytest.param("halfcheetah-v2", "mujoco_locomotion_lowdim", (17, 6), marks=GYM),
    pytest.param("avoid_m2", "d3il_lowdim", (4, 2)),
    pytest.param("kitchen-mixed-v0", "mujoco_locomotion_lowdim", (60, 9), marks=KITCHEN),
    pytest.param("lift", "robomimic_lowdim", (19, 7), marks=ROBOMIMIC),
    pytest.param("can", "robomimic_lowdim", (23, 7), marks=ROBOMIMIC),
    pytest.param("square", "robomimic_lowdim", (23, 7), marks=[ROBOMIMIC, pytest.mark.slow]),
    pytest.param("transport", "robomimic_lowdim", (59, 14), marks=[ROBOMIMIC, pytest.mark.slow]),
]


def cfg(name: str, wrapper: str, n_envs: int = 2, To: int = 2, Te: int = 3, **extra) -> dict:
    return {
        "name": name,
        "n_envs": n_envs,
        "wrappers": {wrapper: {"normalization_path": None}, "multi_step": {"n_obs_steps": To, "n_action_steps": Te}},
        **extra,
    }


def check_step(vec, Do: int, Da: int, n_envs: int = 2, To: int = 2, Te: int = 3) -> None:
    obs, info = vec.reset()
    assert set(obs) == {"state"}
    assert obs["state"].shape == (n_envs, To, Do) and obs["state"].dtype == np.float32
    assert vec.action_space.shape == (n_envs, Te, Da)
    rng = np.random.default_rng(0)
    for _ in range(2):
        obs, reward, terminated, truncated, info = vec.step(rng.uniform(-1, 1, (n_envs, Te, Da)))
        assert obs["state"].shape == (n_envs, To, Do) and np.isfinite(obs["state"]).all()
        assert reward.shape == terminated.shape == truncated.shape == (n_envs,)
        assert info["final_obs"]["state"].shape == (n_envs, To, Do)
        assert ((info["chunk_steps"] >= 1) & (info["chunk_steps"] <= Te)).all()
    # the history moved: the newest observation differs from the oldest one after a full chunk
    assert not np.array_equal(obs["state"][:, 0], obs["state"][:, -1])


@pytest.mark.parametrize(("name", "wrapper", "dims"), TASKS)
def test_suite_builds_and_steps_sync(name: str, wrapper: str, dims: tuple[int, int]) -> None:
    vec = make_vec_env(cfg(name, wrapper), seed=0)
    try:
        check_step(vec, *dims)
    finally:
        vec.close()


@pytest.mark.parametrize(
    ("name", "wrapper", "dims"),
    [
        pytest.param("hopper-v2", "mujoco_locomotion_lowdim", (11, 3), marks=GYM),
        pytest.param("avoid_m1", "d3il_lowdim", (4, 2)),
        pytest.param("kitchen-complete-v0", "mujoco_locomotion_lowdim", (60, 9), marks=KITCHEN),
        pytest.param("can", "robomimic_lowdim", (23, 7), marks=ROBOMIMIC),
    ],
)
def test_suite_builds_and_steps_async(name: str, wrapper: str, dims: tuple[int, int]) -> None:
    vec = make_vec_env(cfg(name, wrapper, asynchronous=True), seed=0)
    try:
        check_step(vec, *dims)
    finally:
        vec.close()


# ---------------------------------------------------------------------------------------------- gym
@GYM
def test_gym_seeding_falls_and_time_limit() -> None:
    a = make_vec_env(cfg("hopper-v2", "mujoco_locomotion_lowdim", n_envs=2, To=1, Te=4), seed=3)
    b = make_vec_env(cfg("hopper-v2", "mujoco_locomotion_lowdim", n_envs=2, To=1, Te=4), seed=3)
    obs_a, obs_b = a.reset()[0]["state"], b.reset()[0]["state"]
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a[0], obs_a[1])
    # full-throttle actions make the hopper fall well before 1000 steps: a termination, not a truncation
    for _ in range(100):
        _, _, terminated, truncated, info = a.step(np.ones((2, 4, 3)))
        if terminated.any():
            break
    assert terminated.any() and not truncated.any()
    done = np.flatnonzero(terminated)
    assert (info["episode_length"][done] < 400).all() and (info["episode_return"][done] != 0).all()
    # a short time limit truncates (the gym env itself would otherwise only stop at 1000)
    c = make_vec_env(cfg("hopper-v2", "mujoco_locomotion_lowdim", n_envs=1, To=1, Te=4, max_episode_steps=6), seed=0)
    c.reset()
    _, _, terminated, truncated, info = c.step(np.zeros((1, 4, 3)))
    assert not (terminated | truncated).any()
    _, _, terminated, truncated, info = c.step(np.zeros((1, 4, 3)))
    assert truncated.tolist() == [True] and terminated.tolist() == [False]
    assert info["episode_length"].tolist() == [6] and info["chunk_steps"].tolist() == [2]


# ---------------------------------------------------------------------------------------------- avoid
def test_avoid_scripted_route_reaches_goal_and_collision_terminates() -> None:
    layout = AvoidLayout()
    routes = layout.feasible_routes()
    assert len(routes) >= 8 and len({r[0] for r in routes}) == 2  # both sides of the first obstacle
    vec = make_vec_env(cfg("avoid_m3", "d3il_lowdim", n_envs=1, To=1, Te=1), seed=0)
    obs, _ = vec.reset()
    follower = WaypointFollower(layout.route_waypoints(routes[-1]), max_step=layout.max_step)
    for _ in range(100):
        action = follower(obs["state"][0, -1])  # identity normalisation: normalised == raw units
        obs, reward, terminated, truncated, info = vec.step(action[None, None])
        if terminated[0] or truncated[0]:
            break
    assert terminated[0] and reward[0] == 1.0 and info["episode_success"][0] and info["success"][0]
    # straight ahead runs into the first obstacle: terminated without reward or success
    obs, _ = vec.reset()
    for _ in range(100):
        obs, reward, terminated, truncated, info = vec.step(np.array([[[0.0, 1.0]]]))
        if terminated[0]:
            break
    assert terminated[0] and reward[0] == 0.0 and not info["episode_success"][0]
    assert layout.collides(info["final_obs"]["state"][0, -1, 2:])


def test_avoid_video(tmp_path: Path) -> None:
    import imageio.v2 as imageio

    config = cfg("avoid_m1", "d3il_lowdim", n_envs=3, To=1, Te=4, max_episode_steps=8, save_video=True)
    config.update(video_dir=str(tmp_path), n_video_envs=2, n_video_episodes=1, render_size=[64, 64])
    vec = make_vec_env(config, seed=0)
    vec.reset()
    for _ in range(3):  # two episodes of 8 steps; only the first one of each recording env is written
        vec.step(np.zeros((3, 4, 2)))
    vec.reset(options={"video_prefix": "eval"})  # re-arm: the next episode is recorded under a new name
    vec.step(np.zeros((3, 4, 2)))
    vec.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "avoid_m1_env00_ep000.mp4",
        "avoid_m1_env01_ep000.mp4",
        "eval_env00_ep000.mp4",
        "eval_env01_ep000.mp4",
    ]
    frames = imageio.mimread(tmp_path / files[0])
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)  # reset frame + 8 steps
    assert len(imageio.mimread(tmp_path / "eval_env00_ep000.mp4")) == 5  # closed at vec.close()


# ---------------------------------------------------------------------------------------------- kitchen
@KITCHEN
def test_kitchen_reward_counts_completed_tasks() -> None:
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    vec = make_vec_env(cfg("kitchen-complete-v0", "mujoco_locomotion_lowdim", n_envs=1, To=1, Te=1), seed=0)
    obs, _ = vec.reset()
    goal = obs["state"][0, -1, 30:]
    assert goal[22] == pytest.approx(-0.75) and goal[11] == 0.0  # microwave in the task set, bottom burner not
    kitchen = vec.env.envs[0].unwrapped
    for task in ("microwave", "kettle", "light switch", "slide cabinet"):
        kitchen.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]
    _, reward, terminated, truncated, info = vec.step(np.zeros((1, 1, 9)))
    assert reward[0] == 4.0 and terminated[0] and not truncated[0]
    assert info["episode_success"][0] and info["episode_return"][0] == 4.0


# ---------------------------------------------------------------------------------------------- robomimic
@ROBOMIMIC
def test_robomimic_object_layout_and_success_reward() -> None:
    vec = make_vec_env(cfg("lift", "robomimic_lowdim", n_envs=1, To=1, Te=1), seed=0)
    obs, _ = vec.reset()
    raw_env = vec.env.envs[0].unwrapped
    rs = raw_env.robosuite_env
    state = obs["state"][0, -1]
    cube = rs.sim.data.body_xpos[rs.cube_body_id]
    np.testing.assert_allclose(state[:3], rs.sim.data.site_xpos[rs.robots[0].eef_site_id["right"]], atol=1e-5)
    np.testing.assert_allclose(state[9:12], cube, atol=1e-5)  # object = [cube_pos, cube_quat, gripper_to_cube]
    np.testing.assert_allclose(state[16:19], cube - state[:3], atol=1e-5)
    # lift the cube 10 cm: the next step is a success step with sparse reward 1.0 (no termination)
    joint = rs.cube.joints[0]
    qpos = rs.sim.data.get_joint_qpos(joint).copy()
    qpos[2] += 0.1
    rs.sim.data.set_joint_qpos(joint, qpos)
    rs.sim.forward()
    _, reward, terminated, truncated, info = vec.step(np.zeros((1, 1, 7)))
    assert reward[0] == 1.0 and info["success"][0] and not terminated[0] and not truncated[0]


@ROBOMIMIC
def test_robomimic_can_object_uses_robosuite_14_order() -> None:
    vec = make_vec_env(cfg("can", "robomimic_lowdim", n_envs=1, To=1, Te=1), seed=1)
    obs, _ = vec.reset()
    rs = vec.env.envs[0].unwrapped.robosuite_env
    state = obs["state"][0, -1]
    np.testing.assert_allclose(state[9:12], rs.sim.data.body_xpos[rs.obj_body_id["Can"]], atol=1e-5)
    # object-to-eef position (robot frame) is filled at reset (robosuite 1.5 returns zeros there)
    assert np.linalg.norm(state[16:19]) > 0.05


@ROBOMIMIC
@pytest.mark.slow
def test_robomimic_image_obs_and_video(tmp_path: Path) -> None:
    shape_meta = {"obs": {"rgb": {"shape": [3, 96, 96]}, "state": {"shape": [9]}}, "action": {"shape": [7]}}
    config = {
        "name": "can",
        "n_envs": 2,
        "asynchronous": True,
        "max_episode_steps": 4,
        "save_video": True,
        "video_dir": str(tmp_path),
        "render_size": [128, 128],
        "wrappers": {
            "robomimic_image": {
                "normalization_path": None,
                "low_dim_keys": ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"],
                "image_keys": ["robot0_eye_in_hand_image"],
                "shape_meta": shape_meta,
            },
            "multi_step": {"n_obs_steps": 2, "n_action_steps": 4},
        },
    }
    vec = make_vec_env(config, seed=0)
    obs, _ = vec.reset()
    assert obs["rgb"].shape == (2, 2, 3, 96, 96) and obs["rgb"].dtype == np.uint8
    assert obs["state"].shape == (2, 2, 9)
    assert obs["rgb"].std() > 5  # a real picture, not a blank buffer
    _, _, terminated, truncated, _ = vec.step(np.zeros((2, 4, 7)))
    assert truncated.all() and not terminated.any()
    vec.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["can_env00_ep000.mp4"]


@GYM
def test_mujoco_video_from_spawned_async_workers(tmp_path: Path) -> None:
    """An async MuJoCo env that renders starts its workers with spawn (fork hangs in EGL) and writes an mp4 of the
    first sub-env's episode, one frame per env step plus the reset frame."""
    import imageio.v3 as iio

    config = cfg("hopper-v2", "mujoco_locomotion_lowdim", n_envs=2, To=1, Te=2, asynchronous=True)
    config.update(max_episode_steps=4, save_video=True, video_dir=str(tmp_path), render_size=[48, 48])
    vec = make_vec_env(config, seed=0)
    try:
        assert [type(p).__name__ for p in vec.env.processes] == ["SpawnProcess"] * 2
        vec.reset()
        for _ in range(2):
            _, _, terminated, truncated, _ = vec.step(np.zeros((2, 2, 3)))
        assert (terminated | truncated).all()
    finally:
        vec.close()
    videos = sorted(tmp_path.glob("*.mp4"))
    assert [p.name for p in videos] == ["hopper-v2_env00_ep000.mp4"]
    frames = iio.imread(videos[0])
    assert frames.shape[1:] == (48, 48, 3) and len(frames) == 5 and frames.std() > 1
