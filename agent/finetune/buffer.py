"""Preallocated rollout storage for on-policy fine-tuning, and generalised advantage estimation over it.

One rollout is S = `train.n_steps` policy queries ("steps": one action chunk each) in each of E = `env.n_envs`
environments. Everything is a tensor of leading shape (S, E) on the training device, written in place step by
step (no Python lists, no per-iteration allocation).

GAE here deliberately differs from DPPO (docs/algorithms.md#d3-gae-bootstrapping), which cuts bootstrapping only at
`terminated` and otherwise lets both the bootstrap and the lambda-accumulation run across an auto-reset into the
next episode:

* terminated: the next value is 0 (true terminal state);
* truncated (time limit): the next value is V(final_obs), the critic's value of the last observation of the
  finished episode, not of the next episode's first state;
* either way the lambda-accumulation stops at the episode boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from model.encoder.augment import random_shift


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates over a rollout of S steps in E envs.

    For t = S-1 ... 0 (one t = one action chunk):

        delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - V_t
        A_t     = delta_t + gamma * lambda * (1 - (terminated_t | truncated_t)) * A_{t+1}
        R_t     = A_t + V_t

    Args:
        rewards: (S, E) rewards, already scaled as they should enter delta.
        values: (S, E) V(s_t).
        next_values: (S, E) value of the state after step t: V(s_{t+1}) for a running episode, V(final_obs_t) for
            a truncated one (ignored where terminated).
        terminated: (S, E) bool, the episode reached a terminal state at step t.
        truncated: (S, E) bool, the episode hit its time limit at step t.
        gamma: discount per step (per action chunk).
        gae_lambda: GAE lambda.

    Returns:
        advantages (S, E) and returns (S, E) = advantages + values.
    """
    not_terminal = 1.0 - terminated.to(values.dtype)
    not_done = 1.0 - (terminated | truncated).to(values.dtype)
    deltas = rewards + gamma * not_terminal * next_values - values
    decay = gamma * gae_lambda * not_done
    advantages = torch.empty_like(values)
    running = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """Preallocated tensors for one on-policy rollout.

    Attributes (S = n_steps, E = n_envs, K' = n_chain_steps):
        obs: dict of (S, E, ...) tensors, the observation each chunk was chosen from (`state` (S, E, To, Do)
            float32; `rgb` (S, E, To_img, C, H, W) kept in the env's dtype, uint8 for pixels: 4x less memory
            than the reference's float copy, and the encoders take uint8 directly).
        chains: (S, E, K'+1, Ta, Da) denoising chains (Gaussian/GMM: K' = 1, a dummy start and the action).
        rewards: (S, E) raw chunk rewards (sum over the executed env steps).
        terminated, truncated: (S, E) bool.
        firsts: (S, E) bool, step t is the first step of an episode (the reward scaler's reset flags).
        values: (S, E) V(s_t) under the critic before the update.
        bootstrap_values: (S, E) V(final_obs_t) where truncated, else 0.
        last_values: (E,) V of the observation after the last step.
        log_probs: (S, E, K') per-transition old log-probabilities, filled by the algorithm that needs them (PPO
            stores its clamped, horizon-truncated, averaged per-transition scalar).
        advantages, returns: (S, E), filled by `compute_advantages`.

    Args:
        n_steps: S.
        n_envs: E.
        obs_spec: key -> (per-env shape, dtype), e.g. {"state": ((To, Do), torch.float32)}.
        chain_shape: (K'+1, Ta, Da).
        device: storage device.
    """

    def __init__(
        self,
        n_steps: int,
        n_envs: int,
        obs_spec: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        chain_shape: tuple[int, int, int],
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_steps, self.n_envs = int(n_steps), int(n_envs)
        self.device = torch.device(device)
        se = (self.n_steps, self.n_envs)
        kw: dict[str, Any] = {"device": self.device}
        self.obs = {k: torch.zeros(*se, *shape, dtype=dtype, **kw) for k, (shape, dtype) in obs_spec.items()}
        self.chains = torch.zeros(*se, *chain_shape, **kw)
        self.n_chain_steps = int(chain_shape[0]) - 1
        self.rewards = torch.zeros(se, **kw)
        self.terminated = torch.zeros(se, dtype=torch.bool, **kw)
        self.truncated = torch.zeros(se, dtype=torch.bool, **kw)
        self.firsts = torch.zeros(se, dtype=torch.bool, **kw)
        self.values = torch.zeros(se, **kw)
        self.bootstrap_values = torch.zeros(se, **kw)
        self.last_values = torch.zeros(self.n_envs, **kw)
        self.log_probs = torch.zeros(*se, self.n_chain_steps, **kw)
        self.advantages = torch.zeros(se, **kw)
        self.returns = torch.zeros(se, **kw)

    @property
    def n_rows(self) -> int:
        """S * E, the number of stored env steps."""
        return self.n_steps * self.n_envs

    def add(
        self,
        step: int,
        obs: Mapping[str, Tensor],
        chain: Tensor,
        reward: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        first: Tensor,
    ) -> None:
        """Write step `step` in place.

        Args:
            step: index in [0, S).
            obs: dict of (E, ...) tensors the chunk was chosen from.
            chain: (E, K'+1, Ta, Da).
            reward: (E,) raw chunk reward.
            terminated, truncated, first: (E,) bool.
        """
        for key, value in obs.items():
            self.obs[key][step].copy_(value)
        self.chains[step].copy_(chain)
        self.rewards[step].copy_(reward)
        self.terminated[step].copy_(terminated)
        self.truncated[step].copy_(truncated)
        self.firsts[step].copy_(first)
        self.bootstrap_values[step].zero_()

    @torch.no_grad()
    def augment_images(
        self, pad: int, key: str = "rgb", chunk: int = 2048, generator: torch.Generator | None = None
    ) -> None:
        """Randomly shift every stored image once, in place, after the rollout (docs/algorithms.md#pixel-ppo).

        The images `obs[key]` (S, E, To_img, C, H, W) are flattened to (S * E * To_img, C, H, W) and each gets an
        independent integer shift in [-pad, pad] per axis with replicate padding. An integer shift only moves
        pixels, so uint8 storage stays exact; the float copy `random_shift` needs is made `chunk` images at a time.

        Args:
            pad: maximum shift in pixels (0: nothing to do).
            key: observation key of the images.
            chunk: images converted to float at once (bounds the extra memory).
            generator: optional RNG for the offsets.
        """
        if pad == 0:
            return
        if key not in self.obs:
            raise KeyError(f"augment_images: no '{key}' observations in the buffer (keys {sorted(self.obs)})")
        images = self.obs[key]
        flat = images.view(-1, *images.shape[-3:])  # (S * E * To_img, C, H, W), a view: written in place
        for lo in range(0, flat.shape[0], chunk):
            part = flat[lo : lo + chunk]
            part.copy_(random_shift(part.float(), pad, generator=generator).round().to(part.dtype))

    def flat_obs(self) -> dict[str, Tensor]:
        """Observations as (S * E, ...) views, step-major."""
        return {k: v.view(self.n_rows, *v.shape[2:]) for k, v in self.obs.items()}

    def next_values(self) -> Tensor:
        """(S, E) value of the state after each step: V(s_{t+1}), V(final_obs) where truncated."""
        nxt = torch.cat((self.values[1:], self.last_values.unsqueeze(0)), dim=0)
        return torch.where(self.truncated, self.bootstrap_values, nxt)

    def compute_advantages(
        self, gamma: float, gae_lambda: float, rewards: Tensor | None = None, reward_scale: float = 1.0
    ) -> None:
        """Fill `advantages` and `returns` by `compute_gae`.

        Args:
            gamma: discount per chunk.
            gae_lambda: GAE lambda.
            rewards: (S, E) rewards to use instead of the raw `rewards` (e.g. the running-scaled ones).
            reward_scale: constant factor on the rewards (DPPO's `reward_scale_const`).
        """
        r = self.rewards if rewards is None else rewards
        self.advantages, self.returns = compute_gae(
            r * reward_scale,
            self.values,
            self.next_values(),
            self.terminated,
            self.truncated,
            gamma,
            gae_lambda,
        )
