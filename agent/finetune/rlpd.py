"""RLPD: SAC with prior data (docs/algorithms.md#rlpd), on the replay loop.

SAC (agent/finetune/sac.py) with three changes:

* a critic ensemble with LayerNorm (`CriticEnsemble`, E heads); the target takes the min over a random pair of
  target heads, drawn once per critic step: y = r + gamma (1 - term) [min(Q'_i, Q'_j)(s', a') - alpha log pi(a'|s')]
  (the entropy term with `train.backup_entropy`); the critic loss is the mean over heads and rows;
* symmetric sampling: each batch is `offline_fraction` (half) transitions of the offline dataset
  (`offline_dataset_path`, agent/finetune/offline.py) and the rest from the online buffer;
* a high update-to-data ratio: `train.critic_updates_per_actor` (G) critic steps for each actor and temperature
  step; the actor maximises the mean over all heads: L_pi = mean [alpha log pi(a~|s) - mean_k Q_k(s, a~)].

It learns from scratch; the offline data is only replayed.
"""

from __future__ import annotations

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
from agent.schemas import RLPDTrain
from model.base import Policy


def pair_min_target(
    target_q: Tensor, pair: tuple[int, int], rewards: Tensor, terminated: Tensor, gamma: float, entropy: Tensor | None
) -> Tensor:
    """y = r + gamma (1 - term) [min(Q'_i, Q'_j) + entropy] for target heads `target_q` (E, B) and a pair (i, j);
    `entropy` is -alpha log pi(a'|s') (B,) or None (no entropy backup)."""
    q = torch.minimum(target_q[pair[0]], target_q[pair[1]])
    if entropy is not None:
        q = q + entropy
    return rewards + gamma * (1.0 - terminated) * q


class RLPD(SAC):
    """RLPD update rule (see the module docstring). Arguments as SAC's, plus:

    Args:
        critic_updates_per_actor: G, critic steps per actor and temperature step.
        backup_entropy: add -alpha log pi(a'|s') to the target.
        offline_fraction: the share of each batch drawn from the offline data.
    """

    train_schema = RLPDTrain

    def __init__(
        self,
        *args: object,
        critic_updates_per_actor: int,
        backup_entropy: bool,
        offline_fraction: float,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.critic_updates_per_actor = int(critic_updates_per_actor)
        self.backup_entropy = bool(backup_entropy)
        self.offline_fraction = float(offline_fraction)
        self.offline: OfflineTransitions | None = None  # set by the agent once the normalization is known
        self.n_critic_steps = 0

    @classmethod
    def validate_config(cls, exp: Experiment) -> None:
        super().validate_config(exp)
        require(exp.run.act_steps == 1, f"act_steps={exp.run.act_steps}: RLPD replays single-step transitions")
        require(
            exp.train_as(RLPDTrain).offline_fraction == 0 or exp.run.offline_dataset_path is not None,
            "RLPD samples offline data: set offline_dataset_path (or train.offline_fraction=0)",
        )

    @classmethod
    def from_config(cls, exp: Experiment, policy: Policy, device: torch.device) -> RLPD:
        t = exp.train_as(RLPDTrain)
        return cls(
            policy,
            **cls.sac_arguments(exp, policy, device),
            critic_updates_per_actor=t.critic_updates_per_actor,
            backup_entropy=t.backup_entropy,
            offline_fraction=t.offline_fraction,
        )

    def sample_batch(self, buffer: ReplayBuffer) -> Transitions:
        """`offline_fraction` of the batch from the offline data, the rest from the online buffer."""
        n_offline = round(self.cfg.batch_size * self.offline_fraction) if self.offline is not None else 0
        online = buffer.sample(self.cfg.batch_size - n_offline)
        if n_offline == 0:
            return online
        assert self.offline is not None
        return concat(self.offline.sample(n_offline), online)

    def critic_loss(self, batch: Transitions, alpha: Tensor) -> Tensor:
        critic, target = self.modules["critic"], self.modules["critic_target"]
        n_heads = len(cast(torch.nn.ModuleList, critic.heads))
        pair = cast(tuple[int, int], tuple(torch.randperm(n_heads)[:2].tolist()))
        with torch.no_grad():
            next_actions, next_logp = self.gaussian.sample_log_prob(batch.next_obs)
            target_q = target(batch.next_obs, next_actions[:, : self.cfg.act_steps])
            entropy = -alpha * next_logp if self.backup_entropy else None
            y = pair_min_target(target_q, pair, batch.rewards, batch.terminated, self.cfg.gamma, entropy)
        q = critic(batch.obs, batch.actions)  # (E, B)
        return (q - y).square().mean()

    def gradient_step(self, batch: Transitions, buffer: ReplayBuffer) -> dict[str, Tensor]:
        alpha = self.temperature().detach()
        critic_loss = self.critic_loss(batch, alpha)
        self.step_optimizer("critic", critic_loss)
        polyak_update(self.modules["critic_target"], self.modules["critic"], self.cfg.tau)
        self.n_critic_steps += 1
        info = {"critic_loss": critic_loss.detach(), "alpha": alpha}
        if self.train_actor and self.n_critic_steps % self.critic_updates_per_actor == 0:
            actions, logp = self.gaussian.sample_log_prob(batch.obs)
            q = self.modules["critic"](batch.obs, actions[:, : self.cfg.act_steps]).mean(dim=0)
            actor_loss = (alpha * logp - q).mean()
            info.update(self.step_actor(actor_loss, self.actor_params), actor_loss=actor_loss.detach())
            alpha_loss = temperature_loss(self.temperature.log_alpha, logp, self.target_entropy)
            self.step_optimizer("temperature", alpha_loss)
            info.update(entropy=-logp.detach().mean(), alpha_loss=alpha_loss.detach())
        return info


class RLPDAgent(ReplayAgent):
    """Train a Gaussian policy with RLPD. Config: cfg/gym/scratch/halfcheetah-v2/rlpd_mlp.yaml."""

    algorithm_class = RLPD

    def setup(self) -> None:
        super().setup()
        algorithm = cast(RLPD, self.algorithm)
        path = self.run_cfg.offline_dataset_path
        if path is not None and algorithm.offline_fraction > 0:
            if self.normalization is None:
                raise ValueError("RLPD's offline data needs the dataset's normalization (normalization_path)")
            t = cast(RLPDTrain, self.train_cfg)
            algorithm.offline = OfflineTransitions(path, self.normalization, self.device, t.scale_reward_factor)


__all__ = ["RLPD", "RLPDAgent", "pair_min_target"]
