"""Dataset scripts: normalisation, D4RL and robomimic conversion, scripted demos, downloads (no network)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from script.dataset import common, convert_d4rl, convert_robomimic, download

# ----------------------------------------------------------------------------------------------------
# common


def test_normalize_matches_reference_formula_and_inverts() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1.0, 10.0, 0.0]  # third dimension constant
    lo, hi = common.min_max(x)
    y = common.normalize(x, lo, hi)
    expected = 2 * (x.astype(np.float32) - lo) / (hi - lo + 1e-6) - 1
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert y.dtype == np.float32
    assert y.min() >= -1.0 and y.max() <= 1.0
    np.testing.assert_allclose(y[:, :2].min(axis=0), -1.0, atol=1e-6)
    np.testing.assert_allclose(y[:, :2].max(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(y[:, 2], -1.0)  # constant dims map to -1 (reference formula)
    np.testing.assert_allclose(common.denormalize(y, lo, hi), x, atol=1e-4)


def test_split_indices_partition_and_seed() -> None:
    train, val = common.split_indices(10, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(10))
    t2, v2 = common.split_indices(10, 0.3, seed=1)
    np.testing.assert_array_equal(val, v2)
    train, val = common.split_indices(2, 0.01)
    assert len(train) == 1 and len(val) == 1  # a requested split always gets one trajectory
    train, val = common.split_indices(5, 0.0)
    assert len(val) == 0 and len(train) == 5
    with pytest.raises(ValueError):
        common.split_indices(5, 1.0)


def test_write_dataset_split_files_and_atomic(tmp_path: Path) -> None:
    lengths = np.array([3, 4, 5, 6])
    n = lengths.sum()
    states = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    actions = -np.arange(n, dtype=np.float64).reshape(n, 1)
    summary = common.write_dataset(tmp_path, states, actions, lengths, val_split=0.25, seed=0)
    train = np.load(tmp_path / "train.npz")
    val = np.load(tmp_path / "val.npz")
    norm = np.load(tmp_path / "normalization.npz")
    assert summary.n_train_traj == 3 and summary.n_val_traj == 1
    assert train["traj_lengths"].sum() + val["traj_lengths"].sum() == n
    assert sorted([*train["traj_lengths"], *val["traj_lengths"]]) == [3, 4, 5, 6]
    # trajectories are kept whole: the val trajectory's first state is a trajectory start of the input
    starts = common.traj_starts(lengths)
    first_val = common.denormalize(val["states"][0], norm["obs_min"], norm["obs_max"])
    assert np.isclose(first_val[0], states[starts, 0], atol=1e-3).any()
    np.testing.assert_array_equal(norm["obs_min"], [0, 1])
    np.testing.assert_array_equal(norm["action_max"], [0])
    assert train["states"].dtype == np.float32 and train["terminals"].dtype == bool
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind


def test_resize_images_area_and_bilinear() -> None:
    img = np.zeros((1, 4, 4, 3), np.uint8)
    img[0, :2, :2] = 200  # top-left quadrant
    small = common.resize_images(img, 2)
    assert small.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(small[0, :, :, 0], [[200, 0], [0, 0]])
    const = np.full((2, 5, 7, 3), 77, np.uint8)
    out = common.resize_images(const, (3, 4))  # non-integer factor: bilinear
    assert out.shape == (2, 3, 4, 3) and (out == 77).all()
    grad = np.tile(np.arange(0, 250, 10, dtype=np.uint8)[None, None, :, None], (1, 25, 1, 3))
    up = common.resize_images(grad, 40)
    assert (np.diff(up[0, 0, :, 0].astype(int)) >= 0).all()  # monotone stays monotone


# ----------------------------------------------------------------------------------------------------
# D4RL


def _d4rl_dict() -> dict[str, np.ndarray]:
    """5 episodes + an unfinished tail.

    Ends: terminal at 2, timeout at 6, both at 9, terminal at 11, timeout at 15; tail 16..18. Episode 3
    (steps 10..11) has negative reward, episode 1 (3..6) zero reward.
    """
    n = 19
    obs = np.stack([np.arange(n), np.arange(n) ** 2, np.full(n, 3.0)], axis=1).astype(np.float32)
    actions = np.linspace(-2, 5, n, dtype=np.float32)[:, None] * [1.0, -1.0]
    rewards = np.ones(n, np.float32)
    rewards[3:7] = 0.0
    rewards[10:12] = -1.0
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[[2, 9, 11]] = True
    timeouts[[6, 9, 15]] = True
    obs[17] = [100.0, -50.0, 3.0]  # extreme values in the dropped tail still count for the statistics
    return {
        "observations": obs,
        "actions": actions,
        "rewards": rewards,
        "terminals": terminals,
        "timeouts": timeouts,
    }


def test_episode_lengths_union_of_terminals_and_timeouts() -> None:
    d = _d4rl_dict()
    lengths = convert_d4rl.episode_lengths(d["terminals"], d["timeouts"])
    np.testing.assert_array_equal(lengths, [3, 4, 3, 2, 4])  # ends 2, 6, 9, 11, 15; tail 16..18 dropped


def test_convert_d4rl_filters_and_normalises(tmp_path: Path) -> None:
    d = _d4rl_dict()
    summary = convert_d4rl.convert_d4rl(d, tmp_path)
    train = np.load(tmp_path / "train.npz")
    norm = np.load(tmp_path / "normalization.npz")
    np.testing.assert_array_equal(train["traj_lengths"], [3, 3, 4])  # zero- and negative-reward episodes skipped
    assert summary.n_train_steps == 10
    # statistics over the whole file, tail included
    np.testing.assert_array_equal(norm["obs_min"], [0, -50, 3])
    np.testing.assert_array_equal(norm["obs_max"], [100, 18**2, 3])
    kept_rows = np.r_[0:3, 7:10, 12:16]
    expected = common.normalize(d["observations"][kept_rows], norm["obs_min"], norm["obs_max"])
    np.testing.assert_allclose(train["states"], expected, atol=1e-6)
    np.testing.assert_allclose(
        train["actions"], common.normalize(d["actions"][kept_rows], norm["action_min"], norm["action_max"])
    )
    assert train["states"].min() >= -1 and train["states"].max() <= 1
    np.testing.assert_array_equal(train["terminals"], d["terminals"][kept_rows])
    np.testing.assert_array_equal(train["rewards"], d["rewards"][kept_rows])


def test_convert_d4rl_options(tmp_path: Path) -> None:
    d = _d4rl_dict()
    convert_d4rl.convert_d4rl(d, tmp_path / "all", skip_nonpositive_reward=False)
    np.testing.assert_array_equal(np.load(tmp_path / "all" / "train.npz")["traj_lengths"], [3, 4, 3, 2, 4])
    convert_d4rl.convert_d4rl(d, tmp_path / "first2", max_episodes=2)  # first 2 episodes, then the filter
    np.testing.assert_array_equal(np.load(tmp_path / "first2" / "train.npz")["traj_lengths"], [3])
    s = convert_d4rl.convert_d4rl(d, tmp_path / "split", val_split=0.34, seed=3)
    assert (s.n_train_traj, s.n_val_traj) == (2, 1)
    assert s.n_train_steps + s.n_val_steps == 10
    no_reward = dict(d, rewards=np.zeros_like(d["rewards"]))
    with pytest.raises(ValueError, match="no episode"):
        convert_d4rl.convert_d4rl(no_reward, tmp_path / "none")


@pytest.mark.parametrize("suffix", [".npz", ".pkl", ".hdf5"])
def test_load_d4rl_dict_formats(tmp_path: Path, suffix: str) -> None:
    d = _d4rl_dict()
    path = tmp_path / f"data{suffix}"
    if suffix == ".npz":
        np.savez(path, **d)
    elif suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(d, f)
    else:
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in d.items():
                f.create_dataset(k, data=v)
            f.create_group("infos").create_dataset("qpos", data=np.zeros(3))  # nested groups are ignored
    loaded = convert_d4rl.load_d4rl_dict(path)
    for k, v in d.items():
        np.testing.assert_array_equal(loaded[k], v)


def test_a_pickle_beyond_numpy_arrays_needs_allow_pickle(tmp_path: Path) -> None:
    """A pickled dict of arrays loads as before (every numeric dtype, OrderedDict); a `defaultdict` (a harmless
    global that is not an array) is refused naming `--allow-pickle` and loads with it."""
    from collections import OrderedDict, defaultdict

    d = _d4rl_dict()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(OrderedDict(d, extra=np.arange(3, dtype=np.uint8), flag=np.float32(1.5))))
    assert convert_d4rl.load_d4rl_dict(plain)["extra"].tolist() == [0, 1, 2]
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps(defaultdict(list, d)))
    with pytest.raises(ValueError, match=r"needs arbitrary unpickling .*collections.defaultdict.*--allow-pickle"):
        convert_d4rl.load_d4rl_dict(other)
    np.testing.assert_array_equal(convert_d4rl.load_d4rl_dict(other, allow_pickle=True)["actions"], d["actions"])


def test_convert_d4rl_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DPPO_DATA_DIR", str(tmp_path / "data"))
    d = _d4rl_dict()
    np.savez(tmp_path / "hopper.npz", **d)
    assert convert_d4rl.main(["--input", str(tmp_path / "hopper.npz"), "--task", "hopper-medium-v2"]) == 0
    assert (tmp_path / "data" / "gym" / "hopper-medium-v2" / "train.npz").is_file()
    assert "train 3 traj / 10 steps" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# robomimic conversion


def _write_robomimic(path: Path, lengths: dict[int, int], image_hw: int = 8) -> dict[int, dict[str, np.ndarray]]:
    """A synthetic robomimic file; demo numbers are the dict keys (written out of order)."""
    import h5py

    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i, t in lengths.items():
            d = {
                "robot0_eef_pos": rng.normal(size=(t, 3)),
                "robot0_eef_quat": rng.normal(size=(t, 4)),
                "robot0_gripper_qpos": rng.normal(size=(t, 2)),
                "object": rng.normal(size=(t, 10)) * i,
                "agentview_image": rng.integers(0, 256, size=(t, image_hw, image_hw, 3), dtype=np.uint8),
                "robot0_eye_in_hand_image": np.full((t, image_hw, image_hw, 3), i, np.uint8),
                "actions": rng.uniform(-1, 1, size=(t, 7)),
                "rewards": np.zeros(t),
            }
            g = data.create_group(f"demo_{i}")
            obs = g.create_group("obs")
            for k, v in d.items():
                (g if k in ("actions", "rewards") else obs).create_dataset(k, data=v)
            g.create_dataset("dones", data=np.eye(1, t, t - 1, dtype=np.int64)[0])
            demos[i] = d
    return demos


def test_sorted_demo_names() -> None:
    assert convert_robomimic.sorted_demo_names(["demo_10", "demo_2", "mask", "demo_1"]) == [
        "demo_1",
        "demo_2",
        "demo_10",
    ]


def test_convert_robomimic_synthetic_lowdim_and_images(tmp_path: Path) -> None:
    demos = _write_robomimic(tmp_path / "x.hdf5", {10: 4, 2: 3, 1: 5})
    s = convert_robomimic.convert_robomimic(tmp_path / "x.hdf5", tmp_path / "low")
    train = np.load(tmp_path / "low" / "train.npz")
    np.testing.assert_array_equal(train["traj_lengths"], [5, 3, 4])  # demo_1, demo_2, demo_10
    assert s.obs_dim == 3 + 4 + 2 + 10 and "images" not in train.files
    raw = np.concatenate(
        [
            np.concatenate(
                [demos[i][k] for k in ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")],
                axis=1,
            )
            for i in (1, 2, 10)
        ]
    )
    norm = np.load(tmp_path / "low" / "normalization.npz")
    np.testing.assert_allclose(norm["obs_min"], raw.min(0).astype(np.float32))
    np.testing.assert_allclose(train["states"], common.normalize(raw, norm["obs_min"], norm["obs_max"]))
    assert not train["terminals"].any()

    s = convert_robomimic.convert_robomimic(
        tmp_path / "x.hdf5",
        tmp_path / "img",
        cameras=["agentview", "robot0_eye_in_hand"],
        image_size=4,
        max_episodes=2,
    )
    img = np.load(tmp_path / "img" / "train.npz")
    assert s.obs_dim == 9  # no object state with cameras (docs/algorithms.md#converters)
    assert img["images"].shape == (8, 6, 4, 4) and img["images"].dtype == np.uint8
    np.testing.assert_array_equal(img["traj_lengths"], [5, 3])
    # channels 3..5 are the eye-in-hand camera, whose pixels hold the demo number
    np.testing.assert_array_equal(img["images"][:5, 3:], 1)
    np.testing.assert_array_equal(img["images"][5:, 3:], 2)
    # channels 0..2: agentview, HWC -> CHW with a 2x2 area average
    expected = demos[1]["agentview_image"][0].reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(img["images"][0, :3], np.rint(expected).transpose(2, 0, 1), atol=0.5)

    with pytest.raises(ValueError, match=r"data/demo_1/obs lacks key\(s\) \['frontview_image'\]"):
        convert_robomimic.convert_robomimic(tmp_path / "x.hdf5", tmp_path / "bad", cameras=["frontview"])


@pytest.fixture(scope="module")
def lift_hdf5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two short scripted lift demonstrations (robosuite) as a robomimic hdf5."""
    pytest.importorskip("robosuite")
    from script.dataset import generate_robomimic

    path = tmp_path_factory.mktemp("lift") / "demos.hdf5"
    stats = generate_robomimic.generate_demos("lift", 2, path, seed=0)
    assert stats.n_recorded == 2
    return path


