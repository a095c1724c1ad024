"""Convert a robomimic hdf5 file to the toolkit's `train.npz` + `normalization.npz`, with
images (docs/algorithms.md#converters).

Input layout (robomimic): `data/demo_<i>/{obs/<key>, actions, rewards, dones, states}`,
`data.attrs["env_args"]`.

    # low-dim: eef pos/quat, gripper qpos and the object state -> data/robomimic/can/
    python script/dataset/convert_robomimic.py --input can_mh_low_dim.hdf5 --task can
    # pixels: the eye-in-hand camera at 96x96, low-dim proprioception only -> data/robomimic/can-img/
    python script/dataset/convert_robomimic.py --input can_image.hdf5 --task can-img \
        --cameras robot0_eye_in_hand --image-size 96

Low-dim keys default to robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos (and the robot1_* keys when the
file has them), plus `object` unless cameras are given (as DPPO); `--low-dim-keys` overrides them (order
kept). Images are stored HWC uint8 in the hdf5 (`obs/<camera>_image`) and written CHW uint8, cameras
concatenated along channels in the given order, resized (area / bilinear) when their size differs from
`--image-size`. Statistics are the min/max over all kept demos; terminals are all False (robomimic episodes
end by time limit).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # allow `python script/dataset/convert_robomimic.py` from a checkout
    sys.path.insert(0, str(REPO))

from script.dataset.common import DatasetSummary, resize_images, setup_logging, task_dir, write_dataset  # noqa: E402

log = logging.getLogger("convert_robomimic")

PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
PROPRIO_KEYS_ROBOT1 = ("robot1_eef_pos", "robot1_eef_quat", "robot1_gripper_qpos")


def sorted_demo_names(names: Sequence[str]) -> list[str]:
    """`demo_<i>` names sorted by their number (demo_2 before demo_10); other names are ignored."""
    numbered = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"demo_(\d+)", n))]
    return [n for _, n in sorted(numbered)]


def default_low_dim_keys(available: Sequence[str], with_object: bool) -> list[str]:
    """Reference 7.4 keys: proprioception (+ robot1 if present) (+ `object` for state-based datasets)."""
    keys = list(PROPRIO_KEYS)
    if all(k in available for k in PROPRIO_KEYS_ROBOT1):
        keys += list(PROPRIO_KEYS_ROBOT1)
    if with_object:
        keys.append("object")
    return keys


def _demo_part(f: Any, path: Path, demo: str, part: str) -> Any:
    """`data/<demo>/<part>` of an open robomimic file; a missing part is a ValueError naming the file and demo."""
    group = f["data"][demo]
    if part not in group:
        raise ValueError(
            f"{path}: data/{demo} has no '{part}' (it has {sorted(group.keys())}); is it a robomimic demo?"
        )
    return group[part]


def image_key(camera: str) -> str:
    """hdf5 observation key of a camera (`agentview` -> `agentview_image`; full keys pass through)."""
    return camera if camera.endswith("_image") else f"{camera}_image"


def hwc_to_chw(images: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, C, H, W), contiguous."""
    return np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2)))


def read_robomimic(
    path: str | os.PathLike,
    low_dim_keys: Sequence[str] | None = None,
    cameras: Sequence[str] | None = None,
    image_size: int = 96,
    max_episodes: int | None = None,
) -> dict[str, np.ndarray]:
    """Read the demos of a robomimic hdf5 into concatenated arrays.

    Returns a dict with `states` (N, Do) float64 (the low-dim keys concatenated in order), `actions` (N, Da),
    `rewards` (N,), `traj_lengths` (n_traj,), `low_dim_keys` (the keys used, as a numpy string array) and,
    when cameras are given, `images` (N, 3 * n_cameras, image_size, image_size) uint8.
    """
    import h5py

    cameras = list(cameras or [])
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robomimic file not found: {path}")
    where = "the file"  # what was being read, for the message when the read fails
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or not isinstance(f["data"], h5py.Group):
                raise ValueError(f"{path} has no 'data' group; is it a robomimic hdf5?")
            demos = sorted_demo_names(list(f["data"].keys()))
            if not demos:
                raise ValueError(f"{path}: the 'data' group holds no demo_<i> groups")
            if max_episodes is not None:
                demos = demos[:max_episodes]
            available = list(_demo_part(f, path, demos[0], "obs").keys())
            keys = list(low_dim_keys) if low_dim_keys else default_low_dim_keys(available, with_object=not cameras)
            states, actions, rewards, images, lengths = [], [], [], [], []
            for name in tqdm(demos, desc="reading demos", unit="demo", leave=False):
                where = f"data/{name}"
                obs = _demo_part(f, path, name, "obs")
                act = np.asarray(_demo_part(f, path, name, "actions")[()], dtype=np.float64)
                t = len(act)
                if act.ndim != 2 or t == 0:
                    raise ValueError(f"{path}: data/{name}/actions must be a non-empty (T, Da) array, got {act.shape}")
                missing = [k for k in keys + [image_key(c) for c in cameras] if k not in obs]
                if missing:
                    raise ValueError(
                        f"{path}: data/{name}/obs lacks key(s) {missing}; it has {sorted(obs.keys())} "
                        "(choose others with --low-dim-keys / --cameras)"
                    )
                parts = []
                for k in keys:
                    where = f"data/{name}/obs/{k}"
                    values = np.asarray(obs[k][()], dtype=np.float64)
                    if len(values) != t:
                        raise ValueError(f"{path}: {where} has {len(values)} steps but data/{name}/actions has {t}")
                    parts.append(values.reshape(t, -1))
                states.append(np.concatenate(parts, axis=1))
                actions.append(act)
                where = f"data/{name}/rewards"
                rewards.append(
                    np.asarray(f["data"][name]["rewards"][()], dtype=np.float64).reshape(-1)
                    if "rewards" in f["data"][name]
                    else np.zeros(t)
                )
                if len(rewards[-1]) != t:
                    raise ValueError(f"{path}: {where} has {len(rewards[-1])} steps but data/{name}/actions has {t}")
                lengths.append(t)
                if cameras:
                    frames = []
                    for cam in cameras:
                        where = f"data/{name}/obs/{image_key(cam)}"
                        img = np.asarray(obs[image_key(cam)][()])
                        if img.ndim != 4 or len(img) != t:
                            raise ValueError(f"{path}: {where} must be (T={t}, H, W, C) images, got {img.shape}")
                        if img.dtype != np.uint8:  # robomimic stores uint8; tolerate [0, 1] floats
                            img = np.clip(np.rint(img * 255.0 if img.max() <= 1.0 else img), 0, 255).astype(np.uint8)
                        frames.append(hwc_to_chw(resize_images(img, image_size)))
                    images.append(np.concatenate(frames, axis=1))
    except (OSError, RuntimeError, TypeError, KeyError) as exc:  # h5py's errors for a truncated or foreign file
        raise ValueError(
            f"{path}: cannot read {where} ({type(exc).__name__}: {exc}); the file is truncated, damaged or not an "
            "hdf5 file: download or convert it again"
        ) from exc
    if len({s.shape[1] for s in states}) > 1 or len({a.shape[1] for a in actions}) > 1:
        raise ValueError(f"{path}: the demos' state or action widths differ; every demo must have the same keys")
    out = {
        "states": np.concatenate(states),
        "actions": np.concatenate(actions),
        "rewards": np.concatenate(rewards),
        "traj_lengths": np.asarray(lengths, dtype=np.int64),
        "low_dim_keys": np.asarray(keys),
    }
    if cameras:
        out["images"] = np.concatenate(images)
    return out


