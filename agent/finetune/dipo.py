"""DIPO (diffusion policy with action gradient) fine-tuning of a whole diffusion policy (docs/algorithms.md#dipo).

A target actor (a Polyak copy of the policy) chooses the rollout actions (and the evaluation actions) and the
critic's next actions. Per gradient step:

    critic   a' ~ pi_target(.|s') (stochastic, no grad);  y = r + gamma (1 - term) min(Q'_1, Q'_2)(s', a')
             L_Q = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2                        (Q' = Polyak target)
    actor    (once n_critic_warmup_itr have passed) on a fresh batch (s, a):
             improve the actions themselves: `action_gradient_steps` Adam(lr=action_lr, eps=1e-5) steps on
             -sum min(Q_1, Q_2)(s, a), the action gradient's norm clipped to Da * Te * 0.1, a clamped to [-1, 1];
             write the improved actions back into the buffer;
             L = diffusion eps-MSE on (improved a, s)            (optionally clipping the actor's gradient norm)
    targets  critic and actor: theta' <- (1 - tau) theta' + tau theta,  tau = train.target_ema_rate
"""

from __future__ import annotations

from typing import cast

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
from agent.optim import OptimSettings, frozen_copy, polyak_update
from agent.schemas import DIPOTrain
from model.base import Policy
from model.diffusion.diffusion import DiffusionModel

ACTION_GRAD_CLIP_PER_ELEMENT = 0.1
"""The action gradient's norm is clipped to Te * Da * 0.1 (reference)."""


class DIPO(ActorCriticAlgorithm):
    """DIPO update rule (see the module docstring).

    Args:
        policy: the DiffusionModel (whole network trained).
        critic: double-Q CriticObsAct over Te-step chunks.
        config: shared replay hyper-parameters.
        action_lr: Adam step size of the action improvement (`train.action_lr`).
        action_gradient_steps: Adam steps per improvement (`train.action_gradient_steps`).
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = DIPOTrain

    selects_actions = True
    model_keys = frozenset({"critic"})

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        action_lr: float,
        action_gradient_steps: int,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim, targets=("critic",))
        self.action_lr = float(action_lr)
        self.action_gradient_steps = int(action_gradient_steps)
        self.modules["actor_target"] = frozen_copy(policy).eval()

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        check_baseline_config(exp)
        require(exp.model_node("critic") is not None, "DIPO needs model.critic (a double-Q CriticObsAct)")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> DIPO:
        t = exp.train_as(DIPOTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            action_lr=t.action_lr,
            action_gradient_steps=t.action_gradient_steps,
            optim=t.optim_settings(),
        )

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """Rollout and evaluation actions come from the target actor (reference)."""
        target = cast(DiffusionModel, self.modules["actor_target"])
        return target.sample(cond, deterministic=deterministic).actions

    def improve_actions(self, obs: dict[str, Tensor], actions: Tensor) -> Tensor:
        """Gradient ascent on min(Q_1, Q_2) over the actions (B, Te, Da); returns the improved, detached actions."""
        a = actions.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([a], lr=self.action_lr, eps=1e-5)
        max_norm = ACTION_GRAD_CLIP_PER_ELEMENT * a.shape[1] * a.shape[2]
        for _ in range(self.action_gradient_steps):
            q1, q2 = self.modules["critic"](obs, a)
            q = q1 if q2 is None else torch.minimum(q1, q2)
            # autograd.grad: only the actions get a gradient, the critic's parameters are left untouched.
            a.grad = torch.autograd.grad(-q.sum(), a)[0]
            torch.nn.utils.clip_grad_norm_([a], max_norm)
            opt.step()
            with torch.no_grad():
                a.clamp_(-1.0, 1.0)
        return a.detach()

    def critic_loss(self, batch: Transitions) -> Tensor:
        """Double-Q TD loss with next actions from the target actor and the target critic."""
        next_actions = self.act(batch.next_obs, deterministic=False)[:, : self.cfg.act_steps]
        y = double_q_target(
            self.modules["critic_target"], batch.next_obs, next_actions, batch.rewards, batch.terminated, self.cfg.gamma
        )
        return double_q_loss(self.modules["critic"], batch.obs, batch.actions, y)

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        critic_loss = self.critic_loss(batch)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach()}
        if self.train_actor:
            fresh = buffer.sample(self.cfg.batch_size)
            improved = self.improve_actions(fresh.obs, fresh.actions)
            buffer.set_actions(fresh.indices, improved)
            actor_loss = self.policy.loss(improved, fresh.obs)
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
            info["action_change"] = (improved - fresh.actions).flatten(1).norm(dim=1).mean()
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        polyak_update(self.modules["actor_target"], self.policy, self.cfg.tau)
        return info


class DIPOAgent(ReplayAgent):
    """Fine-tune a diffusion policy with DIPO. Config: cfg/*/finetune/*/ft_dipo_diffusion_mlp.yaml."""

    algorithm_class = DIPO


__all__ = ["DIPO", "DIPOAgent"]