def test_scripted_lift_hdf5_layout(lift_hdf5: Path) -> None:
    import h5py

    with h5py.File(lift_hdf5, "r") as f:
        data = f["data"]
        assert sorted(data.keys()) == ["demo_0", "demo_1"]
        meta = json.loads(data.attrs["env_args"])
        assert meta["env_name"] == "Lift"
        ctrl = meta["env_kwargs"]["controller_configs"]
        assert ctrl["type"] == "OSC_POSE" and ctrl["output_max"][:4] == [0.05, 0.05, 0.05, 0.5]
        assert meta["env_kwargs"]["control_freq"] == 20
        total = 0
        for name in ("demo_0", "demo_1"):
            g = data[name]
            t = g["actions"].shape[0]
            total += t
            assert g["actions"].shape == (t, 7) and np.abs(g["actions"][()]).max() <= 1.0
            assert g["obs/object"].shape == (t, 10) and g["obs/robot0_eef_pos"].shape == (t, 3)
            assert g["states"].shape[0] == t and g["rewards"].shape == (t,) and g["dones"][-1] == 1
            assert g["rewards"][-1] == 1.0  # the demo ends lifted (sparse success reward)
            # the cube ends higher than it started (the reset may drop it from a few mm, so no fixed margin;
            # the success reward above already says it was lifted 4 cm above the table)
            assert g["obs/object"][-1, 2] > g["obs/object"][0, 2]
        assert data.attrs["total"] == total


