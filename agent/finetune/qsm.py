"""Q-Score Matching (QSM) fine-tuning of a whole diffusion policy (docs/algorithms.md#qsm), on the replay loop.

Per gradient step, on a batch (s, a, r, s', terminated) drawn uniformly from the buffer:

    critic   a' ~ pi(.|s') (current actor, stochastic, no grad);  y = r + gamma (1 - term) min(Q'_1, Q'_2)(s', a')
             L_Q = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2                        (Q' = Polyak target)
    actor    t ~ U{0..K-1},  x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps              (the buffer action, noised)
             g = (dQ_1/dx + dQ_2/dx)(s, x_t) / 2, detached                 (the critic's action gradient at x_t)
             L = mean (-eps_theta(x_t, t, s) - q_grad_coeff * g)^2   (steps once n_critic_warmup_itr have passed)
    target   theta' <- (1 - tau) theta' + tau theta,  tau = train.critic_tau

Matching the score -eps_theta to the action gradient of Q moves the denoising direction toward higher Q. DPPO's
buffer wrote final_obs into the live observation; the replay loop here never does
(docs/algorithms.md#d12-live-observations).
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
from agent.schemas import QSMTrain
from model.base import Policy


class QSM(ActorCriticAlgorithm):
    """Q-score-matching update rule (see the module docstring).

    Args:
        policy: the DiffusionModel (epsilon prediction; whole network trained).
        critic: double-Q CriticObsAct over Te-step chunks.
        config: shared replay hyper-parameters.
        q_grad_coeff: scale of the Q action-gradient the score is matched to (`train.q_grad_coeff`).
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = QSMTrain

    model_keys = frozenset({"critic"})

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        q_grad_coeff: float,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim, targets=("critic",))
        self.q_grad_coeff = float(q_grad_coeff)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        check_baseline_config(exp)
        require(exp.model_node("critic") is not None, "QSM needs model.critic (a double-Q CriticObsAct)")
        require(
            exp.model_node("predict_epsilon") in (None, True),
            "QSM matches the predicted noise to the Q gradient: it needs model.predict_epsilon=true",
        )

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> QSM:
        t = exp.train_as(QSMTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            q_grad_coeff=t.q_grad_coeff,
            optim=t.optim_settings(),
        )

    def q_gradient(self, obs: dict[str, Tensor], x: Tensor) -> Tensor:
        """(dQ_1/dx + dQ_2/dx) / 2 at actions x (B, Te, Da), per sample; no parameter gradients are kept."""
        x = x.detach().requires_grad_(True)
        q1, q2 = self.modules["critic"](obs, x)
        q = q1 if q2 is None else 0.5 * (q1 + q2)
        return torch.autograd.grad(q.sum(), x)[0]

    def critic_loss(self, batch: Transitions) -> Tensor:
        """Double-Q TD loss with next actions from the current actor and the target critic."""
        with torch.no_grad():
            next_actions = self.policy.sample(batch.next_obs, deterministic=False).actions[:, : self.cfg.act_steps]
        y = double_q_target(
            self.modules["critic_target"], batch.next_obs, next_actions, batch.rewards, batch.terminated, self.cfg.gamma
        )
        return double_q_loss(self.modules["critic"], batch.obs, batch.actions, y)

    def actor_loss(self, batch: Transitions) -> Tensor:
        """mean (-eps_theta(x_t, t, s) - q_grad_coeff * dQ/dx(s, x_t))^2 at noised buffer actions."""
        a = batch.actions
        t = torch.randint(0, self.policy.denoising_steps, (a.shape[0],), device=a.device)
        x_t = self.policy.noised(a, t, torch.randn_like(a))
        target = self.q_grad_coeff * self.q_gradient(batch.obs, x_t)
        eps = self.policy.trainable_network(x_t, t, batch.obs)
        return (-eps - target).square().mean()

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        critic_loss = self.critic_loss(batch)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach()}
        if self.train_actor:
            actor_loss = self.actor_loss(batch)
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        return info


class QSMAgent(ReplayAgent):
    """Fine-tune a diffusion policy with Q-score matching. Config: cfg/*/finetune/*/ft_qsm_diffusion_mlp.yaml."""

    algorithm_class = QSM


__all__ = ["QSM", "QSMAgent"]
