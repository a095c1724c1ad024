"""Advantage-weighted regression (DAWR) fine-tuning of a whole diffusion policy, on the replay loop.

See docs/algorithms.md#awr.

Each iteration, on the whole replay buffer (kept in time order per env):

    targets  V(s) and V(s') for every stored transition, then a backward TD(lambda) pass per env:
             delta_i = r_i + gamma (1 - term_i) V(s'_i) - V(s_i)
             G_i     = alpha delta_i + gamma lambda (1 - end_i) G_{i+1},   target_i = G_i + V(s_i)
    critic   n_updates // critic_update_ratio steps of mean (V(s) - target)^2 on uniform batches
    advantage recompute the targets with the updated critic: A = target - V(s)
    actor    n_updates steps on uniform batches (once n_critic_warmup_itr have passed):
             A normalised per batch, w = min(exp(beta A), max_adv_weight),
             L = mean_b w_b * mean_{Te, Da} (eps_theta(x_t, t, s) - eps)^2 on the stored Te-step chunks

with n_updates = int(S * E / batch_size * replay_ratio), alpha = `train.td_alpha` (0.95) and
lambda = `train.td_lambda` (0.95), both hard-coded in the reference.

Deliberate fixes of DPPO's AWR shortcuts (docs/algorithms.md#d11-awr-targets):

* gamma is `train.gamma` (the reference always used 0.99, so robomimic's 0.999 was ignored);
* the critic's batches cover the whole buffer (the reference drew indices below the number of *steps* from the
  env-flattened array, so only the oldest 1/E of it was ever used);
* the successor value is V of the stored next observation (the pre-reset one for finished episodes), and the
  lambda-accumulation stops at every episode end (terminated, truncated, or envs reset), where the reference took
  the next buffer entry of the same env as the successor and crossed truncations and resets.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.baselines import check_baseline_config
from agent.finetune.replay import (
    ActorCriticAlgorithm,
    ReplayAgent,
    ReplayConfig,
)
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings
from agent.schemas import AWRTrain
from model.base import Policy

VALUE_BATCH_ROWS = 65536
"""Rows per critic call when evaluating V over the whole buffer."""


class AWR(ActorCriticAlgorithm):
    """Advantage-weighted regression update rule (see the module docstring).

    Args:
        policy: the DiffusionModel (whole network trained).
        critic: CriticObs V(s).
        config: shared replay hyper-parameters.
        beta: inverse temperature of the weights.
        max_adv_weight: weight cap.
        critic_update_ratio: n_updates / critic steps.
        td_lambda: lambda of the TD(lambda) targets.
        td_alpha: factor on the TD errors (reference: 0.95).
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = AWRTrain

    model_keys = frozenset({"critic"})

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        beta: float,
        max_adv_weight: float,
        critic_update_ratio: int,
        td_lambda: float,
        td_alpha: float,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim)
        self.beta, self.max_weight = float(beta), float(max_adv_weight)
        self.n_critic_updates = max(1, config.n_updates // int(critic_update_ratio))
        self.td_lambda, self.td_alpha = float(td_lambda), float(td_alpha)
        self._advantages = torch.zeros(0)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        check_baseline_config(exp)
        require(exp.model_node("critic") is not None, "AWR needs model.critic (a CriticObs)")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> AWR:
        t = exp.train_as(AWRTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            beta=t.beta,
            max_adv_weight=t.max_adv_weight,
            critic_update_ratio=t.critic_update_ratio,
            td_lambda=t.td_lambda,
            td_alpha=t.td_alpha,
            optim=t.optim_settings(),
        )

    @torch.no_grad()
    def values(self, obs: dict[str, Tensor]) -> Tensor:
        """V of (T, E, ...) observations, in batches; returns (T, E)."""
        t, e = next(iter(obs.values())).shape[:2]
        flat = {k: v.reshape(t * e, *v.shape[2:]) for k, v in obs.items()}
        out = torch.cat(
            [
                self.modules["critic"]({k: v[lo : lo + VALUE_BATCH_ROWS] for k, v in flat.items()})
                for lo in range(0, t * e, VALUE_BATCH_ROWS)
            ]
        )
        return out.view(t, e)

    @torch.no_grad()
    def td_targets(self, buffer: ReplayBuffer) -> tuple[Tensor, Tensor]:
        """TD(lambda) targets and V(s) of every stored transition, each (len(buffer),) in flat buffer order."""
        order = buffer.time_order()  # oldest step first
        v = self.values({k: x[order] for k, x in buffer.obs.items()})
        v_next = self.values({k: x[order] for k, x in buffer.next_obs.items()})
        not_term = 1.0 - buffer.terminated[order]
        delta = buffer.rewards[order] + self.cfg.gamma * not_term * v_next - v
        decay = self.cfg.gamma * self.td_lambda * (~buffer.episode_end[order]).float()
        g = torch.empty_like(v)
        running = torch.zeros_like(v[0])
        for i in range(v.shape[0] - 1, -1, -1):
            running = self.td_alpha * delta[i] + decay[i] * running
            g[i] = running
        targets, values = torch.empty_like(g), torch.empty_like(v)
        targets[order], values[order] = g + v, v  # back to slot order: flat index = slot * E + env
        return targets.view(-1), values.view(-1)

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        """Critic regression to TD(lambda) targets, then advantage-weighted actor steps; returns mean diagnostics."""
        critic, bs = self.modules["critic"], self.cfg.batch_size
        targets, _ = self.td_targets(buffer)
        critic_loss = torch.zeros((), device=targets.device)
        for _ in range(self.n_critic_updates):
            idx = buffer.sample_indices(bs)
            loss = (critic(buffer.obs_at(idx)) - targets[idx]).square().mean()
            self.step_optimizer("critic", loss)
            critic_loss += loss.detach()
        out = {"critic_loss": float(critic_loss) / self.n_critic_updates, "n_critic_updates": self.n_critic_updates}

        targets, values = self.td_targets(buffer)
        self._advantages = targets - values
        out["advantage_mean"] = float(self._advantages.mean())
        if self.train_actor:
            out.update(super().update(buffer))  # n_updates advantage-weighted actor steps (`gradient_step`)
        return out

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        """One advantage-weighted actor step on a uniform batch (advantages from this iteration's critic)."""
        adv = self._advantages[batch.indices]
        adv = (adv - adv.mean()) / (adv.std() + 1e-6)
        weights = torch.exp(self.beta * adv).clamp(max=self.max_weight)
        loss = (weights * self.policy.loss_per_sample(batch.actions, batch.obs)).mean()
        info = self.step_actor(loss, self.actor_params)
        info.update(actor_loss=loss.detach(), weight_mean=weights.mean())
        return info


class AWRAgent(ReplayAgent):
    """Fine-tune a diffusion policy with advantage-weighted regression. Config: cfg/*/finetune/*/ft_awr_*.yaml."""

    algorithm_class = AWR


__all__ = ["AWR", "AWRAgent"]
