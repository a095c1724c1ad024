"""Flow Q-learning (FQL) on the replay loop (docs/algorithms.md#fql): a pretrained flow policy keeps training by
flow matching, a one-step noise-conditioned actor mu(s, z) distils it and maximises Q, and mu acts.

Per gradient step, on a batch (s, a, r, s', terminated) drawn uniformly from the buffer, with z, z' ~ N(0, I):

    critic   a' = clip(mu(s', z'), +-1);  y = r + gamma (1 - term) (Q'_1 + Q'_2)(s', a') / 2   (mean of the twins)
             L_Q = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2                          (Q' = Polyak target)
    actor    L_flow    = flow-matching loss of the flow policy on the buffer actions a
             a_flow    = the flow's K-step Euler integration from x_0 = z (no gradient): the distillation target
             a_mu      = mu(s, z)
             L_distill = mean (a_mu - a_flow)^2
             q         = (Q_1 + Q_2)(s, clip(a_mu, +-1)) / 2,   lambda = 1 / mean |q| (detached; `normalize_q_loss`)
             L = L_flow + alpha L_distill - lambda mean q               (once n_critic_warmup_itr have passed)
    target   theta' <- (1 - tau) theta' + tau theta

Acting: a = clip(mu(s, z), +-1) with a fresh z (rollouts) or z = 0 (deterministic evaluation). The Q term never
back-propagates through the K-step flow. This is the online part of FQL: the offline data enters through the
pretrained flow (`pre_reflow_mlp`), not through an offline phase of the critic and a mixed buffer
(docs/algorithms.md#d27-fql-online).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.replay import ActorCriticAlgorithm, ReplayAgent, ReplayConfig, double_q_loss
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, polyak_update
from agent.schemas import FQLTrain
from model.base import Policy
from model.flow.flow import FlowModel


class FQL(ActorCriticAlgorithm):
    """Flow Q-learning update rule (see the module docstring).

    Args:
        policy: the FlowModel (whole network trained, ft_denoising_steps = 0): the behaviour-cloning flow.
        actor: the one-step actor mu(s, z) (model.flow.one_step.OneStepActor).
        critic: double-Q CriticObsAct over Te-step chunks.
        config: shared replay hyper-parameters.
        alpha: weight of the distillation loss.
        normalize_q_loss: divide the Q term by the detached mean |q|.
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None); the actor optimiser trains the
            flow and mu together.
    """

    train_schema = FQLTrain

    model_keys = frozenset({"critic", "actor_onestep"})
    selects_actions = True  # mu acts, not the flow

    def __init__(
        self,
        policy: Policy,
        actor: nn.Module,
        critic: nn.Module,
        config: ReplayConfig,
        alpha: float,
        normalize_q_loss: bool,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(
            policy, {"critic": critic}, config, optim, targets=("critic",), actor_modules={"actor_onestep": actor}
        )
        self.flow = cast(FlowModel, policy)
        self.alpha = float(alpha)
        self.normalize_q_loss = bool(normalize_q_loss)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        target = str(exp.model_node("_target_") or "")
        require(target.endswith("FlowModel"), f"model._target_={target}: FQL needs a flow policy (FlowModel)")
        k_ft = exp.model_node("ft_denoising_steps") or 0
        require(k_ft == 0, f"ft_denoising_steps={k_ft}: FQL trains the whole flow network; set ft_denoising_steps=0")
        horizon, act = exp.run.horizon_steps, exp.run.act_steps
        require(
            horizon == act,
            f"horizon_steps={horizon} but act_steps={act}: FQL stores and scores executed chunks; set them equal",
        )
        for key, what in (("critic", "a double-Q CriticObsAct"), ("actor_onestep", "a OneStepActor")):
            require(exp.model_node(key) is not None, f"FQL needs model.{key} ({what})")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> FQL:
        t = exp.train_as(FQLTrain)
        return cls(
            policy,
            instantiate(exp.model_node("actor_onestep"), "model.actor_onestep").to(device),
            instantiate(exp.model_node("critic"), "model.critic").to(device),
            ReplayConfig.from_config(exp),
            alpha=t.alpha,
            normalize_q_loss=t.normalize_q_loss,
            optim=t.optim_settings(),
        )

    def one_step(self, cond: dict[str, Tensor], z: Tensor) -> Tensor:
        """mu(s, z), unclipped, ``(B, Ta, Da)``."""
        return self.modules["actor_onestep"](cond, z)

    def _noise(self, cond: dict[str, Tensor]) -> Tensor:
        b = cond["state"].shape[0]
        return torch.randn(b, self.flow.horizon_steps, self.flow.action_dim, device=cond["state"].device)

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """clip(mu(s, z), +-1): z ~ N(0, I), or z = 0 when deterministic. Returns (B, Ta, Da)."""
        z = self._noise(cond)
        return self.one_step(cond, torch.zeros_like(z) if deterministic else z).clamp(-1.0, 1.0)

    @staticmethod
    def mean_q(critic: nn.Module, obs: dict[str, Tensor], actions: Tensor) -> Tensor:
        """(Q_1 + Q_2)(s, a) / 2 (Q_1 alone for a single head), ``(B,)``."""
        q1, q2 = critic(obs, actions)
        return q1 if q2 is None else (q1 + q2) / 2

    def critic_loss(self, batch: Transitions) -> Tensor:
        with torch.no_grad():
            next_actions = self.act(batch.next_obs, deterministic=False)[:, : self.cfg.act_steps]
            next_q = self.mean_q(self.modules["critic_target"], batch.next_obs, next_actions)
            y = batch.rewards + self.cfg.gamma * (1.0 - batch.terminated) * next_q
        return double_q_loss(self.modules["critic"], batch.obs, batch.actions, y)

    def actor_loss(self, batch: Transitions) -> tuple[Tensor, dict[str, Tensor]]:
        """L_flow + alpha L_distill - lambda mean q; returns the loss and its parts."""
        flow_loss = self.flow.loss(batch.actions, batch.obs)
        z = self._noise(batch.obs)
        with torch.no_grad():
            target = self.flow.integrate(batch.obs, z)
        a_mu = self.one_step(batch.obs, z)
        distill_loss = (a_mu - target).square().mean()
        q = self.mean_q(self.modules["critic"], batch.obs, a_mu.clamp(-1.0, 1.0)[:, : self.cfg.act_steps])
        q_loss = normalized_q_term(q, self.normalize_q_loss)
        loss = flow_loss + self.alpha * distill_loss + q_loss
        return loss, {"flow_loss": flow_loss.detach(), "distill_loss": distill_loss.detach(), "q_loss": q_loss.detach()}

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        critic_loss = self.critic_loss(batch)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach()}
        if self.train_actor:
            actor_loss, parts = self.actor_loss(batch)
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach(), **parts)
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        return info


def normalized_q_term(q: Tensor, normalize: bool) -> Tensor:
    """-lambda mean q with lambda = 1 / mean |q| (detached, so it only rescales the gradient), or -mean q."""
    term = -q.mean()
    return term / q.abs().mean().detach().clamp(min=1e-6) if normalize else term


class FQLAgent(ReplayAgent):
    """Fine-tune a flow policy with flow Q-learning. Config: cfg/*/finetune/*/ft_fql_reflow_mlp.yaml."""

    algorithm_class = FQL


__all__ = ["FQL", "FQLAgent", "normalized_q_term"]
