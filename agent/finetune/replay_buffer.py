"""The replay buffer of the off-policy baselines: a preallocated, step-major ring buffer of transitions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor


class Transitions(NamedTuple):
    """A batch of B transitions.

    Attributes:
        obs: observation dict, each (B, ...) (`state` (B, To, Do)).
        actions: (B, Te, Da) executed chunks.
        rewards: (B,) chunk rewards times scale_reward_factor.
        next_obs: observation dict after the chunk (the pre-reset observation where the episode ended).
        terminated: (B,) float, 1 where s' is terminal (no bootstrap).
        indices: (B,) long, the rows' flat buffer indices (for writing actions back, or gathering targets).
        mc_returns: (B,) the discounted reward-to-go of each row's episode from it (Cal-QL), or None.
    """

    obs: dict[str, Tensor]
    actions: Tensor
    rewards: Tensor
    next_obs: dict[str, Tensor]
    terminated: Tensor
    indices: Tensor
    mc_returns: Tensor | None = None


class ReplayBuffer:
    """Preallocated ring buffer of transitions, step-major: every tensor has leading shape (C, E).

    C = capacity // E steps of E envs; once full, the oldest step is overwritten. Step-major storage keeps each
    env's transitions in time order, which TD(lambda) over the buffer (AWR) needs; flat index i = step * E + env.

    Args:
        capacity: maximum number of transitions (`train.buffer_size`), at least E.
        n_envs: E.
        obs_spec: key -> (per-env shape, dtype), e.g. {"state": ((To, Do), torch.float32)}.
        action_shape: (Te, Da).
        device: storage device.
    """

    def __init__(
        self,
        capacity: int,
        n_envs: int,
        obs_spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        action_shape: tuple[int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < n_envs:
            raise ValueError(f"buffer capacity {capacity} is smaller than one step of {n_envs} envs")
        self.n_envs = int(n_envs)
        self.n_slots = int(capacity) // self.n_envs
        self.device = torch.device(device)
        ce = (self.n_slots, self.n_envs)
        kw: dict[str, Any] = {"device": self.device}
        self.obs = {k: torch.zeros(*ce, *shape, dtype=dtype, **kw) for k, (shape, dtype) in obs_spec.items()}
        self.next_obs = {k: torch.zeros_like(v) for k, v in self.obs.items()}
        self.actions = torch.zeros(*ce, *action_shape, **kw)
        self.rewards = torch.zeros(ce, **kw)
        self.terminated = torch.zeros(ce, **kw)
        # The row's successor in time (same env, next slot) is not the same episode: terminated, truncated, or
        # the envs were reset after it. TD(lambda) stops accumulating there.
        self.episode_end = torch.zeros(ce, dtype=torch.bool, **kw)
        self.pos = 0  # next slot to write
        self.n_filled = 0  # filled slots

    def __len__(self) -> int:
        """Number of stored transitions."""
        return self.n_filled * self.n_envs

    @property
    def capacity(self) -> int:
        return self.n_slots * self.n_envs

    def add(
        self,
        obs: Mapping[str, Tensor],
        actions: Tensor,
        rewards: Tensor,
        next_obs: Mapping[str, Tensor],
        terminated: Tensor,
        episode_end: Tensor,
    ) -> None:
        """Store one vector-env step (E transitions), overwriting the oldest when full.

        Args:
            obs, next_obs: dicts of (E, ...) tensors.
            actions: (E, Te, Da).
            rewards: (E,) scaled rewards.
            terminated: (E,) bool.
            episode_end: (E,) bool, terminated | truncated.
        """
        i = self.pos
        for key, value in obs.items():
            self.obs[key][i].copy_(value)
            self.next_obs[key][i].copy_(next_obs[key])
        self.actions[i].copy_(actions)
        self.rewards[i].copy_(rewards)
        self.terminated[i].copy_(terminated)
        self.episode_end[i].copy_(episode_end)
        self.pos = (i + 1) % self.n_slots
        self.n_filled = min(self.n_filled + 1, self.n_slots)

    def mark_interrupted(self) -> None:
        """The envs are being reset mid-episode: the newest step's successors belong to new episodes."""
        if self.n_filled:
            self.episode_end[(self.pos - 1) % self.n_slots] = True

    def flat(self, tensor: Tensor) -> Tensor:
        """(C, E, ...) storage -> (C * E, ...) view (flat index = slot * E + env)."""
        return tensor.view(self.n_slots * self.n_envs, *tensor.shape[2:])

    def sample_indices(self, batch_size: int) -> Tensor:
        """(batch_size,) flat indices drawn uniformly with replacement from the stored transitions."""
        if not self.n_filled:
            raise RuntimeError("sampling from an empty replay buffer")
        return torch.randint(0, len(self), (batch_size,), device=self.device)

    def obs_at(self, indices: Tensor) -> dict[str, Tensor]:
        """The observations s at flat `indices` (B,), each (B, ...)."""
        return {k: self.flat(v)[indices] for k, v in self.obs.items()}

    def gather(self, indices: Tensor) -> Transitions:
        """The transitions at flat `indices` (B,)."""
        return Transitions(
            obs=self.obs_at(indices),
            actions=self.flat(self.actions)[indices],
            rewards=self.flat(self.rewards)[indices],
            next_obs={k: self.flat(v)[indices] for k, v in self.next_obs.items()},
            terminated=self.flat(self.terminated)[indices],
            indices=indices,
        )

    def sample(self, batch_size: int) -> Transitions:
        """A batch drawn uniformly with replacement from the whole buffer."""
        return self.gather(self.sample_indices(batch_size))

    def set_actions(self, indices: Tensor, actions: Tensor) -> None:
        """Overwrite the stored actions at flat `indices` (B,) with `actions` (B, Te, Da) (DIPO)."""
        self.flat(self.actions)[indices] = actions.to(self.actions.dtype)

    def returns_to_go(self, gamma: float) -> Tensor:
        """(C * E,) flat: each stored transition's discounted sum of rewards to the end of its episode, without a
        bootstrap where the stored episode stops (an episode still running, or cut by a reset); 0 in empty slots."""
        out = torch.zeros_like(self.rewards)
        g = torch.zeros(self.n_envs, device=self.device)
        for slot in reversed(self.time_order().tolist()):
            g = self.rewards[slot] + gamma * (~self.episode_end[slot]).float() * g
            out[slot] = g
        return self.flat(out)

    def time_order(self) -> Tensor:
        """(n_filled,) slot indices from the oldest stored step to the newest."""
        slots = torch.arange(self.n_filled, device=self.device)
        if self.n_filled < self.n_slots:
            return slots
        return (slots + self.pos) % self.n_slots

    def state_dict(self) -> dict[str, Any]:
        """The filled part of the buffer (for checkpoints)."""
        n = self.n_filled
        return {
            "pos": self.pos,
            "n_filled": n,
            "obs": {k: v[:n].cpu() for k, v in self.obs.items()},
            "next_obs": {k: v[:n].cpu() for k, v in self.next_obs.items()},
            "actions": self.actions[:n].cpu(),
            "rewards": self.rewards[:n].cpu(),
            "terminated": self.terminated[:n].cpu(),
            "episode_end": self.episode_end[:n].cpu(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = int(state["n_filled"])
        if n > self.n_slots or state["actions"].shape[1:] != self.actions.shape[1:]:
            raise ValueError(
                f"saved replay buffer ({n} steps of {tuple(state['actions'].shape[1:])}) does not fit this one "
                f"({self.n_slots} steps of {tuple(self.actions.shape[1:])})"
            )
        for key in self.obs:
            self.obs[key][:n].copy_(state["obs"][key])
            self.next_obs[key][:n].copy_(state["next_obs"][key])
        for name in ("actions", "rewards", "terminated", "episode_end"):
            getattr(self, name)[:n].copy_(state[name])
        self.n_filled = n
        self.pos = int(state["pos"]) % self.n_slots


__all__ = ["ReplayBuffer", "Transitions"]
