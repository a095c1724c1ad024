"""Reward-weighted regression (RWR) fine-tuning of a whole diffusion policy (docs/algorithms.md#rwr), on-policy loop.

No critic and no replay: each iteration learns from the episodes that both start and finish within its rollout.

    R_t      discounted return-to-go of step t within its episode, over the raw chunk rewards (gamma = train.gamma)
    R~       (R - mean R) / (std R + 1e-3) over all the iteration's samples
    w        min(exp(beta R~), max_reward_weight)
    L        mean_b w_b * mean_{Ta, Da} (eps_theta(x_t, t, s) - eps)^2,   t ~ U{0..K-1} per sample

over `update_epochs` shuffled passes of max(1, n // batch_size) minibatches on the full-horizon chunks the policy
sampled. The actor does not train during the first `n_critic_warmup_itr` iterations (robomimic configs: 2).

Difference from DPPO's episode rule (docs/algorithms.md#d20-rwr-one-chunk-episodes): one-chunk episodes are kept
(DPPO drops them, which would leave nothing to learn from on tasks whose episodes are a single chunk).
"""

from __future__ import annotations

import torch
from torch import Tensor

from agent.finetune.base import Experiment
from agent.finetune.baselines import check_baseline_config
from agent.finetune.buffer import RolloutBuffer, compute_gae
from agent.finetune.onpolicy import OnPolicyAgent, OnPolicyAlgorithm
from agent.optim import OptimSettings, make_optimizer
from agent.schemas import RWRTrain
from model.base import Policy
from model.diffusion.diffusion import DiffusionModel


def completed_episode_returns(
    rewards: Tensor, firsts: Tensor, terminated: Tensor, truncated: Tensor, gamma: float
) -> tuple[Tensor, Tensor]:
    """Discounted returns-to-go of the steps of episodes that start and end inside the rollout.

    Args:
        rewards: (S, E) raw chunk rewards.
        firsts: (S, E) bool, step t is the first of an episode.
        terminated, truncated: (S, E) bool.
        gamma: discount per chunk.

    Returns:
        returns (S, E), R_t = sum_{k>=0} gamma^k r_{t+k} up to the episode's end, and valid (S, E) bool: step t
        belongs to an episode that started at or after step 0 of this rollout and ended before its last step.
    """
    done = terminated | truncated
    zeros = torch.zeros_like(rewards)
    # With V = 0 and lambda = 1, GAE's advantages are the returns-to-go, cut at every episode end.
    returns, _ = compute_gae(rewards, zeros, zeros, terminated, truncated, gamma, 1.0)
    started = torch.cumsum(firsts.long(), dim=0) > 0
    ends_later = torch.flip(torch.cumsum(torch.flip(done.long(), (0,)), dim=0), (0,)) > 0
    return returns, started & ends_later


class RWR(OnPolicyAlgorithm):
    """Reward-weighted regression update rule (see the module docstring).

    Args:
        policy: the DiffusionModel (whole network trained).
        gamma: discount per chunk.
        beta: inverse temperature of the weights.
        max_reward_weight: weight cap.
        batch_size: samples per minibatch.
        update_epochs: shuffled passes per iteration.
        n_warmup_itr: iterations without actor updates.
        optim: (lr, weight_decay, lr_scheduler block or None) of `train.lr` etc.
    """

    train_schema = RWRTrain

    policy: DiffusionModel  # the whole diffusion policy is trained (check_baseline_config)

    def __init__(
        self,
        policy: Policy,
        gamma: float,
        beta: float,
        max_reward_weight: float,
        batch_size: int,
        update_epochs: int,
        n_warmup_itr: int,
        optim: OptimSettings,
    ) -> None:
        super().__init__(policy)
        self.critic = None
        self.gamma, self.beta, self.max_weight = float(gamma), float(beta), float(max_reward_weight)
        self.batch_size, self.update_epochs, self.n_warmup_itr = int(batch_size), int(update_epochs), int(n_warmup_itr)
        self.optimizers["actor"], self.schedulers["actor"] = make_optimizer(policy.trainable_parameters(), *optim)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        # RWR trains on the full-horizon chunks the policy sampled, so horizon_steps may exceed act_steps.
        check_baseline_config(exp, needs_te_chunks=False)

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> RWR:
        t = exp.train_as(RWRTrain)
        return cls(
            policy,
            gamma=t.gamma,
            beta=t.beta,
            max_reward_weight=t.max_reward_weight,
            batch_size=t.batch_size,
            update_epochs=t.update_epochs,
            n_warmup_itr=t.n_critic_warmup_itr,
            optim=t.optim_settings(),
        )

    def update(self, buffer: RolloutBuffer) -> dict[str, float]:
        """Weighted diffusion regression on the completed episodes' samples; returns mean diagnostics."""
        returns, valid = completed_episode_returns(
            buffer.rewards, buffer.firsts, buffer.terminated, buffer.truncated, self.gamma
        )
        rows = valid.view(-1).nonzero().squeeze(1)
        n = int(rows.numel())
        if n == 0 or self.iteration < self.n_warmup_itr:
            return {"n_samples": n}
        obs = {k: v[rows] for k, v in buffer.flat_obs().items()}
        actions = buffer.chains[:, :, -1].reshape(buffer.n_rows, *buffer.chains.shape[3:])[rows]  # (n, Ta, Da)
        r = returns.view(-1)[rows]
        r_norm = (r - r.mean()) / (r.std(unbiased=False) + 1e-3)
        weights = torch.exp(self.beta * r_norm).clamp(max=self.max_weight)

        opt = self.optimizers["actor"]
        bs = min(self.batch_size, n)
        loss_sum, n_batches = torch.zeros((), device=r.device), 0
        for _ in range(self.update_epochs):
            perm = torch.randperm(n, device=r.device)
            for b in range(max(1, n // bs)):
                idx = perm[b * bs : (b + 1) * bs]
                cond = {k: v[idx] for k, v in obs.items()}
                loss = (weights[idx] * self.policy.loss_per_sample(actions[idx], cond)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                n_batches += 1
        return {
            "loss": float(loss_sum) / n_batches,
            "n_samples": n,
            "return_mean": float(r.mean()),
            "weight_mean": float(weights.mean()),
            "weight_max": float(weights.max()),
        }


class RWRAgent(OnPolicyAgent):
    """Fine-tune a diffusion policy with reward-weighted regression. Config: cfg/*/finetune/*/ft_rwr_*.yaml."""

    algorithm_class = RWR


__all__ = ["RWR", "RWRAgent", "completed_episode_returns"]
