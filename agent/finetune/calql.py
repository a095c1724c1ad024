"""Cal-QL: calibrated conservative Q-learning, offline then online (docs/algorithms.md#cal-ql), on the replay loop.

SAC's actor and temperature with a conservative critic. Per gradient step, on a batch (s, a, r, s', term, R) where R
is the row's Monte-Carlo return (its discounted reward-to-go to the end of its episode):

    TD       a'_1..m ~ pi(.|s') (m = train.n_target_actions), y = r + gamma (1 - term) max_j min(Q'_1, Q'_2)(s', a'_j)
             (no entropy term), L_TD = sum_k mean (Q_k(s, a) - y)^2
    penalty  for each head k, a logsumexp over N_r uniform actions U and two policy actions:
                 Q_k(s, U_n) + D ln 2                      (the uniform density on [-1, 1]^D is 2^-D)
                 max(Q_k(s, a^), R) - log pi(a^|s)         a^ ~ pi(.|s)
                 max(Q_k(s, a^'), R) - log pi(a^'|s')      a^' ~ pi(.|s'), evaluated at s (CQL's proposal form)
             C_k = lambda mean_b [logsumexp - Q_k(s, a)]  (lambda = train.cql_weight); the calibration max(., R) keeps
             the push-down from going below the value of the data's own behaviour
    critic   L = L_TD + C_1 + C_2;  actor and temperature: as SAC (once per gradient step, on the same batch)

Offline stage (`CalQLOfflineAgent`, `calql_mlp_offline`): no env steps; each iteration makes the configured number
of gradient steps on batches of the offline dataset, and evaluations roll the policy out as usual. Online stage
(`CalQLAgent`, `calql_mlp_online`): from the offline run's checkpoint (the actor through `base_policy_path`, the
critics and the temperature through the warm start of `FinetuneAgent`), half of each batch from the dataset and half
from the online buffer, whose returns are recomputed before each iteration's updates. Deliberate fixes of the
reference: docs/algorithms.md#d31-cal-ql.
"""

from __future__ import annotations

import math
import time
from typing import cast

import torch
from torch import Tensor

from agent.config import require
from agent.finetune.base import Experiment
from agent.finetune.offline import OfflineTransitions, concat
from agent.finetune.replay import ReplayAgent
from agent.finetune.replay_buffer import ReplayBuffer, Transitions
from agent.finetune.sac import SAC, temperature_loss
from agent.optim import polyak_update
from agent.schemas import CalQLTrain
from model.base import Policy


def conservative_penalty(
    q_data: Tensor,
    q_random: Tensor,
    q_policy: Tensor,
    logp_policy: Tensor,
    q_next_policy: Tensor,
    logp_next_policy: Tensor,
    mc_return: Tensor,
    action_size: int,
    weight: float,
) -> Tensor:
    """Cal-QL's penalty for one head: weight * mean_b [logsumexp(proposals) - Q(s, a)].

    Args:
        q_data: (B,) Q(s, a) of the batch actions.
        q_random: (N_r, B) Q(s, U_n) of uniform actions on [-1, 1]^D.
        q_policy, logp_policy: (B,) Q(s, a^) and log pi(a^|s) of a policy action at s.
        q_next_policy, logp_next_policy: (B,) Q(s, a^') and log pi(a^'|s') of a policy action drawn at s'.
        mc_return: (B,) the calibration floor R.
        action_size: D = Ta * Da.
        weight: lambda.
    """
    uniform = q_random + action_size * math.log(2.0)  # Q - log(2^-D)
    calibrated = torch.stack(
        (torch.maximum(q_policy, mc_return) - logp_policy, torch.maximum(q_next_policy, mc_return) - logp_next_policy)
    )
    ood = torch.logsumexp(torch.cat((uniform, calibrated)), dim=0)
    return weight * (ood - q_data).mean()


def max_backup_target(next_q: Tensor, rewards: Tensor, terminated: Tensor, gamma: float) -> Tensor:
    """y = r + gamma (1 - term) max_j q_j for min-twin values `next_q` (m, B) of m policy samples at s'."""
    return rewards + gamma * (1.0 - terminated) * next_q.max(dim=0).values