def convert_robomimic(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    low_dim_keys: Sequence[str] | None = None,
    cameras: Sequence[str] | None = None,
    image_size: int = 96,
    max_episodes: int | None = None,
    val_split: float = 0.0,
    seed: int = 0,
    normalize_data: bool = True,
) -> DatasetSummary:
    """Convert a robomimic hdf5 into train.npz (+ val.npz) and normalization.npz in `out_dir`.

    Args:
        path: robomimic hdf5 file.
        out_dir: output folder (e.g. data/robomimic/can or data/robomimic/can-img).
        low_dim_keys: observation keys concatenated into `states` (default: see `default_low_dim_keys`).
        cameras: camera names for `images` (channels concatenated in this order); None for a low-dim dataset.
        image_size: output height = width of the images.
        max_episodes: keep the first this many demos (by demo number).
        val_split: fraction of demos written to val.npz.
        seed: seed of the split.
        normalize_data: normalise states and actions to [-1, 1] (the reference's `--normalize`).
    """
    data = read_robomimic(path, low_dim_keys, cameras, image_size, max_episodes)
    log.info(
        "%s: %d demos, %d steps, state keys %s",
        path,
        len(data["traj_lengths"]),
        len(data["states"]),
        list(data["low_dim_keys"]),
    )
    return write_dataset(
        out_dir,
        data["states"],
        data["actions"],
        data["traj_lengths"],
        rewards=data["rewards"],
        terminals=None,  # robomimic envs never terminate (docs/algorithms.md#suites)
        images=data.get("images"),
        val_split=val_split,
        seed=seed,
        normalize_data=normalize_data,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input", required=True, help="robomimic hdf5 file")
    p.add_argument("--task", help="output task folder name, e.g. can or can-img (default: file stem)")
    p.add_argument("--suite", default="robomimic", help="suite folder under the data dir (default: robomimic)")
    p.add_argument("--out-dir", help="explicit output folder (overrides --suite/--task)")
    p.add_argument("--low-dim-keys", nargs="+", default=None, help="observation keys for `states`, in order")
    p.add_argument("--cameras", nargs="+", default=None, help="camera names for `images`, e.g. robot0_eye_in_hand")
    p.add_argument("--image-size", type=int, default=96, help="output image height = width (default 96)")
    p.add_argument("--max-episodes", type=int, default=None, help="keep only the first N demos")
    p.add_argument("--val-split", type=float, default=0.0, help="fraction of demos for val.npz (default 0)")
    p.add_argument("--no-normalize", action="store_true", help="write raw states/actions (stats still saved)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out = Path(args.out_dir) if args.out_dir else task_dir(args.suite, args.task or Path(args.input).stem)
    try:
        summary = convert_robomimic(
            args.input,
            out,
            low_dim_keys=args.low_dim_keys,
            cameras=args.cameras,
            image_size=args.image_size,
            max_episodes=args.max_episodes,
            val_split=args.val_split,
            seed=args.seed,
            normalize_data=not args.no_normalize,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.line())  # final summary for the user
    return 0


if __name__ == "__main__":
    sys.exit(main())
