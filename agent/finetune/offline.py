"""Offline transitions of a demonstration dataset, replayed beside an online buffer (RLPD's symmetric sampling).

The dataset is the toolkit's `.npz` format (agent/dataset.py: `states`, `actions`, `traj_lengths`, plus `rewards`
and, for gym data, `terminals`). Observations and actions are normalised with the run's statistics exactly as the
env wrapper and the policy see them. Transitions are single env steps (s_t, a_t, r_t, s_{t+1}, terminal_t): every
step with a successor in its trajectory, and a trajectory's last step only when it is terminal (after a time limit
or the data's end its s' is unknown, so it is left out, as DPPO does).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from agent.errors import DataError
from agent.finetune.replay_buffer import Transitions
from env.wrappers.normalization import Normalization


class OfflineTransitions:
    """All transitions of a dataset on `device`, sampled uniformly with replacement.

    Args:
        path: the dataset `.npz`.
        normalization: obs_min, obs_max, action_min, action_max arrays (the run's statistics).
        device: where the tensors live.
        reward_scale: rewards are multiplied by this (the online buffer's `scale_reward_factor`).
        gamma: with it, each transition also carries its discounted reward-to-go to the end of its trajectory
            (`mc_returns`, Cal-QL), of the scaled rewards and without a bootstrap.
    """

    def __init__(
        self,
        path: str | Path,
        normalization: Mapping[str, np.ndarray],
        device: torch.device,
        reward_scale: float = 1.0,
        gamma: float | None = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"offline dataset {path} not found; make or download it (README 'Data')")
        with np.load(path) as f:
            missing = [k for k in ("states", "actions", "traj_lengths", "rewards") if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks {missing}; offline replay needs states, actions, rewards, traj_lengths")
            states, actions = f["states"].astype(np.float64), f["actions"].astype(np.float64)
            rewards, lengths = f["rewards"].astype(np.float64).reshape(-1), f["traj_lengths"].astype(np.int64)
            terminals = (
                f["terminals"].astype(bool).reshape(-1) if "terminals" in f.files else np.zeros(len(states), bool)
            )
        if lengths.sum() != len(states):
            raise DataError(f"{path}: traj_lengths sum to {lengths.sum()} but there are {len(states)} states")
        ends = np.cumsum(lengths) - 1
        last = np.zeros(len(states), bool)
        last[ends] = True
        keep = np.flatnonzero(~last | terminals)
        nxt = np.minimum(keep + 1, len(states) - 1)  # a terminal last step's s' is never used (no bootstrap)
        norm = Normalization.from_arrays(normalization, "the run's normalization")
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)  # noqa: E731
        self.obs = as_tensor(norm.normalize_obs(states[keep])).unsqueeze(1)  # (N, 1, Do)
        self.next_obs = as_tensor(norm.normalize_obs(states[nxt])).unsqueeze(1)
        self.actions = as_tensor(norm.normalize_action(actions[keep])).unsqueeze(1)  # (N, 1, Da)
        self.rewards = as_tensor(rewards[keep] * reward_scale)
        self.terminated = as_tensor(terminals[keep])
        self.mc_returns: Tensor | None = None
        if gamma is not None:
            togo = np.zeros(len(states))
            for end, length in zip(ends, lengths, strict=True):  # each trajectory backwards from its last step
                g = 0.0
                for i in range(end, end - length, -1):
                    g = rewards[i] * reward_scale + gamma * g
                    togo[i] = g
            self.mc_returns = as_tensor(togo[keep])
        self.device = device

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    def sample(self, batch_size: int) -> Transitions:
        """`batch_size` transitions drawn uniformly with replacement (indices are dataset rows)."""
        idx = torch.randint(0, len(self), (batch_size,), device=self.device)
        return Transitions(
            obs={"state": self.obs[idx]},
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            next_obs={"state": self.next_obs[idx]},
            terminated=self.terminated[idx],
            indices=idx,
            mc_returns=None if self.mc_returns is None else self.mc_returns[idx],
        )


def concat(a: Transitions, b: Transitions) -> Transitions:
    """The rows of `a` then those of `b`."""

    def cat(x: Tensor | dict[str, Tensor] | None, y: Tensor | dict[str, Tensor] | None) -> object:
        if x is None or y is None:  # a field only one side has (mc_returns) is dropped
            return None
        if isinstance(x, dict) and isinstance(y, dict):
            return {k: torch.cat((x[k], y[k])) for k in x}
        assert isinstance(x, Tensor) and isinstance(y, Tensor)
        return torch.cat((x, y))

    return Transitions(*(cat(x, y) for x, y in zip(a, b, strict=True)))  # type: ignore[arg-type]


__all__ = ["OfflineTransitions", "concat"]
