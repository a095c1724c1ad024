"""Implicit Diffusion Q-Learning (IDQL) fine-tuning of a whole diffusion policy, on the replay loop.

See docs/algorithms.md#idql.

The diffusion policy is trained by plain behaviour cloning on the buffer; improvement comes from selecting among
its samples with the critics. Per gradient step, on a batch (s, a, r, s', terminated):

    V        adv = min(Q'_1, Q'_2)(s, a) - V(s)  (target Q, no grad);  L_V = mean w adv^2,
             w = expectile (0.8) where adv > 0, else 1 - expectile
    Q        y = r + gamma (1 - term) V(s') (no grad);  L_Q = sum_i mean (Q_i(s, a) - y)^2
    target   theta' <- (1 - tau) theta' + tau theta,  tau = train.critic_tau
    actor    L = diffusion eps-MSE on (a, s)                        (steps once n_critic_warmup_itr have passed)

Action selection (`act`, rollouts and evaluations): N = `train.eval_sample_num` candidates per state, scored by
min(Q'_1, Q'_2). Deterministic (evaluation with `train.eval_deterministic`) or without
`train.use_expectile_exploration`: the best candidate. Otherwise one candidate drawn with probability
proportional to `critic_hyperparam` (0.7) where Q - V > 0, else 1 - critic_hyperparam. The candidates are
sampled deterministically exactly when the selection is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from agent.config import instantiate, require
from agent.finetune.base import Experiment
from agent.finetune.baselines import check_baseline_config
from agent.finetune.replay import ActorCriticAlgorithm, ReplayAgent, ReplayConfig, double_q_loss
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.optim import OptimSettings, polyak_update
from agent.schemas import IDQLTrain
from model.base import Policy


class IDQL(ActorCriticAlgorithm):
    """IDQL update rule and candidate selection (see the module docstring).

    Args:
        policy: the DiffusionModel (whole network trained).
        critic_q: double-Q CriticObsAct over Te-step chunks.
        critic_v: CriticObs V(s).
        config: shared replay hyper-parameters.
        n_candidates: candidates per state (`train.eval_sample_num`).
        eval_deterministic: evaluations take the argmax-Q candidate of deterministic samples.
        use_expectile_exploration: training rollouts draw a candidate by the expectile weights (else argmax).
        expectile: tau of the V loss (`train.expectile`, 0.8).
        critic_hyperparam: selection weight of candidates with positive advantage (`train.critic_hyperparam`, 0.7).
        optim: {actor, critic} -> (lr, weight_decay, lr_scheduler block or None); the critic settings serve
            both Q and V.
    """

    train_schema = IDQLTrain

    selects_actions = True
    model_keys = frozenset({"critic_q", "critic_v"})

    def __init__(
        self,
        policy: Policy,
        critic_q: nn.Module,
        critic_v: nn.Module,
        config: ReplayConfig,
        n_candidates: int,
        eval_deterministic: bool,
        use_expectile_exploration: bool,
        expectile: float,
        critic_hyperparam: float,
        optim: dict[str, OptimSettings],
    ) -> None:
        critics = {"critic_q": critic_q, "critic_v": critic_v}
        super().__init__(policy, critics, config, optim, targets=("critic_q",))
        self.n_candidates = int(n_candidates)
        self.eval_deterministic = bool(eval_deterministic)
        self.use_expectile_exploration = bool(use_expectile_exploration)
        self.expectile = float(expectile)
        self.critic_hyperparam = float(critic_hyperparam)

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        check_baseline_config(exp)
        for key in ("critic_q", "critic_v"):
            require(exp.model_node(key) is not None, f"IDQL needs model.{key} (double-Q CriticObsAct and CriticObs)")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> IDQL:
        t = exp.train_as(IDQLTrain)
        return cls(
            policy,
            instantiate(exp.model_node("critic_q"), "model.critic_q").to(device),
            instantiate(exp.model_node("critic_v"), "model.critic_v").to(device),
            ReplayConfig.from_config(exp),
            n_candidates=t.eval_sample_num,
            eval_deterministic=t.eval_deterministic,
            use_expectile_exploration=t.use_expectile_exploration,
            expectile=t.expectile,
            critic_hyperparam=t.critic_hyperparam,
            optim=t.optim_settings(),
        )

    def min_target_q(self, obs: dict[str, Tensor], actions: Tensor) -> Tensor:
        """min(Q'_1, Q'_2)(s, a) of the target critic, (B,)."""
        q1, q2 = self.modules["critic_q_target"](obs, actions)
        return q1 if q2 is None else torch.minimum(q1, q2)

    @torch.no_grad()
    def act(self, cond: dict[str, Tensor], deterministic: bool) -> Tensor:
        """Pick one of N candidate chunks per state (see the module docstring). Returns (B, Ta, Da)."""
        n, b = self.n_candidates, next(iter(cond.values())).shape[0]
        greedy = deterministic and self.eval_deterministic
        # Candidates are sample-major: row i * B + j is candidate i of state j.
        rep = {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in cond.items()}
        samples = self.policy.sample(rep, deterministic=greedy).actions  # (N * B, Ta, Da)
        q = self.min_target_q(rep, samples[:, : self.cfg.act_steps]).view(n, b)
        if greedy or not self.use_expectile_exploration:
            choice = q.argmax(dim=0)
        else:
            adv = q - self.modules["critic_v"](rep).view(n, b)
            w = torch.where(adv > 0, self.critic_hyperparam, 1.0 - self.critic_hyperparam)
            choice = torch.multinomial((w / w.sum(dim=0)).T, 1).squeeze(1)
        return samples.view(n, b, *samples.shape[1:])[choice, torch.arange(b, device=choice.device)]

    def v_loss(self, batch: Transitions) -> Tensor:
        """Expectile regression of V(s) toward min(Q'_1, Q'_2)(s, a)."""
        with torch.no_grad():
            q = self.min_target_q(batch.obs, batch.actions)
        adv = q - self.modules["critic_v"](batch.obs)
        weight = torch.where(adv > 0, self.expectile, 1.0 - self.expectile)
        return (weight * adv.square()).mean()

    def q_loss(self, batch: Transitions) -> Tensor:
        """Double-Q regression toward r + gamma (1 - term) V(s')."""
        with torch.no_grad():
            y = batch.rewards + self.cfg.gamma * (1.0 - batch.terminated) * self.modules["critic_v"](batch.next_obs)
        return double_q_loss(self.modules["critic_q"], batch.obs, batch.actions, y)

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        v_loss = self.v_loss(batch)
        self.step_optimizer("critic_v", v_loss)
        q_loss = self.q_loss(batch)  # uses the V just updated (reference order: V, Q, target, actor)
        self.step_optimizer("critic_q", q_loss)
        polyak_update(self.modules["critic_q_target"], self.modules["critic_q"], self.cfg.tau)
        info = {"v_loss": v_loss.detach(), "q_loss": q_loss.detach()}
        if self.train_actor:
            actor_loss = self.policy.loss(batch.actions, batch.obs)
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
        return info


class IDQLAgent(ReplayAgent):
    """Fine-tune a diffusion policy with IDQL. Config: cfg/*/finetune/*/ft_idql_diffusion_mlp.yaml."""

    algorithm_class = IDQL


__all__ = ["IDQL", "IDQLAgent"]
