"""Diffusion-QL (DQL) fine-tuning of a whole diffusion policy (docs/algorithms.md#dql), on the replay loop.

Per gradient step, on a batch (s, a, r, s', terminated) drawn uniformly from the buffer:

    critic   a' ~ pi(.|s') (current actor, stochastic, no grad);  y = r + gamma (1 - term) min(Q'_1, Q'_2)(s', a')
             L_Q = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2                        (Q' = Polyak target)
    actor    a_new ~ pi(.|s), differentiable through all K denoising steps (rollout noise rule)
             bc     = diffusion eps-MSE on the buffer actions a
             q_loss = -mean Q_1(s, a_new) / mean |Q_2(s, a_new)| (detached), or the same with Q_1 and Q_2
                      swapped, each with probability 1/2
             L = bc + eta * q_loss                                   (steps once n_critic_warmup_itr have passed)
    target   theta' <- (1 - tau) theta' + tau theta,  tau = train.target_ema_rate

There is no target actor. Deliberately different (docs/algorithms.md#d13-dql-behaviour-cloning): DPPO computes the
"BC" term on the policy's own differentiable samples a_new, which regularises the policy toward itself rather than
toward the data the critic learns from; Diffusion-QL's behaviour-cloning term is the diffusion loss on the data,
here the replay buffer's actions. `train.bc_on_policy_samples: true` restores DPPO's term (for reproducing its numbers).
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
    double_q_loss,
    double_q_target,
)
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, polyak_update
from agent.schemas import DQLTrain
from model.base import Policy


class DQL(ActorCriticAlgorithm):
    """Diffusion-QL update rule (see the module docstring).

    Args:
        policy: the DiffusionModel (whole network trained, ft_denoising_steps = 0).
        critic: double-Q CriticObsAct over Te-step chunks.
        config: shared replay hyper-parameters.
        eta: weight of the Q term (`train.eta`).
        bc_on_policy_samples: DPPO's BC term on a_new (docs/algorithms.md#d13-dql-behaviour-cloning) instead of
            on buffer actions.
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = DQLTrain

    model_keys = frozenset({"critic"})

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        eta: float,
        bc_on_policy_samples: bool,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim, targets=("critic",))
        self.eta = float(eta)
        self.bc_on_policy_samples = bool(bc_on_policy_samples)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        check_baseline_config(exp)
        require(exp.model_node("critic") is not None, "DQL needs model.critic (a double-Q CriticObsAct)")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> DQL:
        t = exp.train_as(DQLTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            eta=t.eta,
            bc_on_policy_samples=t.bc_on_policy_samples,
            optim=t.optim_settings(),
        )

    def critic_loss(self, batch: Transitions) -> Tensor:
        """Double-Q TD loss with next actions from the current actor and the target critic."""
        with torch.no_grad():
            next_actions = self.policy.sample(batch.next_obs, deterministic=False).actions[:, : self.cfg.act_steps]
        y = double_q_target(
            self.modules["critic_target"], batch.next_obs, next_actions, batch.rewards, batch.terminated, self.cfg.gamma
        )
        return double_q_loss(self.modules["critic"], batch.obs, batch.actions, y)

    def actor_loss(self, batch: Transitions) -> tuple[Tensor, dict[str, Tensor]]:
        """bc + eta * q_loss on freshly sampled, differentiable actions; returns the loss and its parts."""
        new_actions = self.policy.sample(batch.obs, deterministic=False).actions  # differentiable, (B, Ta, Da)
        bc_loss = self.policy.loss(new_actions if self.bc_on_policy_samples else batch.actions, batch.obs)
        q1, q2 = self.modules["critic"](batch.obs, new_actions[:, : self.cfg.act_steps])
        # Dividing by the other head's detached magnitude makes eta independent of the reward scale (Diffusion-QL).
        if torch.rand(()) < 0.5:
            q_loss = -q1.mean() / q2.abs().mean().detach()
        else:
            q_loss = -q2.mean() / q1.abs().mean().detach()
        return bc_loss + self.eta * q_loss, {"bc_loss": bc_loss.detach(), "q_loss": q_loss.detach()}

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        critic_loss = self.critic_loss(batch)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach()}
        if self.train_actor:
            actor_loss, parts = self.actor_loss(batch)
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach(), **parts)
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        return info


class DQLAgent(ReplayAgent):
    """Fine-tune a diffusion policy with Diffusion-QL. Config: cfg/*/finetune/*/ft_dql_diffusion_mlp.yaml."""

    algorithm_class = DQL


__all__ = ["DQL", "DQLAgent"]
