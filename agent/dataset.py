"""Demonstration datasets: `.npz` trajectories cut into action windows, gathered on the training device.

File format (docs/algorithms.md#dataset-files): `states` (N, Do) float, `actions` (N, Da) float, `traj_lengths`
(n_traj,) int summing to N, optional `images` (N, C, H, W) uint8. Values are already normalised to [-1, 1].

A sample is a window of `horizon_steps` consecutive actions that never crosses a trajectory end, with the
`cond_steps` states before it (oldest first, the last one at the window start), repeated from the trajectory's first
state when the window starts early. Batches are built by tensor indexing, never one Python call per sample.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from agent.errors import DataError
from agent.integrity import verify_checksum

log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """A batch of demonstration windows.

    Attributes:
        actions: (B, Ta, Da) float32.
        cond: {"state": (B, To, Do) float32, optional "rgb": (B, To_img, C, H, W) uint8}.
    """

    actions: torch.Tensor
    cond: dict[str, torch.Tensor]


def load_npz(path: str | os.PathLike, use_img: bool = False, hint: str | None = None) -> dict[str, np.ndarray]:
    """Load and check a demonstration file; any problem is a one-line `DataError`.

    Args:
        path: the `.npz` file.
        use_img: require an `images` array.
        hint: how to obtain the file, added to the message when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        how = f"; {hint}" if hint else ""
        raise DataError(f"dataset file not found: {path}{how}")
    verify_checksum(path)  # a downloaded dataset: unchanged since its download
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as exc:
        raise DataError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    required = ["states", "actions", "traj_lengths"] + (["images"] if use_img else [])
    missing = [k for k in required if k not in data]
    if missing:
        raise DataError(f"{path} lacks key(s) {missing}; it has {sorted(data)} (expected {required})")
    states, actions, lengths = data["states"], data["actions"], data["traj_lengths"]
    if states.ndim != 2 or actions.ndim != 2:
        raise DataError(f"{path}: states and actions must be 2-D (N, D), got {states.shape} and {actions.shape}")
    if len(states) != len(actions):
        raise DataError(f"{path}: {len(states)} states but {len(actions)} actions")
    if lengths.ndim != 1 or not np.issubdtype(lengths.dtype, np.integer) or (lengths <= 0).any():
        raise DataError(f"{path}: traj_lengths must be a 1-D array of positive integers")
    if int(lengths.sum()) != len(states):
        raise DataError(f"{path}: traj_lengths sum to {int(lengths.sum())} but the file holds {len(states)} steps")
    for key in ("states", "actions"):
        if not np.isfinite(data[key]).all():
            bad = int((~np.isfinite(data[key])).any(axis=1).sum())
            raise DataError(f"{path}: {key} contains NaN or inf in {bad} row(s)")
    if use_img:
        images = data["images"]
        if images.ndim != 4 or len(images) != len(states):
            raise DataError(f"{path}: images must be (N={len(states)}, C, H, W), got {images.shape}")
        if images.dtype != np.uint8:
            raise DataError(f"{path}: images must be uint8 (0-255), got {images.dtype}")
    return data