def _load_with_pretrain_config(config_dir: str, data_root: Path, monkeypatch: pytest.MonkeyPatch):
    """The generated dataset as the pretraining agent reads it: the real config's `train_dataset` block."""
    from agent.config import CFG_ROOT, compose, instantiate

    monkeypatch.setenv("DPPO_DATA_DIR", str(data_root))
    cfg = compose(CFG_ROOT / config_dir, "pre_diffusion_mlp", ["wandb=null"])
    return cfg, instantiate(cfg.train_dataset, "train_dataset")


def test_convert_scripted_lift(lift_hdf5: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = convert_robomimic.convert_robomimic(lift_hdf5, tmp_path / "robomimic" / "lift", val_split=0.5)
    cfg, dataset = _load_with_pretrain_config("robomimic/pretrain/lift", tmp_path, monkeypatch)
    batch = dataset.get_batch(torch.arange(len(dataset)))
    assert batch.actions.shape == (len(dataset), cfg.horizon_steps, 7) and batch.cond["state"].shape[-1] == 19
    train = np.load(tmp_path / "robomimic" / "lift" / "train.npz")
    val = np.load(tmp_path / "robomimic" / "lift" / "val.npz")
    norm = np.load(tmp_path / "robomimic" / "lift" / "normalization.npz")
    assert (s.n_train_traj, s.n_val_traj) == (1, 1)
    assert train["states"].shape[1] == 19 and train["actions"].shape[1] == 7  # lift Do = 19 (docs/algorithms.md)
    for arr in (train["states"], train["actions"], val["states"], val["actions"]):
        assert arr.dtype == np.float32 and arr.min() >= -1.0 and arr.max() <= 1.0
    both = np.concatenate([train["states"], val["states"]])
    np.testing.assert_allclose(both.min(0)[both.ptp(0) > 0], -1.0, atol=1e-5)  # the extremes reach the bounds
    assert norm["obs_min"].shape == (19,) and norm["action_max"].shape == (7,)
    # gripper open/close commands are -1/+1 and survive normalisation as the two extremes
    grip = np.concatenate([train["actions"][:, 6], val["actions"][:, 6]])
    assert set(np.round(grip, 4)) == {-1.0, 1.0}


@pytest.mark.slow
def test_scripted_lift_images(tmp_path: Path) -> None:
    """A rendered demo (eye-in-hand, 32x32) converts to a CHW uint8 `-img` dataset with proprioceptive states.

    Slow: software (llvmpipe) rendering on a shared 2-core CPU takes 10-40 s.
    """
    pytest.importorskip("robosuite")
    import shutil

    import h5py

    from script.dataset import generate_robomimic

    path = tmp_path / "demos.hdf5"
    generate_robomimic.generate_demos("lift", 1, path, seed=1, cameras=["robot0_eye_in_hand"], image_size=32)
    # rendering later from the stored states (--render-existing) gives the same pictures
    shutil.copy(path, tmp_path / "again.hdf5")
    n_demos, n_frames, _ = generate_robomimic.render_hdf5_images(
        "lift", tmp_path / "again.hdf5", ["robot0_eye_in_hand"], 32
    )
    with h5py.File(path, "r") as a, h5py.File(tmp_path / "again.hdf5", "r") as b:
        first = a["data/demo_0/obs/robot0_eye_in_hand_image"][()].astype(int)
        again = b["data/demo_0/obs/robot0_eye_in_hand_image"][()].astype(int)
    assert n_demos == 1 and n_frames == len(first) and first.shape[1:] == (32, 32, 3)
    assert np.abs(first - again).mean() < 0.5
    s = convert_robomimic.convert_robomimic(path, tmp_path / "lift-img", cameras=["robot0_eye_in_hand"], image_size=32)
    d = np.load(tmp_path / "lift-img" / "train.npz")
    assert s.obs_dim == 9 and d["images"].shape == (len(d["states"]), 3, 32, 32)
    assert d["images"].dtype == np.uint8 and d["images"].std() > 5  # a real picture, not a blank buffer
    assert d["states"].min() >= -1 and d["states"].max() <= 1
    # the cube (red) is in view at the start, and the picture changes as the gripper moves
    first, last = d["images"][0].astype(int), d["images"][d["traj_lengths"][0] - 1].astype(int)
    assert ((first[0] - first[1]) > 80).any()
    assert np.abs(first - last).mean() > 5


# ----------------------------------------------------------------------------------------------------
# download (gdown mocked, no network)


class FakeGdown:
    """Stands in for gdown: writes small files where gdown would, and counts calls."""

    def __init__(self, folder_files: tuple[str, ...] = ("train.npz", "normalization.npz"), fail: bool = False):
        self.folder_files = folder_files
        self.fail = fail
        self.calls: list[str] = []

    def download_folder(self, url: str, output: str, quiet: bool = False, use_cookies: bool = True) -> list[str]:
        self.calls.append(url)
        if self.fail:
            raise ConnectionError("HTTPSConnectionPool: Max retries exceeded (NameResolutionError)")
        sub = Path(output) / "published"  # Drive folders arrive nested
        sub.mkdir(parents=True)
        out = []
        for name in self.folder_files:
            np.savez(sub / name, marker=np.array([1]))
            out.append(str(sub / name))
        return out

    def download(self, url: str, output: str, quiet: bool = False, fuzzy: bool = False) -> str:
        self.calls.append(url)
        if self.fail:
            raise ConnectionError("offline")
        Path(output).write_bytes(b"checkpoint-or-normalization")
        return output


@pytest.fixture
def fake_gdown(monkeypatch: pytest.MonkeyPatch) -> FakeGdown:
    fake = FakeGdown()
    monkeypatch.setattr(download, "_gdown", lambda: fake)
    return fake


def test_download_dataset_layout_and_cache(tmp_dirs: Path, fake_gdown: FakeGdown) -> None:
    target = download.download_dataset("hopper-medium-v2")
    assert target == tmp_dirs / "data" / "gym" / "hopper-medium-v2"
    assert (target / "train.npz").is_file() and (target / "normalization.npz").is_file()
    assert fake_gdown.calls == ["https://drive.google.com/drive/folders/18Ti-92XVq3sE24K096WAxjC_SCCngeHd"]
    assert not [p for p in target.iterdir() if p.name.startswith(".download")]
    download.download_dataset("hopper-medium-v2")  # cached: no new call
    assert len(fake_gdown.calls) == 1
    download.download_dataset("hopper-medium-v2", force=True)
    assert len(fake_gdown.calls) == 2
    img = download.download_dataset("can-img")
    assert img == tmp_dirs / "data" / "robomimic" / "can-img"
    assert download.download_dataset("avoid_m2").parts[-2:] == ("d3il", "avoid_m2")


def test_download_fetches_normalization_when_folder_lacks_it(tmp_dirs: Path, fake_gdown: FakeGdown) -> None:
    fake_gdown.folder_files = ("train.npz",)
    target = download.download_dataset("lift")
    assert (target / "normalization.npz").read_bytes() == b"checkpoint-or-normalization"
    assert fake_gdown.calls[-1] == "https://drive.google.com/file/d/1d3WjwRds-7I5bBFpZuY27OT9ycb8r_QM/view"


def test_download_errors_are_one_line(tmp_dirs: Path, fake_gdown: FakeGdown) -> None:
    with pytest.raises(download.DownloadError, match="no published dataset is known for task 'nope'"):
        download.download_dataset("nope")
    with pytest.raises(download.DownloadError, match="convert_d4rl.py"):
        download.download_dataset("kitchen-complete-v0")
    fake_gdown.fail = True
    with pytest.raises(download.DownloadError) as err:
        download.download_dataset("walker2d-medium-v2")
    msg = str(err.value)
    assert "\n" not in msg and "no network connection" in msg and "walker2d-medium-v2" in msg
    assert not (tmp_dirs / "data" / "gym" / "walker2d-medium-v2").exists()  # nothing half-made left


def test_downloads_record_their_sha256_and_a_changed_file_is_refused(tmp_dirs: Path, fake_gdown: FakeGdown) -> None:
    """Drive publishes no checksums: the sha256 of each fetched file is recorded beside it and checked on reuse (a
    cached download, a dataset or checkpoint load); a file changed since its download is refused."""
    import hashlib

    from agent.checkpoint import load_checkpoint
    from agent.dataset import load_npz
    from agent.errors import DataError
    from agent.integrity import verify_checksum

    target = download.download_dataset("hopper-medium-v2")
    train = target / "train.npz"
    record = (target / "train.npz.sha256").read_text().split()
    assert record == [hashlib.sha256(train.read_bytes()).hexdigest(), "train.npz"]
    np.savez(train, states=np.zeros((2, 11), np.float32), actions=np.zeros((2, 3), np.float32), traj_lengths=[2])
    with pytest.raises(download.DownloadError, match="does not match the sha256 recorded"):
        download.download_dataset("hopper-medium-v2")
    with pytest.raises(DataError, match="train.npz does not match the sha256 recorded .* --force"):
        load_npz(train)
    download.download_dataset("hopper-medium-v2", force=True)  # fetched again: a new record that matches
    assert verify_checksum(train) is True

    ckpt = download.download_checkpoint(download.checkpoints_for("can")[0])
    assert (ckpt.parent / f"{ckpt.name}.sha256").is_file()
    ckpt.write_bytes(b"changed")
    with pytest.raises(DataError, match="does not match the sha256 recorded"):
        load_checkpoint(ckpt)


def test_download_checkpoints(tmp_dirs: Path, fake_gdown: FakeGdown) -> None:
    ckpts = download.checkpoints_for("can")
    assert len(ckpts) == 6 and all(c.path.startswith("robomimic-pretrain/can_pre_") for c in ckpts)
    path = download.download_checkpoint(ckpts[1])
    assert path == tmp_dirs / "log" / ckpts[1].path
    assert path.name.startswith("state_") and path.parent.name == "checkpoint"
    download.download_checkpoint(ckpts[1])
    assert len(fake_gdown.calls) == 1
    # DPPO's avoid names (avoid_d58_r12_...) become the configs' (avoid_m3_...)
    assert {c.path.split("/")[1].split("_pre_")[0] for c in download.checkpoints_for("avoid_m3")} == {"avoid_m3"}


def _configs_for(source: download.CheckpointSource) -> list[Path]:
    """Every fine-tuning config (PPO and baselines) and the eval config that would start from `source`."""
    root = Path(download.REPO) / "cfg" / source.suite
    found = sorted((root / "finetune" / source.finetune_dir).glob(f"ft_*_{source.policy}.yaml"))
    return found + sorted((root / "eval" / source.finetune_dir).glob(f"eval_{source.policy}.yaml"))


@pytest.mark.parametrize("source", download.CHECKPOINTS, ids=lambda c: c.pretrain_name)
def test_download_destination_is_the_configs_base_policy_path(
    source: download.CheckpointSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file lands in the experiment folder every matching config's default base_policy_path names, and
    resolving that folder (as fine-tuning and eval do) finds exactly the downloaded file."""
    from agent.config import compose
    from agent.finetune.loading import resolve_checkpoint

    monkeypatch.setenv("DPPO_LOG_DIR", str(tmp_path / "log"))
    configs = _configs_for(source)
    if not configs:
        pytest.skip(f"no fine-tuning or eval config for {source.pretrain_name}")
    dest = download.log_dir() / source.path
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"ckpt")
    for path in configs:
        cfg = compose(path.parent, path.stem, ["wandb=null", *source.overrides])
        base = Path(cfg.base_policy_path)
        assert base / source.run / "checkpoint" / f"state_{source.state}.pt" == dest, path
        assert resolve_checkpoint(base) == dest, path


def test_download_cli_offline_message(tmp_dirs: Path, fake_gdown: FakeGdown, capsys: pytest.CaptureFixture) -> None:
    fake_gdown.fail = True
    assert download.main(["--task", "can", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not download robomimic/can")
    fake_gdown.fail = False
    assert download.main(["--task", "can", "--checkpoints", "-q"]) == 0
    assert len(list((tmp_dirs / "log").rglob("state_*.pt"))) == 6


# ----------------------------------------------------------------------------------------------------
# avoid


@pytest.mark.parametrize(
    ("variant", "n_routes"),
    [("m1", 1), ("m2", 2), ("m3", 8)],
)
def test_avoid_variants_cover_their_route_families(
    tmp_path: Path, variant: str, n_routes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from env.suites.avoid import AvoidLayout
    from script.dataset import generate_avoid

    layout = AvoidLayout()
    summary, demos = generate_avoid.write_avoid_variant(variant, 24, tmp_path, seed=0)
    # the routes are read back from the written (normalised) states, not from the generator's labels
    out = tmp_path / "d3il" / f"avoid_{variant}"
    data = np.load(out / "train.npz")
    norm = np.load(out / "normalization.npz")
    assert data["states"].shape[1] == 4 and data["actions"].shape[1] == 2
    assert data["states"].min() >= -1 and data["states"].max() <= 1
    states = common.denormalize(data["states"], norm["obs_min"], norm["obs_max"])
    starts = common.traj_starts(data["traj_lengths"])
    routes = []
    for s0, n in zip(starts, data["traj_lengths"]):
        pos = states[s0 : s0 + n, 2:4]
        assert not layout.collides(pos).any()
        routes.append(generate_avoid.classify_route(layout, pos))
    counts = {r: routes.count(r) for r in set(routes)}
    assert len(counts) == n_routes
    assert set(counts) == set(generate_avoid.variant_routes(layout, variant))
    assert max(counts.values()) - min(counts.values()) <= 1  # equal shares
    if variant == "m2":
        a, b = sorted(counts)
        assert generate_avoid.mirror_route(layout, a) == b
    # each demo ends by reaching the goal line: reward 1 and terminal on its last step only
    ends = starts + data["traj_lengths"] - 1
    np.testing.assert_array_equal(np.flatnonzero(data["terminals"]), ends)
    assert data["rewards"].sum() == len(ends)
    assert (data["traj_lengths"] < generate_avoid.MAX_STEPS).all()
    assert json.loads((out / "routes.json").read_text())["demos"] == 24
    # the pretraining config reads it: one window per step that has a full action horizon inside its demo
    cfg, dataset = _load_with_pretrain_config(f"d3il/pretrain/avoid_{variant}", tmp_path, monkeypatch)
    assert len(dataset) == int(np.sum(data["traj_lengths"] - cfg.horizon_steps + 1))
    first = np.concatenate([s0 + np.arange(n - cfg.horizon_steps + 1) for s0, n in zip(starts, data["traj_lengths"])])
    batch = dataset.get_batch(torch.arange(len(dataset)))
    np.testing.assert_array_equal(batch.actions[:, 0].numpy(), data["actions"][first])
    np.testing.assert_array_equal(batch.cond["state"][:, -1].numpy(), data["states"][first])


def test_avoid_demos_are_smooth_and_varied() -> None:
    from env.suites.avoid import AvoidLayout
    from script.dataset import generate_avoid

    layout = AvoidLayout()
    demos = generate_avoid.generate_avoid_demos("m1", 12, seed=3)
    starts = common.traj_starts(demos.traj_lengths)
    jerk = np.concatenate([np.diff(demos.actions[s : s + n], axis=0) for s, n in zip(starts, demos.traj_lengths)])
    # consecutive actions change by much less than the action bound: smooth, not bang-bang
    assert np.abs(jerk).mean() < 0.25 * layout.max_step
    # same route, different paths: the x where the demos cross the middle row spreads by more than 5 mm
    cross = [
        demos.states[s : s + n][np.argmax(demos.states[s : s + n, 3] >= 0.4), 2]
        for s, n in zip(starts, demos.traj_lengths)
    ]
    assert np.std(cross) > 0.005
    clean = generate_avoid.generate_avoid_demos("m1", 4, seed=3, variation=0.0)
    assert clean.attempts == 4  # without variation, every scripted rollout succeeds