class CalQL(SAC):
    """Cal-QL update rule (see the module docstring). Arguments as SAC's, plus:

    Args:
        cql_weight: lambda of the conservative penalty.
        n_random_actions: N_r uniform actions per state.
        n_target_actions: m policy samples at s' for the max-backup target.
        offline_fraction: the share of each online batch from the offline dataset.
    """

    train_schema = CalQLTrain

    def __init__(
        self,
        *args: object,
        cql_weight: float,
        n_random_actions: int,
        n_target_actions: int,
        offline_fraction: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cql_weight = float(cql_weight)
        self.n_random_actions = int(n_random_actions)
        self.n_target_actions = int(n_target_actions)
        self.offline_fraction = float(offline_fraction)
        self.offline: OfflineTransitions | None = None  # set by the agent once the normalization is known
        self.offline_only = False  # the offline stage: every batch from the dataset
        self.online_returns: Tensor | None = None

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        super().validate_config(exp)
        require(exp.run.act_steps == 1, f"act_steps={exp.run.act_steps}: Cal-QL replays single-step transitions")
        require(exp.run.offline_dataset_path is not None, "Cal-QL learns from a dataset: set offline_dataset_path")

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> CalQL:
        t = exp.train_as(CalQLTrain)
        return cls(
            policy,
            **cls.sac_arguments(exp, policy, device),
            cql_weight=t.cql_weight,
            n_random_actions=t.n_random_actions,
            n_target_actions=t.n_target_actions,
            offline_fraction=t.offline_fraction,
        )

    def update(self, buffer: ReplayBuffer) -> dict[str, float]:
        if not self.offline_only and not self.exploring and len(buffer):
            self.online_returns = buffer.returns_to_go(self.cfg.gamma)
        return super().update(buffer)

    def sample_batch(self, buffer: ReplayBuffer) -> Transitions:
        """Offline stage: the dataset only; online: `offline_fraction` of it, the rest from the buffer (with R)."""
        assert self.offline is not None  # set by the agents
        if self.offline_only:
            return self.offline.sample(self.cfg.batch_size)
        n_offline = round(self.cfg.batch_size * self.offline_fraction)
        online = buffer.sample(self.cfg.batch_size - n_offline)
        assert self.online_returns is not None
        online = online._replace(mc_returns=self.online_returns[online.indices])
        return concat(self.offline.sample(n_offline), online) if n_offline else online

    def critic_loss(self, batch: Transitions, alpha: Tensor) -> Tensor:
        critic, target, te = self.modules["critic"], self.modules["critic_target"], self.cfg.act_steps
        b, m = batch.rewards.shape[0], self.n_target_actions
        with torch.no_grad():
            rep = {k: v.repeat(m, *([1] * (v.dim() - 1))) for k, v in batch.next_obs.items()}  # sample-major
            next_actions, _ = self.gaussian.sample_log_prob(rep)
            q1, q2 = target(rep, next_actions[:, :te])
            next_q = (q1 if q2 is None else torch.minimum(q1, q2)).view(m, b)
            y = max_backup_target(next_q, batch.rewards, batch.terminated, self.cfg.gamma)
            pi, logp = self.gaussian.sample_log_prob(batch.obs)
            pi_next, logp_next = self.gaussian.sample_log_prob(batch.next_obs)
            shape = (self.n_random_actions, b, *batch.actions.shape[1:])
            uniform = torch.rand(shape, device=batch.actions.device) * 2 - 1
        q1, q2 = critic(batch.obs, batch.actions)
        loss = (q1 - y).square().mean() + (0.0 if q2 is None else (q2 - y).square().mean())
        rep_obs = {k: v.repeat(self.n_random_actions, *([1] * (v.dim() - 1))) for k, v in batch.obs.items()}
        q_rand = critic(rep_obs, uniform.flatten(0, 1))
        q_pi, q_pi_next = critic(batch.obs, pi[:, :te]), critic(batch.obs, pi_next[:, :te])
        assert batch.mc_returns is not None
        d = batch.actions[0].numel()
        for k, q_data in enumerate((q1, q2) if q2 is not None else (q1,)):
            loss = loss + conservative_penalty(
                q_data,
                q_rand[k].view(self.n_random_actions, b),
                q_pi[k],
                logp,
                q_pi_next[k],
                logp_next,
                batch.mc_returns,
                d,
                self.cql_weight,
            )
        return loss

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        alpha = self.temperature().detach()
        critic_loss = self.critic_loss(batch, alpha)
        self.step_optimizer("critic", critic_loss)
        info = {"critic_loss": critic_loss.detach(), "alpha": alpha}
        if self.train_actor:
            actions, logp = self.gaussian.sample_log_prob(batch.obs)
            q1, q2 = self.modules["critic"](batch.obs, actions[:, : self.cfg.act_steps])
            actor_loss = (alpha * logp - (q1 if q2 is None else torch.minimum(q1, q2))).mean()
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
            alpha_loss = temperature_loss(self.temperature.log_alpha, logp, self.target_entropy)
            self.step_optimizer("temperature", alpha_loss)
            info.update(entropy=-logp.detach().mean(), alpha_loss=alpha_loss.detach())
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        return info


class CalQLAgent(ReplayAgent):
    """Online Cal-QL. Config: cfg/gym/finetune/halfcheetah-v2/calql_mlp_online.yaml."""

    algorithm_class = CalQL

    def setup(self) -> None:
        super().setup()
        if self.normalization is None:
            raise ValueError("Cal-QL's dataset needs its normalization (normalization_path)")
        t = cast(CalQLTrain, self.train_cfg)
        path = self.run_cfg.offline_dataset_path
        assert path is not None  # validate_config checked it
        algorithm = cast(CalQL, self.algorithm)
        algorithm.offline = OfflineTransitions(path, self.normalization, self.device, t.scale_reward_factor, t.gamma)


class CalQLOfflineAgent(CalQLAgent):
    """Offline Cal-QL: gradient steps on the dataset only, no env steps (evaluations still roll out).
    Config: cfg/gym/pretrain/halfcheetah-medium-v2/calql_mlp_offline.yaml."""

    def setup(self) -> None:
        super().setup()
        cast(CalQL, self.algorithm).offline_only = True

    def train_iteration(self) -> dict[str, float]:
        start = time.perf_counter()
        self.policy.train()
        metrics = self.algorithm.update(self.buffer)
        return {**metrics, "update_s": time.perf_counter() - start}


__all__ = ["CalQL", "CalQLAgent", "CalQLOfflineAgent", "conservative_penalty", "max_backup_target"]