class StitchedSequenceDataset:
    """Action windows over concatenated trajectories, held as tensors on `device`.

    Args:
        dataset_path: `.npz` demonstration file.
        horizon_steps: Ta, actions per window.
        cond_steps: To, states of history per sample.
        img_cond_steps: images of history per sample (<= cond_steps), when `use_img`.
        max_n_episodes: keep only the first this many trajectories.
        use_img: also return `rgb` history from `images`.
        device: where the tensors live (batches are gathered there).
        val_split: fraction of trajectories (chosen with `seed`) held out for validation.
        seed: seed of the validation split.
        obs_dim, action_dim: when given, the file's dims must match (a clear error otherwise).
        hint: how to obtain the file, shown when it is missing.
    """

    def __init__(
        self,
        dataset_path: str,
        horizon_steps: int,
        cond_steps: int = 1,
        img_cond_steps: int = 1,
        max_n_episodes: int = 10000,
        use_img: bool = False,
        device: str | torch.device = "cpu",
        val_split: float = 0.0,
        seed: int = 0,
        obs_dim: int | None = None,
        action_dim: int | None = None,
        hint: str | None = None,
    ) -> None:
        if horizon_steps < 1:
            raise DataError(f"horizon_steps must be >= 1, got {horizon_steps}")
        if cond_steps < 1:
            raise DataError(f"cond_steps must be >= 1, got {cond_steps}")
        if use_img and not 1 <= img_cond_steps <= cond_steps:
            raise DataError(f"img_cond_steps must be in [1, cond_steps={cond_steps}], got {img_cond_steps}")
        if not 0.0 <= val_split < 1.0:
            raise DataError(f"val_split must be in [0, 1), got {val_split}")
        self.path = str(dataset_path)
        self.horizon_steps = int(horizon_steps)
        self.cond_steps = int(cond_steps)
        self.img_cond_steps = int(img_cond_steps)
        self.use_img = bool(use_img)
        self.device = torch.device(device)

        data = load_npz(dataset_path, use_img=use_img, hint=hint)
        lengths = data["traj_lengths"].astype(np.int64)[: int(max_n_episodes)]
        n_steps = int(lengths.sum())
        if obs_dim is not None and data["states"].shape[1] != obs_dim:
            raise DataError(
                f"{dataset_path}: states have {data['states'].shape[1]} dims but obs_dim={obs_dim}; "
                "fix obs_dim in the config or use the matching dataset"
            )
        if action_dim is not None and data["actions"].shape[1] != action_dim:
            raise DataError(
                f"{dataset_path}: actions have {data['actions'].shape[1]} dims but action_dim={action_dim}; "
                "fix action_dim in the config or use the matching dataset"
            )
        used = data["actions"][:n_steps]
        lo, hi = (float(used.min()), float(used.max())) if used.size else (0.0, 0.0)
        if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:  # the policies' samples are clipped to [-1, 1]
            log.warning(
                "%s: actions range over [%.4g, %.4g], outside the normalised [-1, 1] the policies produce "
                "(clipped when sampling); normalise them with the dataset scripts' normalization.npz",
                dataset_path,
                lo,
                hi,
            )
        self.states = torch.as_tensor(data["states"][:n_steps], dtype=torch.float32, device=self.device)
        self.actions = torch.as_tensor(data["actions"][:n_steps], dtype=torch.float32, device=self.device)
        self.images = torch.as_tensor(data["images"][:n_steps], device=self.device) if self.use_img else None
        self.traj_lengths = lengths

        starts, offsets, traj_id = self._window_index(lengths, self.horizon_steps)
        if len(starts) == 0:
            raise DataError(
                f"{dataset_path}: no trajectory is at least horizon_steps={horizon_steps} long "
                f"(longest is {int(lengths.max()) if len(lengths) else 0})"
            )
        train_mask = np.ones(len(starts), dtype=bool)
        if val_split > 0:
            rng = np.random.default_rng(seed)
            n_val = max(1, int(round(val_split * len(lengths))))
            val_traj = rng.choice(len(lengths), size=n_val, replace=False)
            train_mask = ~np.isin(traj_id, val_traj)
        self._starts = torch.as_tensor(starts, device=self.device)
        self._offsets = torch.as_tensor(offsets, device=self.device)
        self.train_indices = torch.as_tensor(np.flatnonzero(train_mask), device=self.device)
        self.val_indices = torch.as_tensor(np.flatnonzero(~train_mask), device=self.device)
        # history position j (0 = oldest): go back cond_steps-1-j steps, but not before the trajectory start
        back = torch.arange(self.cond_steps - 1, -1, -1, device=self.device)
        self._img_back = torch.arange(self.img_cond_steps - 1, -1, -1, device=self.device)
        # Low-dim windows are laid out once, (W, Ta, Da) and (W, To, Do): a batch is then one contiguous
        # `index_select` per tensor (the gather is a few percent of a small MLP's step otherwise). Images are
        # gathered per batch from the frames instead (a copy per window would multiply their memory by To_img).
        act_idx = self._starts[:, None] + torch.arange(self.horizon_steps, device=self.device)
        state_idx = self._starts[:, None] - torch.minimum(back[None, :], self._offsets[:, None])
        self._action_windows = self.actions[act_idx]
        self._state_windows = self.states[state_idx]
        log.info(
            "dataset %s: %d trajectories, %d steps, %d windows (%d for validation)",
            dataset_path,
            len(lengths),
            n_steps,
            len(starts),
            len(self.val_indices),
        )

    @staticmethod
    def _window_index(lengths: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start step, steps since trajectory start, and trajectory id of every valid window."""
        ends = np.cumsum(lengths)
        begins = ends - lengths
        counts = np.maximum(lengths - horizon + 1, 0)
        traj_id = np.repeat(np.arange(len(lengths)), counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        starts = begins[traj_id] + offsets
        return starts.astype(np.int64), offsets.astype(np.int64), traj_id

    def __len__(self) -> int:
        return len(self.train_indices)

    def get_batch(self, index: torch.Tensor) -> Batch:
        """Gather windows `index` (B,) (positions in the full window list) into a `Batch`."""
        actions = self._action_windows.index_select(0, index)
        cond = {"state": self._state_windows.index_select(0, index)}
        if self.images is not None:
            start, offset = self._starts[index], self._offsets[index]
            img_idx = start[:, None] - torch.minimum(self._img_back[None, :], offset[:, None])
            cond["rgb"] = self.images[img_idx]
        return Batch(actions, cond)

    def iterate(
        self,
        batch_size: int,
        split: str = "train",
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches over one pass of the `train` or `val` windows."""
        pool = self.train_indices if split == "train" else self.val_indices
        if shuffle:
            perm = torch.randperm(len(pool), generator=generator, device="cpu").to(self.device)
            pool = pool[perm]
        n = len(pool)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            yield self.get_batch(pool[i : i + batch_size])

    def num_batches(self, batch_size: int, split: str = "train", drop_last: bool = False) -> int:
        n = len(self.train_indices if split == "train" else self.val_indices)
        return n // batch_size if drop_last else -(-n // batch_size)
