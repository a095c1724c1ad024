"""Shared helpers of the dataset scripts: paths, [-1, 1] normalisation, train/val split, atomic npz writing.

Every converter and generator goes through `write_dataset`, so all datasets share one format
(docs/algorithms.md#dataset-files):

- `train.npz` (and `val.npz` when a validation split is asked for): `states` (N, Do) float32 and `actions`
  (N, Da) float32 normalised to [-1, 1], `traj_lengths` (n_traj,) int64, `rewards` (N,) float32, `terminals`
  (N,) bool, optionally `images` (N, C, H, W) uint8.
- `normalization.npz`: `obs_min`, `obs_max`, `action_min`, `action_max`, each (D,) float32.

Normalisation (docs/algorithms.md#normalization): x' = 2 (x - min) / (max - min + 1e-6) - 1, so a constant dimension
maps to -1.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATA_DIR_ENV = "DPPO_DATA_DIR"
LOG_DIR_ENV = "DPPO_LOG_DIR"
NORM_EPS = 1e-6  # as in DPPO's dataset scripts: the denominator is (max - min + 1e-6)


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The dataset root: `override`, else `$DPPO_DATA_DIR`, else `data/` (relative to the cwd)."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get(DATA_DIR_ENV) or "data")


def log_dir(override: str | os.PathLike | None = None) -> Path:
    """The log/checkpoint root: `override`, else `$DPPO_LOG_DIR`, else `log/`."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get(LOG_DIR_ENV) or "log")


def task_dir(suite: str, task: str, root: str | os.PathLike | None = None) -> Path:
    """`<root>/<suite>/<task>`, the folder that holds `train.npz` and `normalization.npz` of a task."""
    return data_dir(root) / suite / task


