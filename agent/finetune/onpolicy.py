"""The on-policy loop: rollout -> values -> reward scaling -> GAE -> `algorithm.update(buffer)`.

Per training iteration:

1. Reset all envs if `env.reset_at_iteration` (DPPO's default: true; gym/kitchen configs: false) or after an
   evaluation / resume; otherwise continue the episodes in progress.
2. Collect `train.n_steps` chunks from each of the `env.n_envs` envs with stochastic sampling, storing the
   observation, the denoising chain, the chunk reward and the termination/truncation flags. Where an episode is
   truncated, V(final_obs) is computed right away for bootstrapping.
3. Pixels with `train.augment`: every stored image is randomly shifted ONCE (by up to `train.augment_pad` = 4
   pixels, docs/algorithms.md#pixel-ppo); the values, PPO's old log-probs and all updates then see the same
   augmented images.
   Bootstrap values of truncated episodes (computed during the rollout) use the raw final observations.
   Values V(s) of every stored observation, in batches of `train.logprob_batch_size`.
4. Optional running reward scaling (docs/algorithms.md#reward-scaling) and the constant `train.reward_scale_const`.
5. GAE (`buffer.compute_gae`: terminated stops bootstrapping; truncated bootstraps with V(final_obs); lambda never
   crosses an episode boundary).
6. `algorithm.update(buffer)`, which may fill `buffer.log_probs` (PPO's old log-probabilities) first.

An on-policy algorithm (PPO, RWR) subclasses `OnPolicyAlgorithm` and implements `from_config` and
`update(buffer)`; with `critic = None` the values are 0, so GAE with lambda = 1 gives discounted returns (RWR).
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from agent.config import require
from agent.finetune.base import Algorithm, FinetuneAgent
from agent.finetune.buffer import RolloutBuffer
from agent.finetune.reward_scaling import RunningRewardScaler
from agent.rollout import actions_to_numpy, cat_groups, obs_to_tensor, step_env_groups
from agent.schemas import OnPolicyTrain

log = logging.getLogger(__name__)


class OnPolicyAlgorithm(Algorithm):
    """Base of on-policy update rules: a policy and an optional state-value critic.

    Attributes:
        critic: V(s) module `cond -> (B,)`, or None (values are then 0).
    """

    critic: nn.Module | None = None

    @torch.no_grad()
    def values(self, cond: dict[str, Tensor]) -> Tensor:
        """V(s) for a batch of observations, `(B,)` (zeros without a critic)."""
        if self.critic is None:
            return torch.zeros(next(iter(cond.values())).shape[0], device=next(iter(cond.values())).device)
        return self.critic(cond).float()


class OnPolicyAgent(FinetuneAgent):
    """On-policy fine-tuning (see the module docstring). Subclasses set `algorithm_class`.

    Config keys read here: train.{n_steps, gamma, gae_lambda, reward_scale_running, reward_scale_const,
    logprob_batch_size, augment, augment_pad}, env.reset_at_iteration.
    """

    algorithm: OnPolicyAlgorithm

    def setup(self) -> None:
        t = cast(OnPolicyTrain, self.train_cfg)
        self.n_steps = t.n_steps
        self.gamma = t.gamma
        self.gae_lambda = t.gae_lambda
        self.reward_scale_const = t.reward_scale_const
        # Values and PPO's old log-probs are computed in batches of this many env steps. The reference requires it
        # to divide n_envs because it splits along the step axis; the flattened buffer here has no such need.
        self.batch_rows = t.logprob_batch_size
        self.reset_at_iteration = self.exp.env.reset_at_iteration
        self.reward_scaler = RunningRewardScaler(self.n_envs) if t.reward_scale_running else None
        space = self.env.single_observation_space
        obs_spec = {
            key: (tuple(space[key].shape), torch.from_numpy(np.zeros(0, dtype=space[key].dtype)).dtype)
            for key in space.spaces
        }
        self.augment_pad = t.augment_pad if t.augment else 0
        require(
            self.augment_pad == 0 or "rgb" in obs_spec,
            f"train.augment shifts the stored images, but env {self.cfg.env.name} gives no 'rgb' observations "
            f"(keys {sorted(obs_spec)}); set train.augment=false",
        )
        k = int(self.policy.n_chain_steps)
        chain_shape = (k + 1, int(self.cfg.horizon_steps), int(self.cfg.action_dim))
        self.buffer = RolloutBuffer(self.n_steps, self.n_envs, obs_spec, chain_shape, self.device)
        self._obs: dict[str, np.ndarray] | None = None
        self._firsts = np.ones(self.n_envs, dtype=bool)

    def extra_state(self) -> dict[str, Any]:
        return {"reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler is not None else None}

    def load_extra_state(self, ckpt) -> None:
        if self.reward_scaler is not None:
            if ckpt.get("reward_scaler") is None:
                log.warning("the checkpoint has no reward-scaler state; the running statistics restart")
            else:
                self.reward_scaler.load_state_dict(ckpt["reward_scaler"])

    # ---------------------------------------------------------------- collection
    @torch.no_grad()
    def collect(self) -> dict[str, float]:
        """Fill the buffer with `n_steps` chunks per env; returns rollout timing.

        The envs are stepped by `step_env_groups`: with `env.pipeline` a worker process steps one group of envs
        while the policy samples the other group's chunks (`env_s` is then the time spent waiting for the envs).
        """
        buf, policy, device = self.buffer, self.policy, self.device
        if self._needs_reset or self.reset_at_iteration or self._obs is None:
            self._obs = self.reset_envs()
            self._firsts[:] = True

        def act(group_obs: dict[str, np.ndarray]) -> tuple[np.ndarray, tuple[dict[str, Tensor], Tensor]]:
            cond = obs_to_tensor(group_obs, device)
            sample = policy.sample(cond, deterministic=False, return_chain=True)
            assert sample.chain is not None  # return_chain=True
            return actions_to_numpy(sample.actions, self.act_steps), (cond, sample.chain)

        policy.eval()
        start = time.perf_counter()
        env_steps = 0
        timing = {"env_s": 0.0}
        steps = step_env_groups(self.env, self._obs, self.n_steps, act, timing)
        for t, (sampled, (obs, reward, terminated, truncated, info)) in enumerate(steps):
            self._obs = obs
            cond, chain = cat_groups(sampled)
            buf.add(
                t,
                cond,
                chain,
                torch.from_numpy(np.asarray(reward, dtype=np.float32)),
                torch.from_numpy(terminated),
                torch.from_numpy(truncated),
                torch.from_numpy(self._firsts),
            )
            if truncated.any():
                rows = np.flatnonzero(truncated)
                final = {k: v[rows] for k, v in info["final_obs"].items()}
                idx = torch.from_numpy(rows).to(device)
                buf.bootstrap_values[t, idx] = self.algorithm.values(obs_to_tensor(final, device))
            done = terminated | truncated
            self.episodes.step(reward, done, info)
            self._firsts = done.copy()
            env_steps += int(np.sum(info.get("chunk_steps", self.act_steps)))
        buf.last_values.copy_(self.algorithm.values(obs_to_tensor(self._obs, device)))
        self.env_steps += env_steps
        rollout_s = time.perf_counter() - start
        return {"rollout_s": rollout_s, "env_s": timing["env_s"], "rollout_env_steps": env_steps}

    @torch.no_grad()
    def compute_values(self) -> None:
        """V(s) of every stored observation, in batches of `logprob_batch_size` rows."""
        flat = self.buffer.flat_obs()
        out = self.buffer.values.view(-1)
        for lo in range(0, self.buffer.n_rows, self.batch_rows):
            hi = min(lo + self.batch_rows, self.buffer.n_rows)
            out[lo:hi] = self.algorithm.values({k: v[lo:hi] for k, v in flat.items()})

    def scaled_rewards(self) -> Tensor:
        """(S, E) rewards after the running scaler (if enabled)."""
        buf = self.buffer
        if self.reward_scaler is None:
            return buf.rewards
        scaled = self.reward_scaler(buf.rewards.T, buf.firsts.T)  # the scaler works env-major
        return torch.from_numpy(scaled.T.copy()).to(self.device)

    # ---------------------------------------------------------------- one iteration
    def train_iteration(self) -> dict[str, float]:
        timing = self.collect()
        stats = self.episodes.summary()
        if stats["n_episodes"] == 0:
            stats = {"n_episodes": 0}
        if self.augment_pad > 0:
            self.buffer.augment_images(self.augment_pad)
        self.compute_values()
        self.buffer.compute_advantages(self.gamma, self.gae_lambda, self.scaled_rewards(), self.reward_scale_const)
        start = time.perf_counter()
        self.policy.train()
        metrics = self.algorithm.update(self.buffer)
        update_s = time.perf_counter() - start
        total = timing["rollout_s"] + update_s
        return {
            **stats,
            **metrics,
            "reward_mean": float(self.buffer.rewards.mean()),
            "env_steps_per_s": timing["rollout_env_steps"] / max(total, 1e-9),
            "rollout_env_steps_per_s": timing["rollout_env_steps"] / max(timing["rollout_s"], 1e-9),
            "rollout_s": timing["rollout_s"],
            "env_s": timing["env_s"],
            "update_s": update_s,
        }
