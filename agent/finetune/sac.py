"""Soft actor-critic (SAC) for a tanh-squashed Gaussian policy on the replay loop (docs/algorithms.md#sac).

Per gradient step, on a batch (s, a, r, s', terminated) drawn uniformly from the buffer, with alpha = exp(log alpha)
held fixed within the step:

    critic       a', log pi(a'|s') from the current policy (no grad)
                 y = r + gamma (1 - term) [min(Q'_1, Q'_2)(s', a') - alpha log pi(a'|s')]
                 L_Q = mean (Q_1(s, a) - y)^2 + mean (Q_2(s, a) - y)^2                     (Q' = Polyak target)
    actor        a~, log pi(a~|s) reparameterised;  L_pi = mean [alpha log pi(a~|s) - min(Q_1, Q_2)(s, a~)]
    temperature  L_alpha = -mean [log alpha (log pi(a~|s) + H)],  H = train.target_entropy (default -Ta Da)
    target       theta' <- (1 - tau) theta' + tau theta

The first `train.n_explore_steps` env steps take uniform random actions and make no update. Evaluations use the
deterministic action tanh(mean). Differences from DPPO's SAC: one actor and temperature step per critic step
(DPPO: two every second step, the same update-to-data ratio), batches drawn with replacement, and the temperature
loss on log alpha (DPPO multiplies alpha, which scales its learning rate by alpha; docs/algorithms.md#d28-sac).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.replay import ActorCriticAlgorithm, ReplayAgent, ReplayConfig, double_q_loss
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, make_optimizer, polyak_update
from agent.schemas import SACTrain
from model.base import Policy
from model.gaussian.model import GaussianModel


class Temperature(nn.Module):
    """The learned entropy temperature alpha = exp(log_alpha), a module so that checkpoints carry it."""

    def __init__(self, initial: float) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(initial)))

    def forward(self) -> Tensor:
        return self.log_alpha.exp()


def temperature_loss(log_alpha: Tensor, log_prob: Tensor, target_entropy: float) -> Tensor:
    """-mean[log alpha (log pi + H)] with log pi detached: alpha rises while the entropy -log pi is below H."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


class SAC(ActorCriticAlgorithm):
    """SAC update rule (see the module docstring).

    Args:
        policy: a GaussianModel with ``squash: true``.
        critic: double-Q CriticObsAct.
        config: shared replay hyper-parameters.
        init_temperature: alpha at the start.
        target_entropy: H, the entropy the temperature steers toward.
        explore_iterations: iterations of uniform random actions, without updates.
        optim: {actor, critic, temperature} -> (lr, weight_decay, lr_scheduler block or None).
    """

    train_schema = SACTrain

    model_keys = frozenset({"critic"})

    def __init__(
        self,
        policy: Policy,
        critic: nn.Module,
        config: ReplayConfig,
        init_temperature: float,
        target_entropy: float,
        explore_iterations: int,
        optim: dict[str, OptimSettings],
    ) -> None:
        super().__init__(policy, {"critic": critic}, config, optim, targets=("critic",))
        self.gaussian = cast(GaussianModel, policy)
        self.temperature = Temperature(init_temperature).to(next(critic.parameters()).device)
        self.modules["temperature"] = self.temperature
        self.optimizers["temperature"], self.schedulers["temperature"] = make_optimizer(
            self.temperature.parameters(), *optim["temperature"]
        )
        self.target_entropy = float(target_entropy)
        self.explore_iterations = int(explore_iterations)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        target = str(exp.model_node("_target_") or "")
        require(target.endswith("GaussianModel"), f"model._target_={target}: SAC needs a GaussianModel policy")
        require(exp.model_node("squash") is True, "SAC needs a tanh-squashed Gaussian: set model.squash=true")
        require(exp.model_node("critic") is not None, "SAC needs model.critic (a double-Q CriticObsAct)")
        horizon, act = exp.run.horizon_steps, exp.run.act_steps
        require(horizon == act, f"horizon_steps={horizon} but act_steps={act}: SAC scores executed chunks")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> SAC:
        return cls(policy, **cls.sac_arguments(exp, policy, device))

    @staticmethod
    def sac_arguments(exp: Experiment, policy: Policy, device: torch.device) -> dict[str, Any]:
        """The constructor's arguments after `policy` from the experiment (SAC's and its variants')."""
        t = exp.train_as(SACTrain)
        gaussian = cast(GaussianModel, policy)
        settings = t.optim_settings()
        target_entropy = t.target_entropy
        return {
            "critic": instantiate(exp.model_node("critic"), "model.critic").to(device),
            "config": ReplayConfig.from_config(exp),
            "init_temperature": t.init_temperature,
            "target_entropy": -float(gaussian.horizon_steps * gaussian.action_dim)
            if target_entropy is None
            else target_entropy,
            "explore_iterations": math.ceil(t.n_explore_steps / (t.n_steps * exp.env.n_envs)),
            "optim": {**settings, "temperature": (t.temperature_lr or settings["critic"][0], 0.0, None)},
        }

    @property
    def exploring(self) -> bool:
        return self.iteration < self.explore_iterations

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """Uniform random chunks while exploring (not in evaluations), else the policy's sample. (B, Ta, Da)."""
        if self.exploring and not deterministic:
            b = cond["state"].shape[0]
            shape = (b, self.gaussian.horizon_steps, self.gaussian.action_dim)
            return torch.rand(shape, device=cond["state"].device) * 2 - 1
        return self.policy.sample(cond, deterministic=deterministic).actions

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        if self.exploring:
            return {"n_updates": 0}
        return super().update(buffer)

    def critic_loss(self, batch: Transitions, alpha: Tensor) -> Tensor:
        with torch.no_grad():
            next_actions, next_logp = self.gaussian.sample_log_prob(batch.next_obs)
            q1, q2 = self.modules["critic_target"](batch.next_obs, next_actions[:, : self.cfg.act_steps])
            next_q = q1 if q2 is None else torch.minimum(q1, q2)
            y = batch.rewards + self.cfg.gamma * (1.0 - batch.terminated) * (next_q - alpha * next_logp)
        return double_q_loss(self.modules["critic"], batch.obs, batch.actions, y)

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        alpha = self.temperature().detach()
        critic_loss = self.critic_loss(batch, alpha)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach(), "alpha": alpha}
        if self.train_actor:
            actions, logp = self.gaussian.sample_log_prob(batch.obs)
            q1, q2 = self.modules["critic"](batch.obs, actions[:, : self.cfg.act_steps])
            q = q1 if q2 is None else torch.minimum(q1, q2)
            actor_loss = (alpha * logp - q).mean()
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
            alpha_loss = temperature_loss(self.temperature.log_alpha, logp, self.target_entropy)
            self.step_optimizer("temperature", alpha_loss)
            info.update(entropy=-logp.detach().mean(), alpha_loss=alpha_loss.detach())
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        return info


class SACAgent(ReplayAgent):
    """Train a Gaussian policy with SAC. Config: cfg/gym/scratch/halfcheetah-v2/sac_mlp.yaml."""

    algorithm_class = SAC


__all__ = ["SAC", "SACAgent", "Temperature", "temperature_loss"]