@dataclass(frozen=True)
class NormStats:
    """Per-dimension min/max of observations (Do,) and actions (Da,), float32."""

    obs_min: np.ndarray
    obs_max: np.ndarray
    action_min: np.ndarray
    action_max: np.ndarray

    @classmethod
    def from_data(cls, states: np.ndarray, actions: np.ndarray) -> NormStats:
        """Statistics of states (N, Do) and actions (N, Da) over all rows."""
        smin, smax = min_max(states)
        amin, amax = min_max(actions)
        return cls(smin, smax, amin, amax)

    def save(self, path: str | os.PathLike) -> None:
        """Write `normalization.npz` atomically."""
        save_npz(
            path,
            compressed=False,
            obs_min=self.obs_min,
            obs_max=self.obs_max,
            action_min=self.action_min,
            action_max=self.action_max,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        with np.load(path) as f:
            return cls(f["obs_min"], f["obs_max"], f["action_min"], f["action_max"])


def min_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (min, max) of x (N, D) as float32 arrays (D,); ValueError on empty or non-finite x."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("data contains NaN or inf; cannot compute normalisation statistics")
    x = x.astype(np.float32)
    return x.min(axis=0), x.max(axis=0)


def normalize(x: np.ndarray, xmin: np.ndarray, xmax: np.ndarray) -> np.ndarray:
    """Map x (..., D) to [-1, 1]: 2 (x - min) / (max - min + 1e-6) - 1; float32 out.

    x is rounded to float32 first, like the float32 statistics, so the data's own min/max map into [-1, 1].
    """
    x = np.asarray(x, dtype=np.float32).astype(np.float64)
    lo = np.asarray(xmin, dtype=np.float64)
    hi = np.asarray(xmax, dtype=np.float64)
    return (2.0 * (x - lo) / (hi - lo + NORM_EPS) - 1.0).astype(np.float32)


def denormalize(x: np.ndarray, xmin: np.ndarray, xmax: np.ndarray) -> np.ndarray:
    """Exact inverse of `normalize` (the env wrappers use the same 1e-6 for observations only)."""
    x = np.asarray(x, dtype=np.float64)
    lo = np.asarray(xmin, dtype=np.float64)
    hi = np.asarray(xmax, dtype=np.float64)
    return (x + 1.0) / 2.0 * (hi - lo + NORM_EPS) + lo


def traj_starts(traj_lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """Start index (n_traj,) of every trajectory in the concatenated arrays."""
    lengths = np.asarray(traj_lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def split_indices(n_traj: int, val_split: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random trajectory split: (train_idx, val_idx), each sorted.

    `val_split` is the fraction of trajectories for validation; with 0 every trajectory is for training. When
    val_split > 0 and there are at least 2 trajectories, both parts get at least one.
    """
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    n_val = int(round(n_traj * val_split))
    if val_split > 0 and n_traj >= 2:
        n_val = min(max(n_val, 1), n_traj - 1)
    perm = np.random.default_rng(seed).permutation(n_traj)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def select_trajectories(
    arrays: Mapping[str, np.ndarray], traj_lengths: np.ndarray, keep: Sequence[int] | np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Concatenate the chosen trajectories (in the given order) of per-step arrays (N, ...).

    Returns the new arrays and their traj_lengths (len(keep),).
    """
    lengths = np.asarray(traj_lengths, dtype=np.int64)
    starts = traj_starts(lengths)
    keep = np.asarray(keep, dtype=np.int64)
    if len(keep):
        rows = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in keep])
    else:
        rows = np.zeros(0, dtype=np.int64)
    return {k: np.asarray(v)[rows] for k, v in arrays.items()}, lengths[keep]


def save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: np.ndarray) -> None:
    """Write an .npz atomically: a temporary file in the same folder, then `os.replace`.

    A reader never sees a half-written file, and an interrupted run leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class DatasetSummary:
    """What `write_dataset` wrote (for logs, reports and tests)."""

    out_dir: Path
    n_train_traj: int
    n_train_steps: int
    n_val_traj: int
    n_val_steps: int
    obs_dim: int
    action_dim: int
    image_shape: tuple[int, ...] | None
    file_bytes: dict[str, int]

    def line(self) -> str:
        """One human-readable line."""
        img = f", images {self.image_shape}" if self.image_shape else ""
        size = sum(self.file_bytes.values()) / 2**20
        return (
            f"{self.out_dir}: train {self.n_train_traj} traj / {self.n_train_steps} steps, "
            f"val {self.n_val_traj} traj / {self.n_val_steps} steps, obs_dim {self.obs_dim}, "
            f"action_dim {self.action_dim}{img}, {size:.2f} MiB"
        )


def write_dataset(
    out_dir: str | os.PathLike,
    states: np.ndarray,
    actions: np.ndarray,
    traj_lengths: np.ndarray,
    rewards: np.ndarray | None = None,
    terminals: np.ndarray | None = None,
    images: np.ndarray | None = None,
    stats: NormStats | None = None,
    val_split: float = 0.0,
    seed: int = 0,
    normalize_data: bool = True,
) -> DatasetSummary:
    """Normalise and write `train.npz` (+ `val.npz` if val_split > 0) and `normalization.npz` into `out_dir`.

    Args:
        states: (N, Do) raw observations of all trajectories, concatenated.
        actions: (N, Da) raw actions.
        traj_lengths: (n_traj,) positive ints summing to N.
        rewards: (N,) or None (zeros).
        terminals: (N,) or None (all False).
        images: (N, C, H, W) uint8 or None.
        stats: normalisation statistics; default: min/max over all the given rows.
        val_split: fraction of trajectories written to `val.npz` (random, seeded).
        seed: seed of the split.
        normalize_data: if False, states/actions are written raw (normalization.npz is still written).
    """
    states = np.asarray(states)
    actions = np.asarray(actions)
    lengths = np.asarray(traj_lengths, dtype=np.int64)
    n = len(states)
    if len(actions) != n or int(lengths.sum()) != n or (lengths <= 0).any():
        raise ValueError(
            f"inconsistent data: {n} states, {len(actions)} actions, traj_lengths sum {int(lengths.sum())}"
        )
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or len(images) != n):
        raise ValueError(f"images must be uint8 (N={n}, C, H, W), got {images.dtype} {images.shape}")
    stats = stats or NormStats.from_data(states, actions)
    if normalize_data:
        s = normalize(states, stats.obs_min, stats.obs_max)
        a = normalize(actions, stats.action_min, stats.action_max)
    else:
        s, a = states.astype(np.float32), actions.astype(np.float32)
    per_step: dict[str, np.ndarray] = {
        "states": s,
        "actions": a,
        "rewards": (np.zeros(n) if rewards is None else np.asarray(rewards)).astype(np.float32),
        "terminals": (np.zeros(n, bool) if terminals is None else np.asarray(terminals)).astype(bool),
    }
    if images is not None:
        per_step["images"] = images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_idx, val_idx = split_indices(len(lengths), val_split, seed)
    sizes: dict[str, int] = {}
    counts: dict[str, tuple[int, int]] = {}
    for name, idx in (("train", train_idx), ("val", val_idx)):
        if name == "val" and val_split <= 0:
            continue
        arrays, lens = select_trajectories(per_step, lengths, idx)
        save_npz(out / f"{name}.npz", traj_lengths=lens, **arrays)
        sizes[f"{name}.npz"] = (out / f"{name}.npz").stat().st_size
        counts[name] = (len(lens), int(lens.sum()))
    stats.save(out / "normalization.npz")
    sizes["normalization.npz"] = (out / "normalization.npz").stat().st_size
    summary = DatasetSummary(
        out_dir=out,
        n_train_traj=counts["train"][0],
        n_train_steps=counts["train"][1],
        n_val_traj=counts.get("val", (0, 0))[0],
        n_val_steps=counts.get("val", (0, 0))[1],
        obs_dim=s.shape[1],
        action_dim=a.shape[1],
        image_shape=tuple(images.shape[1:]) if images is not None else None,
        file_bytes=sizes,
    )
    log.info("%s", summary.line())
    return summary


def resize_images(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a batch of HWC uint8 images (N, H, W, C) to (N, h, w, C).

    Integer down-scaling factors use area averaging (box filter, exact); anything else uses bilinear
    interpolation with half-pixel centres. Returns uint8.
    """
    h, w = (size, size) if isinstance(size, int) else size
    n, H, W, C = images.shape
    if (h, w) == (H, W):
        return images
    if H % h == 0 and W % w == 0:
        fh, fw = H // h, W // w
        x = images.reshape(n, h, fh, w, fw, C).astype(np.float32).mean(axis=(2, 4))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    def axis_weights(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0.0, src - 1.0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis_weights(H, h)
    x0, x1, wx = axis_weights(W, w)
    img = images.astype(np.float32)
    rows = img[:, y0] * (1 - wy)[None, :, None, None] + img[:, y1] * wy[None, :, None, None]
    out = rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def setup_logging(verbose: bool = False) -> None:
    """Console logging for the scripts (INFO, or DEBUG with --verbose)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
